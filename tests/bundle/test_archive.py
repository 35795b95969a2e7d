"""Reproducible archives, content digests and verified, filtered extraction."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from baton.bundle.archive import (
    ArchiveLimits,
    ArchiveTooLarge,
    build_archive,
    bundle_digest,
    extract_archive,
    stream_archive,
    verify_archive,
)
from baton.bundle.index import digest_of_index
from baton.errors import BundleError, DigestMismatchError, UnsafeArchiveError
from tests.conftest import run_baton

from .conftest import MakeBundle
from .tars import file_member, index_of, rewrite_archive, tar_bytes, write_tar

CraftArchive = Callable[..., Path]


def _members(archive: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(archive, "r:gz") as tar:
        return tar.getmembers()


def _files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- Building ------------------------------------------------------------------------------

def test_same_content_gives_the_same_digest_and_bytes(make_bundle: MakeBundle,
                                                      tmp_path: Path) -> None:
    bundle = make_bundle()
    first = build_archive(bundle, tmp_path / "out1")
    second = build_archive(bundle, tmp_path / "out2")
    assert first.path == tmp_path / "out1" / "demo-0.1.0.baton"
    assert first.digest.startswith("sha256:") and len(first.digest) == 7 + 64
    assert second.digest == first.digest == bundle_digest(bundle)
    assert second.path.read_bytes() == first.path.read_bytes()
    assert first.manifest.name == "demo"


def test_digest_survives_a_copy_elsewhere_with_new_mtimes(make_bundle: MakeBundle,
                                                          tmp_path: Path) -> None:
    bundle = make_bundle()
    original = build_archive(bundle, tmp_path / "out1")
    copy = tmp_path / "somewhere" / "else" / "renamed"
    shutil.copytree(bundle, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    rebuilt = build_archive(copy, tmp_path / "out2")
    assert rebuilt.digest == original.digest
    assert rebuilt.path.read_bytes() == original.path.read_bytes()


def test_one_changed_byte_changes_the_digest(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    before = build_archive(bundle, tmp_path / "out1").digest
    weights = bytearray((bundle / "model" / "weights.bin").read_bytes())
    weights[500] ^= 1
    (bundle / "model" / "weights.bin").write_bytes(bytes(weights))
    assert build_archive(bundle, tmp_path / "out2").digest != before


def test_the_executable_bit_is_part_of_the_digest(make_bundle: MakeBundle,
                                                  tmp_path: Path) -> None:
    bundle = make_bundle(files={"bin/run.sh": b"#!/bin/sh\necho hi\n"})
    before = bundle_digest(bundle)
    (bundle / "bin" / "run.sh").chmod(0o755)
    assert bundle_digest(bundle) != before
    built = build_archive(bundle, tmp_path / "out")
    modes = {m.name: m.mode for m in _members(built.path)}
    assert modes["bin/run.sh"] == 0o755
    assert modes["baton.toml"] == 0o644


def test_caches_and_compiled_files_stay_out(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    clean = bundle_digest(bundle)
    (bundle / "model" / "__pycache__").mkdir()
    (bundle / "model" / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"\x00cache")
    (bundle / "model" / "predict.pyc").write_bytes(b"\x00stray")
    (bundle / ".git").mkdir()
    (bundle / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (bundle / ".DS_Store").write_bytes(b"\x00")
    (bundle / ".ipynb_checkpoints").mkdir()
    (bundle / ".ipynb_checkpoints" / "train-checkpoint.ipynb").write_text("{}")
    (bundle / "old-0.0.1.baton").write_bytes(b"an older build")
    assert bundle_digest(bundle) == clean
    names = [m.name for m in _members(build_archive(bundle, tmp_path / "out").path)]
    assert names == ["BATON-CONTENT", "baton.toml", "model/__init__.py", "model/predict.py",
                     "model/weights.bin", "samples/expected.json", "samples/input.json"]


def test_archive_members_carry_no_owner_time_or_machine_path(make_bundle: MakeBundle,
                                                             tmp_path: Path) -> None:
    bundle = make_bundle()
    built = build_archive(bundle, tmp_path / "out")
    for member in _members(built.path):
        assert member.isfile()
        assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
        assert (member.uname, member.gname) == ("", "")
        assert not member.name.startswith("/")
    raw = built.path.read_bytes()
    tar_bytes = gzip.decompress(raw)
    home = os.path.expanduser("~").encode()
    for needle in (str(bundle.resolve()).encode(), str(tmp_path).encode(), home,
                   os.getcwd().encode()):
        assert needle not in raw
        assert needle not in tar_bytes


def test_a_file_naming_the_bundle_path_is_refused(make_bundle: MakeBundle,
                                                  tmp_path: Path) -> None:
    bundle = make_bundle()
    leak = f"data_dir = '{bundle.resolve()}/data'\n".encode()
    (bundle / "model" / "config.py").write_bytes(leak)
    with pytest.raises(BundleError) as info:
        build_archive(bundle, tmp_path / "out")
    err = info.value
    assert err.code == "MACHINE_PATH_IN_BUNDLE"
    assert err.details["leaks"][0]["path"] == "model/config.py"
    assert "model/config.py" in err.message
    assert not (tmp_path / "out").exists()


def test_a_file_naming_the_home_folder_is_refused(make_bundle: MakeBundle,
                                                  tmp_path: Path) -> None:
    home = os.path.expanduser("~").rstrip("/")
    bundle = make_bundle(files={"notes.txt": f"trained from {home}/notebooks\n".encode()})
    with pytest.raises(BundleError) as info:
        build_archive(bundle, tmp_path / "out")
    assert info.value.code == "MACHINE_PATH_IN_BUNDLE"
    assert info.value.details["leaks"] == [{"path": "notes.txt", "contains": home + "/"}]


def test_a_symlinked_file_is_refused(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    (tmp_path / "outside.txt").write_text("secret")
    (bundle / "model" / "data.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(BundleError, match="model/data.txt is a symbolic link") as info:
        build_archive(bundle, tmp_path / "out")
    assert info.value.details == {"path": "model/data.txt"}


def test_a_symlinked_folder_is_refused(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "table.csv").write_text("a,b\n")
    (bundle / "data").symlink_to(tmp_path / "shared", target_is_directory=True)
    with pytest.raises(BundleError, match="data is a symbolic link"):
        bundle_digest(bundle)


def test_a_manifest_naming_a_missing_file_is_refused(make_bundle: MakeBundle,
                                                     tmp_path: Path) -> None:
    bundle = make_bundle()
    (bundle / "samples" / "expected.json").unlink()
    with pytest.raises(BundleError) as info:
        build_archive(bundle, tmp_path / "out")
    assert info.value.details == {"field": "samples.expected", "path": "samples/expected.json"}
    assert "samples.expected" in info.value.message


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002], ids=["077", "022", "002"])
def test_an_archive_is_written_0644_whatever_the_umask(make_bundle: MakeBundle,
                                                       tmp_path: Path, umask: int) -> None:
    """It was written through mkstemp and kept its 0600: unreadable to a service account."""
    bundle = make_bundle()
    previous = os.umask(umask)
    try:
        built = build_archive(bundle, tmp_path / "out")
    finally:
        os.umask(previous)
    assert built.path.stat().st_mode & 0o777 == 0o644


def test_output_may_name_the_archive_file(make_bundle: MakeBundle, tmp_path: Path) -> None:
    built = build_archive(make_bundle(), tmp_path / "dist" / "custom.baton")
    assert built.path == tmp_path / "dist" / "custom.baton"
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["custom.baton"]


# -- Extracting ----------------------------------------------------------------------------

def test_extraction_round_trips_files_modes_and_digest(make_bundle: MakeBundle,
                                                       tmp_path: Path) -> None:
    bundle = make_bundle(files={"bin/run.sh": b"#!/bin/sh\n"})
    (bundle / "bin" / "run.sh").chmod(0o755)
    built = build_archive(bundle, tmp_path / "out")
    target = tmp_path / "extracted" / "demo"
    target.parent.mkdir()
    digest = extract_archive(built.path, target, expected_digest=built.digest)
    assert digest == built.digest
    assert _files_under(target) == _files_under(bundle)
    assert bundle_digest(target) == built.digest
    assert os.access(target / "bin" / "run.sh", os.X_OK)
    assert (target / "baton.toml").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["demo"]


def _evil(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo,
                                                                              bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return (info, b"pwned") if kind == tarfile.REGTYPE else (info, None)


FILES = {"baton.toml": b"[bundle]\n", "model/predict.py": b"print('hi')\n"}


@pytest.mark.parametrize(("member", "message"), [
    pytest.param(_evil("../evil"), "archive entry '../evil' would escape the bundle folder",
                 id="traversal"),
    pytest.param(_evil("model/../../evil"), "would escape the bundle folder",
                 id="nested-traversal"),
    pytest.param(_evil("/tmp/evil"), "archive entry '/tmp/evil' would escape", id="absolute"),
    pytest.param(_evil("link", tarfile.SYMTYPE, "/etc/passwd"), "'link' is a link",
                 id="symlink"),
    pytest.param(_evil("hard", tarfile.LNKTYPE, "baton.toml"), "'hard' is a link",
                 id="hardlink"),
    pytest.param(_evil("fifo", tarfile.FIFOTYPE), "'fifo' is a special file", id="fifo"),
    pytest.param(_evil("extra.py"), "archive entry 'extra.py' is not in BATON-CONTENT",
                 id="not-in-index"),
])
def test_unsafe_entries_are_refused_and_nothing_is_left(craft_archive: CraftArchive,
                                                        tmp_path: Path,
                                                        member: tuple[tarfile.TarInfo,
                                                                      bytes | None],
                                                        message: str) -> None:
    archive = craft_archive("evil.baton", FILES, extra=[member])
    parent = tmp_path / "deep" / "bundles"
    parent.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, parent / "target")
    assert info.value.code == "UNSAFE_ARCHIVE"
    assert message in info.value.message
    assert list(parent.iterdir()) == []
    assert not (tmp_path / "deep" / "evil").exists()
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(("files", "clash"), [
    pytest.param({"baton.toml": b"[bundle]\n", "model": b"a file", "model/predict.py": b"x"},
                 "model", id="file-then-child"),
    pytest.param({"baton.toml": b"[bundle]\n", "a/b/c": b"x", "a/b": b"a file"},
                 "a/b", id="grandchild-and-file"),
])
def test_a_file_and_a_folder_of_one_name_are_an_unsafe_archive(
        craft_archive: CraftArchive, tmp_path: Path, files: dict[str, bytes], clash: str,
        baton_env: dict[str, str]) -> None:
    """A file entry followed by `dir/child` under the same name: refused as unsafe, before
    anything is written (it could only fail with a raw NotADirectoryError or
    FileExistsError halfway through the extraction), by the library and by `baton extract`."""
    archive = craft_archive("clash.baton", files)
    for read in (lambda: verify_archive(archive),
                 lambda: extract_archive(archive, tmp_path / "target")):
        with pytest.raises(UnsafeArchiveError) as info:
            read()
        assert info.value.code == "UNSAFE_ARCHIVE"
        assert info.value.message == (f"BATON-CONTENT lists {clash!r} as a file and as a "
                                      "folder")
        assert info.value.details == {"entry": clash}
    assert not (tmp_path / "target").exists()
    r = run_baton("extract", archive, tmp_path / "cli-target", env=baton_env)
    assert r.returncode == 2
    assert r.stderr == f"error [UNSAFE_ARCHIVE]: {info.value.message}\n"


def test_a_destination_where_a_file_stands_for_a_folder_is_unsafe(
        craft_archive: CraftArchive, tmp_path: Path) -> None:
    """Where a file system makes two names one (`Model` and `model/` when case does not
    count), writing a file under a file is refused as unsafe, not a raw OSError. Here the
    destination already holds a file `model`."""
    archive = craft_archive("honest.baton", FILES)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model").write_bytes(b"a file where a folder must go")
    with pytest.raises(UnsafeArchiveError) as info:
        stream_archive(archive, lambda _d, _i: dest, None, None)
    assert info.value.details == {"entry": "model/predict.py"}
    assert "clashes with another entry of the same name" in info.value.message


def test_a_crafted_archive_that_is_honest_extracts(craft_archive: CraftArchive,
                                                   tmp_path: Path) -> None:
    """The crafted archives above fail for their bad entry, not for their construction."""
    archive = craft_archive("honest.baton", FILES)
    extract_archive(archive, tmp_path / "target")
    assert _files_under(tmp_path / "target") == FILES


def test_a_tampered_file_is_caught(make_bundle: MakeBundle, tmp_path: Path) -> None:
    built = build_archive(make_bundle(), tmp_path / "out")
    tampered = rewrite_archive(built.path, tmp_path / "tampered.baton",
                               {"model/predict.py": b"import os; os.system('curl evil')\n"})
    with pytest.raises(DigestMismatchError) as info:
        extract_archive(tampered, tmp_path / "target")
    assert info.value.code == "DIGEST_MISMATCH"
    assert info.value.details == {"path": "model/predict.py"}
    assert "'model/predict.py' was altered" in info.value.message
    assert not (tmp_path / "target").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".target")]


def test_an_unaltered_rewrite_still_extracts(make_bundle: MakeBundle, tmp_path: Path) -> None:
    """rewrite_archive itself keeps archives valid: the test above fails for the change."""
    built = build_archive(make_bundle(), tmp_path / "out")
    copy = rewrite_archive(built.path, tmp_path / "copy.baton", {})
    assert extract_archive(copy, tmp_path / "target") == built.digest


def test_a_file_missing_from_the_archive_is_caught(craft_archive: CraftArchive,
                                                   tmp_path: Path) -> None:
    index = index_of({**FILES, "model/weights.bin": b"\x01\x02"})
    archive = write_tar(tmp_path / "short.baton",
                        [file_member("BATON-CONTENT", index),
                         *(file_member(n, d) for n, d in FILES.items())])
    with pytest.raises(DigestMismatchError, match="archive lacks files its index lists: "
                                                  "model/weights.bin"):
        extract_archive(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_expected_digest_must_match(make_bundle: MakeBundle, tmp_path: Path) -> None:
    built = build_archive(make_bundle(), tmp_path / "out")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatchError) as info:
        extract_archive(built.path, tmp_path / "target", expected_digest=wrong)
    assert info.value.details == {"expected": wrong, "actual": built.digest}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "out"]


def test_an_index_granting_special_modes_is_refused(tmp_path: Path) -> None:
    data = b"#!/bin/sh\n"
    index = index_of({"run.sh": data}).replace(b"  644  ", b"  4755  ")
    archive = write_tar(tmp_path / "suid.baton",
                        [file_member("BATON-CONTENT", index), file_member("run.sh", data)])
    with pytest.raises(BundleError, match="BATON-CONTENT line 1 is malformed"):
        extract_archive(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_an_archive_without_index_first_is_refused(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "plain.baton", [file_member("baton.toml", b"[bundle]\n")])
    with pytest.raises(BundleError, match="BATON-CONTENT must come first"):
        extract_archive(archive, tmp_path / "target")


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.baton"
    junk.write_bytes(b"definitely not gzip")
    with pytest.raises(BundleError, match="is not a readable bundle archive") as info:
        extract_archive(junk, tmp_path / "target")
    assert info.value.code == "INVALID_BUNDLE"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.baton"]


# -- What tarfile would accept but a bundle never holds -------------------------------------

def test_long_and_non_ascii_names_round_trip(make_bundle: MakeBundle, tmp_path: Path) -> None:
    """Such names travel in PAX headers, which the reader allows within bounds."""
    long_name = "data/" + "d" * 120 + "/" + "f" * 120 + ".csv"
    bundle = make_bundle(files={long_name: b"1,2\n", "data/größe.txt": b"\xc3\xa9\n"})
    built = build_archive(bundle, tmp_path / "out")
    assert any(m.pax_headers for m in _members(built.path))
    assert extract_archive(built.path, tmp_path / "x") == built.digest
    assert _files_under(tmp_path / "x") == _files_under(bundle)


def _raw_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]],
                 trailer: bytes = bytes(1024)) -> Path:
    path.write_bytes(gzip.compress(tar_bytes(members, end=False) + trailer))
    return path


def _pax(headers: dict[str, str], kind: bytes = tarfile.XHDTYPE) -> tuple[tarfile.TarInfo,
                                                                          bytes]:
    data = b"".join(_pax_record(k, v) for k, v in headers.items())
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = kind
    return info, data


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


@pytest.mark.parametrize(("extra", "message"), [
    pytest.param([_pax({"comment": "everything after me"}, tarfile.XGLTYPE)],
                 "global extended header", id="pax-global"),
    pytest.param([_pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "model/predict.py",
                        "GNU.sparse.realsize": str(2**40)})],
                 "is a sparse file", id="pax-sparse"),
    pytest.param([_pax({"comment": "a"}), _pax({"comment": "b"}), _pax({"comment": "c"})],
                 "chains extended tar headers", id="chained-headers"),
    pytest.param([_pax({"path": "../escape.py"})], "would escape the bundle folder",
                 id="pax-path-traversal"),
    pytest.param([_pax({"size": "-512"})], "has a negative size", id="pax-negative-size"),
])
def test_extended_headers_no_bundle_needs_are_refused(tmp_path: Path,
                                                      extra: list[tuple[tarfile.TarInfo,
                                                                        bytes]],
                                                      message: str) -> None:
    members = [file_member("BATON-CONTENT", index_of(FILES)),
               *extra, *(file_member(n, d) for n, d in FILES.items())]
    archive = _raw_archive(tmp_path / "headers.baton", members)
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_archive(archive, tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["headers.baton"]


def test_a_gnu_sparse_member_is_refused(tmp_path: Path) -> None:
    sparse = tarfile.TarInfo("model/predict.py")
    sparse.type = tarfile.GNUTYPE_SPARSE
    archive = _raw_archive(tmp_path / "sparse.baton",
                           [file_member("BATON-CONTENT", index_of(FILES)), (sparse, None)])
    with pytest.raises(UnsafeArchiveError, match="is a sparse file"):
        verify_archive(archive)


def test_a_member_listed_twice_is_refused(craft_archive: CraftArchive, tmp_path: Path) -> None:
    archive = craft_archive("twice.baton", FILES,
                            extra=[file_member("baton.toml", FILES["baton.toml"])])
    with pytest.raises(UnsafeArchiveError, match="'baton.toml' appears twice"):
        extract_archive(archive, tmp_path / "target")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize(("trailer", "message"), [
    pytest.param(bytes(1024) + b"hidden payload".ljust(512, b"\0"),
                 "does not end as a Baton archive does", id="data-after-the-end"),
    pytest.param(b"", "does not end as a Baton archive does", id="no-end-blocks"),
])
def test_anything_but_zeros_after_the_last_file_is_refused(tmp_path: Path, trailer: bytes,
                                                           message: str) -> None:
    members = [file_member("BATON-CONTENT", index_of(FILES)),
               *(file_member(n, d) for n, d in FILES.items())]
    archive = _raw_archive(tmp_path / "trailer.baton", members, trailer)
    with pytest.raises(BundleError, match=message):
        verify_archive(archive)
    assert verify_archive(_raw_archive(tmp_path / "ok.baton", members,
                                       bytes(1024 + 8192))) == digest_of_index(
        index_of(FILES))


@pytest.mark.parametrize("damage", ["crc", "truncated"])
def test_a_damaged_gzip_stream_is_refused(make_bundle: MakeBundle, tmp_path: Path,
                                          damage: str) -> None:
    data = bytearray(build_archive(make_bundle(), tmp_path / "out").path.read_bytes())
    if damage == "crc":
        data[-8] ^= 0xFF  # the CRC32 of the unpacked bytes, checked at the very end
    else:
        data = data[:-40]
    archive = tmp_path / f"{damage}.baton"
    archive.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="is not a readable bundle archive") as info:
        extract_archive(archive, tmp_path / "target")
    assert info.value.code == "INVALID_BUNDLE"
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize(("index", "message"), [
    pytest.param(b"\xff\xfe\n", "BATON-CONTENT is not UTF-8 text", id="not-utf8"),
    pytest.param(index_of(FILES)[:-1], "no line end", id="no-final-newline"),
    pytest.param(b"".join(reversed(index_of(FILES).splitlines(keepends=True))),
                 "not sorted by path", id="unsorted"),
    pytest.param(index_of({"a": b""}) * 2, "lists a path twice", id="duplicate"),
    pytest.param(index_of({"../x.py": b""}), "line 1 is malformed", id="traversal"),
    pytest.param(index_of({"/etc/x": b""}), "line 1 is malformed", id="absolute"),
    pytest.param(index_of({"a/./b": b""}), "line 1 is malformed", id="not-normal"),
    pytest.param(index_of({"a\rb": b""}), "line 1 is malformed", id="control-character"),
    pytest.param(b"xyz  644  a\n", "line 1 is malformed", id="not-a-sha256"),
])
def test_an_index_that_is_not_canonical_is_refused(tmp_path: Path, index: bytes,
                                                   message: str) -> None:
    archive = write_tar(tmp_path / "index.baton", [file_member("BATON-CONTENT", index)])
    with pytest.raises(BundleError, match=message) as info:
        verify_archive(archive)
    assert info.value.code == "INVALID_BUNDLE"


@pytest.mark.parametrize(("extra", "error", "message"), [
    pytest.param(10, UnsafeArchiveError, "unpacks past the 12 bytes its header gives",
                 id="past-its-header"),
    pytest.param(200, ArchiveTooLarge, "unpacks to 212 bytes", id="past-the-limit"),
])
def test_the_bytes_a_file_produces_are_counted_too(craft_archive: CraftArchive,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   extra: int, error: type[BundleError],
                                                   message: str) -> None:
    """A fault tarfile cannot produce (a member yielding more than its header's size), so a
    reader that would is put in its place: the count still stops it."""
    archive = craft_archive("liar.baton", FILES)
    real = tarfile.TarFile.extractfile

    def generous(self: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
        if member.name != "model/predict.py":
            return real(self, member)
        return io.BytesIO(FILES[member.name] + bytes(extra))

    monkeypatch.setattr(tarfile.TarFile, "extractfile", generous)
    with pytest.raises(error, match=message):
        extract_archive(archive, tmp_path / "target", limits=ArchiveLimits(max_file_bytes=100))
    assert not (tmp_path / "target").exists()
