"""Every runner a worker can be started with, in one place.

A bundle's ``model.runner`` names one of :data:`RUNNERS`. A runner is a program that speaks
the worker protocol (docs/protocol.md) over its standard input and output, run with the
interpreter of the bundle's environment. Adding a language is one entry here, the runner's
own file beside this one, and the conformance suite (tests/runtime/test_conformance.py),
which every runner passes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The Python runner: standard library only (numpy and pandas when the environment has them).
PYTHON_SCRIPT = HERE / "runner.py"
BUILTIN_SKLEARN = "builtin:sklearn"
BUILTIN_ONNX = "builtin:onnx"
BUILTIN_RDS = "builtin:rds"


@dataclass(frozen=True)
class Runner:
    """How a worker of a bundle with ``model.runner = name`` is started and what its
    manifest may say."""

    name: str
    summary: str
    #: The program the interpreter runs; then the files it reads beside it (by path).
    script: Path
    beside: tuple[Path, ...] = ()
    #: Entrypoints built into the runner (each loads ``model.artifact``).
    builtins: tuple[str, ...] = ()
    #: Whether a bundle may name its own entrypoint (``module.path:Class``).
    custom: bool = True
    #: The entrypoint of a bundle that names none (None: a bundle must name one).
    default_entrypoint: str | None = None
    #: What a bundle's own entrypoint looks like: as the manifest's error says it, and
    #: the pattern it must match.
    custom_form: str = "module.path:Class"
    custom_pattern: str = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
    #: The interpreter's flags before the script.
    flags: tuple[str, ...] = ("-I", "-B")
    #: System folders a sandboxed worker must also see (beyond /usr and the libraries).
    system: tuple[str, ...] = ()
    #: A shell line the command runs under (``"$@"`` is the interpreter, its flags and the
    #: script), for a language that cannot move its own descriptors; "": none.
    shell: str = ""

    @property
    def files(self) -> tuple[Path, ...]:
        """What a sandboxed worker must see of the runner."""
        return (self.script, *self.beside)

    def command(self, interpreter: Path) -> list[str]:
        """The worker's command: the environment's interpreter running the script. For
        Python, ``-I`` keeps Baton and the user's site out of the model's ``sys.path`` and
        ``-B`` keeps bytecode out of the bundle; for R, ``--vanilla`` reads no profile or
        user environment file."""
        inner = [str(interpreter), *self.flags, str(self.script)]
        return ["/bin/sh", "-c", self.shell, self.name, *inner] if self.shell else inner


PYTHON = Runner(
    "python", "a Python model: scikit-learn's pickle, or the bundle's own module:Class",
    PYTHON_SCRIPT, builtins=(BUILTIN_SKLEARN,))
ONNX = Runner(
    "onnx", "an .onnx file run by onnxruntime, without the framework that trained it",
    PYTHON_SCRIPT, beside=(HERE / "onnx_model.py",), builtins=(BUILTIN_ONNX,), custom=False,
    default_entrypoint=BUILTIN_ONNX)

R = Runner(
    "r", "an R object (.rds) and R's predict(), or the bundle's own R function",
    HERE / "runner.R", builtins=(BUILTIN_RDS,), default_entrypoint=BUILTIN_RDS,
    custom_form="file.R:function",
    custom_pattern=r"^(?:[\w-][\w.-]*/)*[\w-][\w.-]*\.[Rr]:[A-Za-z.][\w.]*$",
    flags=("--vanilla",), system=("/etc/R", "/etc/alternatives"),
    # Base R cannot dup2(): R starts with the protocol's output on fd 3 and fd 1 on standard
    # error, so what writes to fd 1 (a C library's printf(), system()) reaches the log.
    shell='BATON_PROTOCOL_FD=3 exec "$@" 3>&1 1>&2')

#: Every runner, by the name a manifest gives.
RUNNERS: dict[str, Runner] = {r.name: r for r in (PYTHON, ONNX, R)}
