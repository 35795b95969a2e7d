"""The ``sandbox`` isolation level: a worker's command under bubblewrap (``bwrap``).

The model sees, read-only, only what it needs to run: the system's libraries and
certificates, the base interpreter its environment links to, the environment itself, the
runner and its bundle. /tmp and /dev/shm are private and empty, HOME is /tmp, and nothing
else of the host exists: not Baton's home (tokens, keys, other bundles), not the registry's
files, not /root or /home. Every namespace is new (no network unless allowed; its own
process tree, so its processes end with it), every capability is dropped, and the worker
dies with the engine.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from baton.errors import WorkerError

#: System folders bound read-only when present (symlinks such as /lib -> usr/lib are kept
#: as links). Everything else of the host stays out of sight.
SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin")
#: The few files of /etc a Python process and its libraries read.
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
             "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/passwd", "/etc/group",
             "/etc/nsswitch.conf", "/etc/mime.types")
#: Added when the model may use the network: name resolution.
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/host.conf", "/etc/gai.conf")


#: The engine's variables a sandboxed model still sees (with every LC_*): nothing else of
#: the engine's environment (tokens, passwords, cloud credentials) crosses into the sandbox.
PASSED_VARIABLES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE",
                              "SSL_CERT_DIR"})


def environment(engine: Mapping[str, str], sandboxed: bool) -> dict[str, str]:
    """The part of the engine's environment a worker starts with."""
    if not sandboxed:
        return dict(engine)
    return {k: v for k, v in engine.items() if k in PASSED_VARIABLES or k.startswith("LC_")}


def bwrap() -> str:
    """The bubblewrap binary, or a clear error saying how to get it."""
    found = shutil.which("bwrap")
    if found is None:
        raise WorkerError(
            "isolation level 'sandbox' needs bubblewrap, and no 'bwrap' is on PATH: install "
            "it (apt-get install bubblewrap, dnf install bubblewrap) — see docs/isolation.md",
            code="SANDBOX_UNAVAILABLE")
    return found


def interpreter_home(python: Path) -> Path | None:
    """The base installation a virtual environment's ``python`` links to (the folder above
    ``home`` in its pyvenv.cfg), which the sandbox must show for the environment to run."""
    cfg = python.parent.parent / "pyvenv.cfg"
    try:
        lines = cfg.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return Path(value.strip()).parent
    return None


def command(inner: list[str], *, python: Path, bundle_dir: Path, runner: Sequence[Path],
            network: bool, env_dir: Path | None = None,
            system: Sequence[str] = ()) -> list[str]:
    """``inner`` (the worker's own command) run inside the sandbox: ``python`` is the
    interpreter, ``env_dir`` the model's environment (by default the one ``python`` is in),
    ``system`` further system folders the runner's interpreter reads (R's /etc/R)."""
    args = [bwrap(), "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL"]
    if network:
        args.append("--share-net")
    for folder in SYSTEM_DIRS:
        path = Path(folder)
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), folder]
        elif path.is_dir():
            args += ["--ro-bind", folder, folder]
    for name in (*ETC_FILES, *system, *(NETWORK_FILES if network else ())):
        args += ["--ro-bind-try", name, name]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    # After the tmpfs mounts, so that a bundle or environment under /tmp shows through.
    env_dir = (env_dir or python.parent.parent).absolute()
    shown = [env_dir, bundle_dir.absolute(), *(f.absolute() for f in runner)]
    home = interpreter_home(python)
    if home is not None:
        shown.append(home)
    for path in _outermost(shown):
        args += ["--ro-bind", str(path), str(path)]
    args += ["--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
             "--chdir", str(bundle_dir.absolute()), "--"]
    return args + inner


def _outermost(paths: list[Path]) -> list[Path]:
    """The paths not inside another one of them (binding both would hide nothing, but a
    bind inside a read-only bind cannot be created)."""
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def returncode(code: int | None) -> int | None:
    """The model process's exit status as Python reports a child's: bwrap passes on its
    child's death by signal N as 128 + N, which becomes -N (an outside SIGKILL stays one)."""
    return 128 - code if code is not None and 128 < code < 160 else code


def processes(pid: int, runner: Path) -> tuple[list[int], int]:
    """Every process of the worker started as ``pid`` (bwrap and what it started, or just
    the runner), and the one running ``runner``: the model's process."""
    import psutil  # here: a worker's spec (this module) is made before psutil is needed

    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid], pid  # it is gone: its exit is reported as such
    model = pid
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            # Python runs the script as an argument; R's Rscript as --file=SCRIPT.
            if any(a in (str(runner), f"--file={runner}") for a in proc.cmdline()) \
                    and proc.name() != "bwrap":
                model = proc.pid
    return [p.pid for p in tree], model
