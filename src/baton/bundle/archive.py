"""Reproducible archives, and verified, filtered, bounded reading of them.

An archive is ``BATON-CONTENT`` (the index, see :mod:`baton.bundle.index`) followed by the
files it lists. Reading one always streams it whole, once: every member is checked against
the index (safe name, regular file, listed once, same content, none missing) and counted
against :class:`ArchiveLimits`, whether the files are written or only verified, and
whatever was extracted before.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from baton.bundle.index import (
    ARCHIVE_SUFFIX,
    INDEX_NAME,
    IndexEntry,
    build_index,
    bundle_digest,
    digest_of_index,
    list_files,
    parse_index,
    render_index,
)
from baton.bundle.limits import (
    MAX_HEADER_BYTES,
    MAX_INDEX_BYTES,
    ArchiveLimits,
    ArchiveTooLarge,
    UnpackedStream,
    fixed_limit_exceeded,
)
from baton.bundle.manifest import MANIFEST_NAME, BundleManifest
from baton.errors import BundleError, DigestMismatchError, UnsafeArchiveError

__all__ = ["ARCHIVE_MODE", "ARCHIVE_SUFFIX", "INDEX_NAME", "ArchiveLimits", "ArchiveTooLarge",
           "BuiltArchive", "IndexEntry", "build_archive", "bundle_digest", "extract_archive",
           "parse_index", "list_files", "publish_archive", "stream_archive", "verify_archive"]

#: An archive file's mode, whatever the umask: it is made to be copied, pushed and read by
#: the account that serves it (a temporary file would otherwise keep mkstemp's 0600).
ARCHIVE_MODE = 0o644


@dataclass(frozen=True)
class BuiltArchive:
    path: Path
    digest: str
    manifest: BundleManifest


def _machine_paths(bundle_dir: Path) -> list[bytes]:
    """Absolute paths of the building machine that must never end up inside a bundle."""
    candidates = {str(bundle_dir.resolve()), str(bundle_dir.resolve().parent), os.getcwd()}
    home = os.path.expanduser("~")
    if home not in ("/", "") and home.count("/") >= 1:
        candidates.add(home.rstrip("/") + "/")
    return sorted({c.encode() for c in candidates if len(c) > 1})


def find_machine_paths(bundle_dir: Path, files: list[str]) -> list[dict[str, str]]:
    needles = _machine_paths(bundle_dir)
    leaks = []
    for rel in files:
        data = (bundle_dir / rel).read_bytes()
        for needle in needles:
            if needle in data:
                leaks.append({"path": rel, "contains": needle.decode()})
                break
    return leaks


def build_archive(bundle_dir: Path, output: Path) -> BuiltArchive:
    """Write ``NAME-VERSION.baton`` (a reproducible tar.gz) into ``output`` (a folder or file)."""
    bundle_dir = Path(bundle_dir)
    manifest = BundleManifest.load(bundle_dir)
    entries = build_index(bundle_dir)
    _check_references(bundle_dir, manifest, {e.path for e in entries})
    leaks = find_machine_paths(bundle_dir, [e.path for e in entries])
    if leaks:
        listing = "; ".join(f"{x['path']} contains {x['contains']}" for x in leaks)
        raise BundleError(f"bundle files name absolute paths of this machine: {listing}",
                          code="MACHINE_PATH_IN_BUNDLE", details={"leaks": leaks})
    index = render_index(entries)
    output = Path(output)
    target = output / f"{manifest.name}-{manifest.version}{ARCHIVE_SUFFIX}" \
        if output.is_dir() or not output.suffix else output
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=ARCHIVE_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, INDEX_NAME, io.BytesIO(index), len(index), 0o644)
            for e in entries:
                with (bundle_dir / e.path).open("rb") as f:
                    _add(tar, e.path, f, (bundle_dir / e.path).stat().st_size, e.mode)
        publish_archive(Path(tmp), target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BuiltArchive(target, digest_of_index(index), manifest)


def publish_archive(tmp: Path, target: Path) -> None:
    """Move a finished archive onto ``target`` atomically, with :data:`ARCHIVE_MODE`."""
    tmp.chmod(ARCHIVE_MODE)
    os.replace(tmp, target)


def _add(tar: tarfile.TarFile, name: str, fileobj: io.IOBase | io.BufferedReader, size: int,
         mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, fileobj)


def _check_references(bundle_dir: Path, manifest: BundleManifest, files: set[str]) -> None:
    refs = [("model.artifact", manifest.model.artifact)]
    if manifest.samples:
        refs += [("samples.input", manifest.samples.input),
                 ("samples.expected", manifest.samples.expected)]
    refs.append(("monitoring.reference", manifest.monitoring.reference))
    for name, rel in refs:
        if rel is not None and rel not in files:
            raise BundleError(f"{MANIFEST_NAME} names {name} = {rel!r}, which is not in "
                              f"{bundle_dir}", details={"field": name, "path": rel})


# -- Reading archives ------------------------------------------------------------------------

#: Tar header types that describe the next member (GNU long names, PAX extended headers).
_EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
             tarfile.SOLARIS_XHDTYPE)
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


#: tarfile's per-member hook, private and so absent from typeshed: where the guard looks at
#: a header before tarfile reads what it announces.
_PROC_MEMBER: Callable[[tarfile.TarInfo, tarfile.TarFile], tarfile.TarInfo] = \
    vars(tarfile.TarInfo)["_proc_member"]


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses, before tarfile reads them into memory, headers that no bundle needs."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:  # tarfile's hook
        if not isinstance(tar, _GuardedTarFile):  # its counter lives there: never skip checks
            raise TypeError("_GuardedTarInfo is read only through _GuardedTarFile")
        if self.type == tarfile.XGLTYPE:
            raise UnsafeArchiveError("archive has a global extended header, which would "
                                     "change every entry after it; bundles never need one")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchiveError(f"archive entry {self.name!r} is a sparse file; bundles "
                                     "hold regular files only", details={"entry": self.name})
        if self.type not in _EXTENDED:
            tar.headers_in_a_row = 0
            return _PROC_MEMBER(self, tar)
        if self.size > MAX_HEADER_BYTES:
            raise fixed_limit_exceeded("header_bytes", MAX_HEADER_BYTES, self.size,
                                       f"an extended tar header of {self.size} bytes")
        tar.headers_in_a_row += 1
        if tar.headers_in_a_row > 2:
            raise UnsafeArchiveError("archive chains extended tar headers; an entry needs "
                                     "at most a long name and a PAX header")
        # tarfile would expand GNU sparse maps (unbounded, and zeros from nothing): look first.
        if b"GNU.sparse" in tar.stream.peek(self.size):
            raise UnsafeArchiveError("archive entry is a sparse file; bundles hold regular "
                                     "files only")
        return _PROC_MEMBER(self, tar)


class _GuardedTarFile(tarfile.TarFile):
    tarinfo = _GuardedTarInfo
    headers_in_a_row = 0

    def __init__(self, stream: UnpackedStream) -> None:
        self.stream = stream  # before tarfile reads the first header through the guard
        super().__init__(fileobj=stream, mode="r")


def _safe_member(member: tarfile.TarInfo) -> str:
    name = member.name
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("/") or "\\" in name:
        raise UnsafeArchiveError(f"archive entry {name!r} would escape the bundle folder",
                                 details={"entry": name})
    if member.size < 0:  # a PAX size field can say anything
        raise UnsafeArchiveError(f"archive entry {name!r} has a negative size",
                                 details={"entry": name})
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise UnsafeArchiveError(f"archive entry {name!r} is a {kind}; bundles hold regular "
                                 "files only", details={"entry": name})
    return p.as_posix()


#: Given the digest and index, the folder to extract into, or None to verify only.
DestinationFor = Callable[[str, dict[str, IndexEntry]], "Path | None"]


def extract_archive(archive: Path, target: Path, expected_digest: str | None = None, *,
                    limits: ArchiveLimits | None = None) -> str:
    """Extract and verify an archive into ``target`` (created atomically); return its digest.

    Refuses entries that escape the folder, links and special files, files not listed in
    the index, any file whose content differs from the index, and archives past ``limits``
    (default: :class:`ArchiveLimits`'). With ``expected_digest`` the index must match it.
    Nothing is left behind on a refusal.
    """
    archive, target = Path(archive), Path(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        digest = stream_archive(archive, lambda _d, _i: tmp, expected_digest, limits)
        if target.exists():
            shutil.rmtree(tmp)
            return digest
        os.replace(tmp, target)
        return digest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify_archive(archive: Path, expected_digest: str | None = None, *,
                   limits: ArchiveLimits | None = None) -> str:
    """Check every file of an archive against its index, writing nothing; return the digest."""
    return stream_archive(Path(archive), lambda _d, _i: None, expected_digest, limits)


def stream_archive(archive: Path, dest_for: DestinationFor, expected_digest: str | None,
                   limits: ArchiveLimits | None) -> str:
    """Read ``archive`` once, verifying every member against its index; write the files into
    the folder ``dest_for`` names once the index is known (None: write nothing)."""
    limits = limits or ArchiveLimits()
    try:
        stream = UnpackedStream(archive, limits)
    except OSError as exc:
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}") from None
    try:
        with _reading(archive):
            tar = _GuardedTarFile(stream)
        with tar:
            digest, index = _read_index(archive, tar, expected_digest, limits)
            _read_members(archive, tar, index, dest_for(digest, index), limits)
            with _reading(archive):
                if stream.last != bytes(tarfile.BLOCKSIZE) or not stream.rest_is_zeros():
                    raise BundleError(f"{archive} does not end as a Baton archive does: "
                                      "after the last file come the tar end-of-archive "
                                      "blocks (zeros) and nothing else")
        return digest
    finally:
        stream.close()


@contextmanager
def _reading(archive: Path) -> Iterator[None]:
    """Errors of reading a broken archive become INVALID_BUNDLE (writing errors do not pass
    through here)."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}") from None


