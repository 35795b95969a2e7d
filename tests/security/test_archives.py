"""Issue 9, archives: every archive is verified completely every time it is opened, whatever
is cached, and what it may unpack to is capped while it streams.

Reproduced first (each of these failed on the code before the fix):

- ``baton check ARCHIVE`` and ``baton serve ARCHIVE`` read only the archive's index digest
  and trusted the folder already extracted for that digest: a byte-flipped archive, or one
  with ``../``, symlink, hard-link or absolute members, got PASS on a machine that had seen
  the genuine one, and was served;
- an extracted copy that had been changed was an error instead of being rebuilt, and files
  the bundle index skips (``__pycache__/*.pyc``, hidden files) went unnoticed;
- nothing capped the unpacked size: a 1 MB archive expanded to 1 GiB.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from baton.bundle.archive import (
    ArchiveLimits,
    ArchiveTooLarge,
    build_archive,
    bundle_digest,
    extract_archive,
    verify_archive,
)
from baton.bundle.limits import MAX_HEADER_BYTES, MAX_INDEX_BYTES, RATIO_CHECKED_AFTER
from baton.bundle.loader import open_bundle
from baton.bundle.scaffold import scaffold
from baton.errors import BundleError
from baton.settings import Settings
from tests.bundle.tars import (
    append_members,
    file_member,
    flip_bytes,
    index_of,
    rewrite_archive,
    tar_bytes,
    write_tar,
    write_zero_bomb,
)
from tests.conftest import Server, run_baton

EVIL_PREDICT = b"class Model:\n    def predict(self, inputs):\n        return {'score': [2.0]}\n"


def _member(name: str, kind: bytes = tarfile.REGTYPE,
            link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return (info, b"import os\n") if kind == tarfile.REGTYPE else (info, None)


#: Ways to turn the genuine archive into a hostile one that keeps the genuine index (and so
#: the genuine digest), with the code each must be refused with. Flipped bytes in a deflate
#: stream decode to an error or to other content, as they fall.
HOSTILE: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "byte-flipped": (flip_bytes, "INVALID_BUNDLE|DIGEST_MISMATCH|UNSAFE_ARCHIVE"),
    "altered-file": (lambda src, dst: rewrite_archive(
        src, dst, {"model/predict.py": EVIL_PREDICT}), "DIGEST_MISMATCH"),
    "traversal": (lambda src, dst: append_members(
        src, dst, [_member("../escape.py")]), "UNSAFE_ARCHIVE"),
    "absolute": (lambda src, dst: append_members(
        src, dst, [_member("/tmp/baton-absolute.py")]), "UNSAFE_ARCHIVE"),
    "symlink": (lambda src, dst: append_members(
        src, dst, [_member("model/evil.py", tarfile.SYMTYPE, "/etc/passwd")]),
        "UNSAFE_ARCHIVE"),
    "hardlink": (lambda src, dst: append_members(
        src, dst, [_member("model/evil.py", tarfile.LNKTYPE, "baton.toml")]),
        "UNSAFE_ARCHIVE"),
}


def genuine_bundle(where: Path) -> Path:
    """``baton init``'s bundle with a nonce, so that its digest is this test's own."""
    bundle = scaffold(where, "vault")
    (bundle / "model" / "nonce.txt").write_text(uuid.uuid4().hex)
    return bundle


def hostile_archive(kind: str, genuine: Path, where: Path) -> Path:
    make, _ = HOSTILE[kind]
    return make(genuine, where / f"{kind}.baton")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- With a warm extraction cache, a hostile archive is still refused ---------------------

@pytest.fixture
def warm(tmp_path: Path) -> tuple[Path, Path, str]:
    """The genuine archive, opened once: its verified copy sits in the extraction cache."""
    built = build_archive(genuine_bundle(tmp_path / "genuine"), tmp_path / "dist")
    bundles = tmp_path / "home" / "bundles"
    assert open_bundle(built.path, bundles).digest == built.digest
    return built.path, bundles, built.digest


@pytest.mark.parametrize("kind", HOSTILE)
def test_open_bundle_refuses_a_hostile_archive_despite_a_warm_cache(
        warm: tuple[Path, Path, str], tmp_path: Path, kind: str) -> None:
    genuine, bundles, digest = warm
    hostile = hostile_archive(kind, genuine, tmp_path)
    with pytest.raises(BundleError) as info:
        open_bundle(hostile, bundles)
    assert info.value.code in HOSTILE[kind][1].split("|")
    assert leftovers(bundles) == [digest.split(":", 1)[1]]
    assert bundle_digest(bundles / digest.split(":", 1)[1]) == digest
    assert not Path("/tmp/baton-absolute.py").exists()
    assert not (bundles.parent / "escape.py").exists()


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory,
             baton_env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A Baton home where ``baton check`` of the genuine archive passed (cache and env warm)."""
    root = tmp_path_factory.mktemp("archives")
    env = dict(baton_env, BATON_HOME=str(root / "home"))
    built = build_archive(genuine_bundle(root / "genuine"), root / "dist")
    r = run_baton("check", built.path, "--report", root / "genuine.json",
                  "--iterations", "5", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return built.path, env


@pytest.mark.parametrize("kind", HOSTILE)
def test_check_refuses_a_hostile_archive_despite_a_warm_cache(
        cli_home: tuple[Path, dict[str, str]], tmp_path: Path, kind: str) -> None:
    genuine, env = cli_home
    hostile = hostile_archive(kind, genuine, tmp_path)
    report = tmp_path / "report.json"
    r = run_baton("check", hostile, "--report", report, "--iterations", "5", env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "PASS" not in r.stdout
    code = json.loads(report.read_text())["error"]["code"]
    assert code in HOSTILE[kind][1].split("|")
    assert f"error [{code}]" in r.stderr


@pytest.mark.parametrize("kind", HOSTILE)
def test_serve_refuses_a_hostile_archive_despite_a_warm_cache(
        cli_home: tuple[Path, dict[str, str]], tmp_path: Path, kind: str) -> None:
    genuine, env = cli_home
    hostile = hostile_archive(kind, genuine, tmp_path)
    server = Server([hostile], env, [])
    try:
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.proc.poll() == 2, server.output()
        assert any(f"error [{code}]" in server.output() for code in HOSTILE[kind][1].split("|"))
    finally:
        server.stop()


@pytest.mark.parametrize("kind", HOSTILE)
def test_extract_refuses_a_hostile_archive(cli_home: tuple[Path, dict[str, str]],
                                           tmp_path: Path, kind: str) -> None:
    genuine, env = cli_home
    hostile = hostile_archive(kind, genuine, tmp_path)
    r = run_baton("extract", hostile, tmp_path / "out" / "x", env=env)
    assert r.returncode == 2
    assert any(f"error [{code}]" in r.stderr for code in HOSTILE[kind][1].split("|"))
    assert leftovers(tmp_path / "out") == []


# -- A changed extraction cache is rebuilt, never used ------------------------------------

@contextmanager
def writable(copy: Path) -> Iterator[None]:
    """Lift the cache's read-only modes while tampering (as a tamperer would), then put back
    those the tampering left alone: the cache then differs only by what was done to it."""
    before = {p: p.stat().st_mode & 0o777 for p in [copy, *copy.rglob("*")]}
    lifted = {p: 0o755 if p.is_dir() else 0o644 for p in before}
    for p, mode in lifted.items():
        p.chmod(mode)
    yield
    for p, mode in before.items():
        if os.path.lexists(p) and not p.is_symlink() and p.stat().st_mode & 0o777 == lifted[p]:
            p.chmod(mode)


def _alter(copy: Path) -> str:
    (copy / "model" / "predict.py").write_bytes(EVIL_PREDICT)
    return "model/predict.py: content differs"


def _add_hidden(copy: Path) -> str:
    (copy / "model" / ".sneaky.py").write_text("import os\n")
    return "model/.sneaky.py: not in the bundle"


def _plant_pyc(copy: Path) -> str:
    (copy / "model" / "__pycache__").mkdir()
    (copy / "model" / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"\x00" * 16)
    return "model/__pycache__: a folder the bundle does not have"


def _symlink(copy: Path) -> str:
    target = copy / "model" / "predict.py"
    shutil.copy(target, copy.parents[1] / "outside.py")
    target.unlink()
    target.symlink_to(copy.parents[1] / "outside.py")
    return "model/predict.py: a link or special file"


def _extra_folder(copy: Path) -> str:
    (copy / "model" / "plugins").mkdir()
    return "model/plugins: a folder the bundle does not have"


def _hard_link(copy: Path) -> str:
    os.link(copy / "model" / "predict.py", copy.parents[1] / "handle.py")
    return "model/predict.py: has other hard links"


def _made_writable_executable(copy: Path) -> str:
    (copy / "baton.toml").chmod(0o777)
    return "baton.toml: mode 777, expected 444"


def _removed(copy: Path) -> str:
    (copy / "model" / "nonce.txt").unlink()
    return "model/nonce.txt: missing"


CACHE_TAMPERING = [_alter, _add_hidden, _plant_pyc, _symlink, _extra_folder, _hard_link,
                   _made_writable_executable, _removed]


@pytest.mark.parametrize("tamper", CACHE_TAMPERING)
def test_a_changed_cache_is_rebuilt_from_the_genuine_archive(
        warm: tuple[Path, Path, str], tamper: Callable[[Path], str],
        caplog: pytest.LogCaptureFixture) -> None:
    genuine, bundles, digest = warm
    copy = bundles / digest.split(":", 1)[1]
    with writable(copy):
        problem = tamper(copy)
    with caplog.at_level(logging.WARNING, logger="baton.bundle"):
        bundle = open_bundle(genuine, bundles)
    assert bundle.path == copy and bundle.digest == digest
    assert (copy / "model" / "predict.py").read_bytes() != EVIL_PREDICT
    assert not (copy / "model" / "predict.py").is_symlink()
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == \
        ["baton.toml", "model/__init__.py", "model/nonce.txt", "model/predict.py",
         "samples/expected.json", "samples/input.json"]
    assert (copy / "model" / "predict.py").stat().st_nlink == 1
    assert leftovers(bundles) == [copy.name]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"({problem})" in warning and digest in warning


def test_check_uses_the_genuine_content_when_the_cache_was_changed(
        cli_home: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    _, env = cli_home
    built = build_archive(genuine_bundle(tmp_path / "own"), tmp_path / "dist")
    report = tmp_path / "report.json"
    assert run_baton("check", built.path, "--report", report, "--iterations", "5",
                     env=env).returncode == 0
    copy = Path(env["BATON_HOME"]) / "bundles" / built.digest.split(":", 1)[1]
    with writable(copy):
        (copy / "model" / "predict.py").write_bytes(EVIL_PREDICT)  # scores 2.0: off contract
    r = run_baton("check", built.path, "--report", report, "--iterations", "5", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout
    assert "model/predict.py" in r.stderr  # the warning names what was wrong
    assert bundle_digest(copy) == built.digest


# -- A compression bomb is stopped while it streams ----------------------------------------

#: sha256 of 2**30 zero bytes (``hashlib.sha256(bytes(2**30)).hexdigest()``): the bomb below
#: is honest, its index matches its content.
ZEROS_1GIB = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14"


def test_a_real_bomb_is_stopped_early_at_default_limits(tmp_path: Path) -> None:
    """1 MB that unpacks to 1 GiB: the ratio check stops it once 64 MiB are unpacked, long
    before the byte limits (8 GiB, 4 GiB a file) would."""
    bomb = write_zero_bomb(tmp_path / "bomb.baton", "model/weights.bin", 2**30, ZEROS_1GIB)
    assert bomb.stat().st_size < 2 * 2**20
    bundles = tmp_path / "bundles"
    with pytest.raises(ArchiveTooLarge) as info:
        open_bundle(bomb, bundles)
    details = info.value.details
    assert (info.value.code, info.value.http_status, info.value.exit_code) == (
        "ARCHIVE_TOO_LARGE", 413, 2)
    assert (details["limit"], details["value"], details["setting"]) == (
        "max_ratio", 200.0, "BATON_ARCHIVE_MAX_RATIO")
    assert RATIO_CHECKED_AFTER < details["unpacked"] <= RATIO_CHECKED_AFTER + 2**20
    assert details["actual"] > 200
    assert leftovers(bundles) == []


def limits_from(environ: dict[str, str]) -> ArchiveLimits:
    return ArchiveLimits.from_settings(Settings.from_env(environ))


def crafted(path: Path, files: dict[str, bytes]) -> Path:
    return write_tar(path, [file_member("BATON-CONTENT", index_of(files)),
                            *(file_member(n, d) for n, d in sorted(files.items()))])


MiB = 2**20


@pytest.mark.parametrize(("environ", "files", "limit", "actual"), [
    pytest.param({"BATON_ARCHIVE_MAX_BYTES": str(MiB)},
                 {"a.bin": bytes(400 * 1024), "b.bin": bytes(400 * 1024),
                  "c.bin": bytes(400 * 1024)}, "max_bytes", None, id="total-bytes"),
    pytest.param({"BATON_ARCHIVE_MAX_FILES": "3"},
                 {f"f{i}.txt": b"x" for i in range(5)}, "max_files", 5, id="files"),
    pytest.param({"BATON_ARCHIVE_MAX_FILE_BYTES": str(MiB)},
                 {"small.txt": b"ok", "weights.bin": bytes(2 * MiB)}, "max_file_bytes",
                 2 * MiB, id="file-bytes"),
])
def test_each_limit_is_refused_with_its_setting_and_nothing_is_left(
        tmp_path: Path, environ: dict[str, str], files: dict[str, bytes], limit: str,
        actual: int | None) -> None:
    archive = crafted(tmp_path / "big.baton", files)
    limits = limits_from(environ)
    for attempt in (lambda: open_bundle(archive, tmp_path / "bundles", limits=limits),
                    lambda: extract_archive(archive, tmp_path / "out" / "x", limits=limits),
                    lambda: verify_archive(archive, limits=limits)):
        (tmp_path / "out").mkdir(exist_ok=True)
        with pytest.raises(ArchiveTooLarge) as info:
            attempt()
        details = info.value.details
        assert (details["limit"], details["setting"]) == (
            limit, f"BATON_ARCHIVE_{limit.upper()}")
        assert details["value"] == getattr(limits, limit)
        assert actual is None or details["actual"] == actual
        assert f"BATON_ARCHIVE_{limit.upper()}" in info.value.message
        assert leftovers(tmp_path / "bundles") == leftovers(tmp_path / "out") == []
    assert verify_archive(archive) == extract_archive(archive, tmp_path / "ok")  # defaults


def test_a_file_is_refused_from_its_header_before_a_byte_is_written(tmp_path: Path) -> None:
    """The header says 1 GiB: refused before reading it, so the zeros need not even be
    there (the archive is cut short after the header)."""
    big = tarfile.TarInfo("weights.bin")
    big.size = 2**30
    archive = tmp_path / "cut.baton"
    archive.write_bytes(gzip.compress(tar_bytes(
        [file_member("BATON-CONTENT", index_of({"weights.bin": b""})), (big, None)],
        end=False)))
    limits = limits_from({"BATON_ARCHIVE_MAX_FILE_BYTES": str(MiB)})
    with pytest.raises(ArchiveTooLarge) as info:
        extract_archive(archive, tmp_path / "x", limits=limits)
    assert info.value.details == {"limit": "max_file_bytes", "value": MiB, "actual": 2**30,
                                  "setting": "BATON_ARCHIVE_MAX_FILE_BYTES",
                                  "path": "weights.bin"}
    assert leftovers(tmp_path) == ["cut.baton"]


def test_an_oversized_index_is_refused_before_it_is_read(tmp_path: Path) -> None:
    index = b"x" * (MAX_INDEX_BYTES + 1)
    archive = write_tar(tmp_path / "index.baton", [file_member("BATON-CONTENT", index)])
    with pytest.raises(ArchiveTooLarge) as info:
        verify_archive(archive)
    assert info.value.details == {"limit": "index_bytes", "value": MAX_INDEX_BYTES,
                                  "actual": MAX_INDEX_BYTES + 1, "setting": None}


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_an_absurd_extended_header_is_refused_before_it_is_read(tmp_path: Path,
                                                                kind: bytes) -> None:
    """tarfile reads a PAX header or GNU long name whole into memory: 1 GiB of one would
    cost 1 GiB of memory. Refused from its size, so the bytes need not be there."""
    header = tarfile.TarInfo("././@LongHeader")
    header.type, header.size = kind, 2**30
    archive = tmp_path / "header.baton"
    archive.write_bytes(gzip.compress(tar_bytes(
        [file_member("BATON-CONTENT", index_of({"baton.toml": b""})), (header, None)],
        end=False)))
    with pytest.raises(ArchiveTooLarge) as info:
        verify_archive(archive)
    assert info.value.details == {"limit": "header_bytes", "value": MAX_HEADER_BYTES,
                                  "actual": 2**30, "setting": None}


def test_limits_reach_the_commands_through_their_settings(
        cli_home: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    genuine, env = cli_home
    limited = dict(env, BATON_ARCHIVE_MAX_FILE_BYTES="100")
    r = run_baton("extract", genuine, tmp_path / "x", env=limited)
    assert r.returncode == 2
    assert "error [ARCHIVE_TOO_LARGE]" in r.stderr
    assert "BATON_ARCHIVE_MAX_FILE_BYTES" in r.stderr
    assert not (tmp_path / "x").exists()
    for args in (["check", genuine, "--report", tmp_path / "r.json"], ["contract", genuine]):
        r = run_baton(*args, env=limited)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "error [ARCHIVE_TOO_LARGE]" in r.stderr
    assert run_baton("contract", genuine, env=env).returncode == 0
