"""Content digests, reproducible archives and verified, filtered extraction.

The content digest of a bundle is the sha256 of its index: one line per file, sorted by
path, giving the file's sha256, its mode (644 or 755) and its relative path. The index
travels inside the archive as ``BATON-CONTENT``; the same content always gives the same
digest, whatever the machine, the clock or the compressor.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from baton.bundle.manifest import MANIFEST_NAME, BundleManifest
from baton.errors import BundleError, DigestMismatchError, UnsafeArchiveError

INDEX_NAME = "BATON-CONTENT"
ARCHIVE_SUFFIX = ".baton"
_EXCLUDED_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache"}
_EXCLUDED_SUFFIXES = (".pyc", ".pyo", ARCHIVE_SUFFIX)
_EXCLUDED_NAMES = {".DS_Store", INDEX_NAME, "check-report.json"}


@dataclass(frozen=True)
class IndexEntry:
    path: str
    sha256: str
    mode: int


@dataclass(frozen=True)
class BuiltArchive:
    path: Path
    digest: str
    manifest: BundleManifest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_files(bundle_dir: Path) -> list[str]:
    """Relative POSIX paths of the files that make up a bundle, sorted."""
    out = []
    for root, dirs, files in os.walk(bundle_dir):
        dirs[:] = sorted(d for d in dirs if d not in _EXCLUDED_DIRS)
        # os.walk lists a link to a folder among the folders and does not enter it: without
        # this check its files would silently be missing from the bundle.
        files = files + [d for d in dirs if Path(root, d).is_symlink()]
        for name in files:
            if name in _EXCLUDED_NAMES or name.endswith(_EXCLUDED_SUFFIXES):
                continue
            full = Path(root, name)
            rel = full.relative_to(bundle_dir).as_posix()
            if full.is_symlink():
                raise BundleError(f"bundle file {rel} is a symbolic link; bundles hold "
                                  "regular files only", details={"path": rel})
            out.append(rel)
    return sorted(out)


def build_index(bundle_dir: Path) -> list[IndexEntry]:
    entries = []
    for rel in list_files(bundle_dir):
        full = bundle_dir / rel
        mode = 0o755 if os.access(full, os.X_OK) else 0o644
        entries.append(IndexEntry(rel, _sha256_file(full), mode))
    return entries


def render_index(entries: list[IndexEntry]) -> bytes:
    return "".join(f"{e.sha256}  {e.mode:o}  {e.path}\n" for e in entries).encode()


def parse_index(data: bytes) -> list[IndexEntry]:
    entries = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            sha, mode, path = line.split("  ", 2)
            if mode not in ("644", "755"):  # never setuid, setgid or world-writable
                raise ValueError(mode)
            entries.append(IndexEntry(path, sha, int(mode, 8)))
        except ValueError:
            raise BundleError(f"{INDEX_NAME} line {n} is malformed") from None
    return entries


def digest_of_index(index: bytes) -> str:
    return "sha256:" + hashlib.sha256(index).hexdigest()


def bundle_digest(bundle_dir: Path) -> str:
    """The content digest of a bundle folder."""
    return digest_of_index(render_index(build_index(Path(bundle_dir))))


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
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BuiltArchive(target, digest_of_index(index), manifest)


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


# -- Extraction ---------------------------------------------------------------------------

def _safe_member(member: tarfile.TarInfo) -> str:
    name = member.name
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith("/") or "\\" in name:
        raise UnsafeArchiveError(f"archive entry {name!r} would escape the bundle folder",
                                 details={"entry": name})
    if not member.isfile():
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise UnsafeArchiveError(f"archive entry {name!r} is a {kind}; bundles hold regular "
                                 "files only", details={"entry": name})
    return p.as_posix()


def extract_archive(archive: Path, target: Path, expected_digest: str | None = None) -> str:
    """Extract and verify an archive into ``target`` (created atomically); return its digest.

    Refuses entries that escape the folder, links and special files, files not listed in
    the index, and any file whose content differs from the index. With ``expected_digest``
    the index itself must match it.
    """
    archive, target = Path(archive), Path(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        digest = _extract_verified(archive, tmp, expected_digest)
        if target.exists():
            shutil.rmtree(tmp)
            return digest
        os.replace(tmp, target)
        return digest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_archive_digest(archive: Path) -> str:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.next()
            if member is None or member.name != INDEX_NAME or not member.isfile():
                raise BundleError(f"{archive} is not a Baton bundle archive: "
                                  f"{INDEX_NAME} must come first")
            f = tar.extractfile(member)
            assert f is not None
            return digest_of_index(f.read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}") from None


def verify_archive(archive: Path, expected_digest: str | None = None) -> str:
    """Check every file of an archive against its index, writing nothing; return the digest."""
    return _extract_verified(Path(archive), None, expected_digest)


def _extract_verified(archive: Path, dest: Path | None, expected_digest: str | None) -> str:
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive} is not a readable bundle archive: {exc}") from None
    with tar:
        first = tar.next()
        if first is None or first.name != INDEX_NAME or not first.isfile():
            raise BundleError(f"{archive} is not a Baton bundle archive: "
                              f"{INDEX_NAME} must come first")
        raw_index = tar.extractfile(first).read()  # type: ignore[union-attr]
        digest = digest_of_index(raw_index)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatchError(
                f"archive digest is {digest}, expected {expected_digest}",
                details={"expected": expected_digest, "actual": digest})
        index = {e.path: e for e in parse_index(raw_index)}
        seen: set[str] = set()
        # tar.next(), not iteration: iterating a TarFile starts again at the index entry.
        while (member := tar.next()) is not None:
            rel = _safe_member(member)
            entry = index.get(rel)
            if entry is None:
                raise UnsafeArchiveError(f"archive entry {rel!r} is not in {INDEX_NAME}",
                                         details={"entry": rel})
            h = hashlib.sha256()
            src = tar.extractfile(member)
            assert src is not None
            out = None if dest is None else dest / rel
            if out is None:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("wb") as f:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        f.write(chunk)
            if h.hexdigest() != entry.sha256:
                raise DigestMismatchError(f"file {rel!r} was altered: its content does not "
                                          "match the bundle's index",
                                          details={"path": rel})
            if out is not None:
                out.chmod(entry.mode)
            seen.add(rel)
        missing = sorted(set(index) - seen)
        if missing:
            raise DigestMismatchError(f"archive lacks files its index lists: {', '.join(missing)}",
                                      details={"missing": missing})
    return digest