def _next(archive: Path, tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    with _reading(archive):
        return tar.next()


def _chunks(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    src = tar.extractfile(member)
    if src is None:  # _safe_member let only regular files through
        raise BundleError(f"{archive}: entry {member.name!r} has no content to read")
    while True:
        with _reading(archive):
            chunk = src.read(1 << 20)
        if not chunk:
            return
        yield chunk


def _read_index(archive: Path, tar: tarfile.TarFile, expected_digest: str | None,
                limits: ArchiveLimits) -> tuple[str, dict[str, IndexEntry]]:
    first = _next(archive, tar)
    if first is None or first.name != INDEX_NAME or not first.isfile():
        raise BundleError(f"{archive} is not a Baton bundle archive: "
                          f"{INDEX_NAME} must come first")
    if first.size > MAX_INDEX_BYTES:
        raise fixed_limit_exceeded("index_bytes", MAX_INDEX_BYTES, first.size,
                                   f"{INDEX_NAME} is {first.size} bytes")
    raw_index = b"".join(_chunks(archive, tar, first))
    digest = digest_of_index(raw_index)
    if expected_digest is not None and digest != expected_digest:
        raise DigestMismatchError(f"archive digest is {digest}, expected {expected_digest}",
                                  details={"expected": expected_digest, "actual": digest})
    entries = parse_index(raw_index)
    if len(entries) > limits.max_files:
        raise limits.exceeded("max_files", len(entries),
                              f"{INDEX_NAME} lists {len(entries)} files")
    return digest, {e.path: e for e in entries}


def _read_members(archive: Path, tar: tarfile.TarFile, index: dict[str, IndexEntry],
                  dest: Path | None, limits: ArchiveLimits) -> None:
    seen: set[str] = set()
    # tar.next(), not iteration: iterating a TarFile starts again at the index entry.
    while (member := _next(archive, tar)) is not None:
        rel = _safe_member(member)
        entry = index.get(rel)
        if entry is None:
            raise UnsafeArchiveError(f"archive entry {rel!r} is not in {INDEX_NAME}",
                                     details={"entry": rel})
        if rel in seen:
            raise UnsafeArchiveError(f"archive entry {rel!r} appears twice",
                                     details={"entry": rel})
        _check_member_size(rel, member.size, tar, limits)
        _copy_member(archive, tar, member, entry, dest, limits)
        seen.add(rel)
    missing = sorted(set(index) - seen)
    if missing:
        raise DigestMismatchError(f"archive lacks files its index lists: {', '.join(missing)}",
                                  details={"missing": missing})


def _check_member_size(rel: str, size: int, tar: tarfile.TarFile,
                       limits: ArchiveLimits) -> None:
    """Refuse from the header, before a byte of the file is read."""
    if size > limits.max_file_bytes:
        raise limits.exceeded("max_file_bytes", size, f"archive file {rel!r} is {size} bytes",
                              path=rel)
    total = tar.fileobj.tell() + size
    if total > limits.max_bytes:
        raise limits.exceeded("max_bytes", total, f"with {rel!r} the archive unpacks to "
                              f"{total} bytes", path=rel)


def _check_produced(rel: str, produced: int, size: int, limits: ArchiveLimits) -> None:
    """The bytes a file really produces, in case a reader ever yields more than its header
    said (tarfile does not)."""
    if produced > limits.max_file_bytes:
        raise limits.exceeded("max_file_bytes", produced,
                              f"archive file {rel!r} unpacks to {produced} bytes", path=rel)
    if produced > size:
        raise UnsafeArchiveError(f"archive entry {rel!r} unpacks past the {size} bytes its "
                                 "header gives", details={"entry": rel})


def _copy_member(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo,
                 entry: IndexEntry, dest: Path | None, limits: ArchiveLimits) -> None:
    h, produced = hashlib.sha256(), 0
    out = None if dest is None else dest / entry.path
    with contextlib.ExitStack() as stack:
        f = None if out is None else stack.enter_context(_create(out, entry.path))
        for chunk in _chunks(archive, tar, member):
            produced += len(chunk)
            _check_produced(entry.path, produced, member.size, limits)
            h.update(chunk)
            if f is not None:
                f.write(chunk)
    if h.hexdigest() != entry.sha256:
        raise DigestMismatchError(f"file {entry.path!r} was altered: its content does not "
                                  "match the bundle's index", details={"path": entry.path})
    if out is not None:
        out.chmod(entry.mode)


def _create(out: Path, rel: str) -> io.BufferedWriter:
    """A new file for entry ``rel``. The index never lists a file and a folder of one name,
    but a file system can still make two names one (``Model`` and ``model/`` where case does
    not count): a file where a folder must go, or the reverse, is an unsafe archive."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out.open("xb")
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise UnsafeArchiveError(f"archive entry {rel!r} clashes with another entry of the "
                                 f"same name as a file and as a folder ({exc.strerror})",
                                 details={"entry": rel}) from None
