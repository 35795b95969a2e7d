"""Writing tar.gz archives by hand, as an attacker or a broken tool would."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterable
from pathlib import Path


def index_of(files: dict[str, bytes]) -> bytes:
    """A BATON-CONTENT index that lists ``files`` (all mode 644)."""
    return "".join(f"{hashlib.sha256(data).hexdigest()}  644  {name}\n"
                   for name, data in sorted(files.items())).encode()


def write_tar(path: Path, members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar.gz holding exactly ``members``, in order, written with tarfile directly."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def rewrite_archive(src: Path, dst: Path, changes: dict[str, bytes]) -> Path:
    """Copy an archive member by member, replacing the bytes of the members named."""
    members = []
    with tarfile.open(src, "r:gz") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info)
            data = f.read() if f is not None else None
            members.append((info, changes.get(info.name, data)))
    return write_tar(dst, members)


def append_members(src: Path, dst: Path,
                   extra: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Copy an archive (its index unchanged) with ``extra`` members after its own."""
    with tarfile.open(src, "r:gz") as tar:
        members = [(info, tar.extractfile(info).read())  # type: ignore[union-attr]
                   for info in tar.getmembers()]
    return write_tar(dst, [*members, *extra])


def flip_bytes(src: Path, dst: Path) -> Path:
    """Copy an archive with 8 bytes inverted three quarters in: past its index."""
    data = bytearray(src.read_bytes())
    at = len(data) * 3 // 4
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    dst.write_bytes(bytes(data))
    return dst


def write_zero_bomb(path: Path, name: str, size: int, sha256: str,
                    chunk: int = 16 * 2**20) -> Path:
    """An archive whose index lists one file ``name`` of ``size`` zero bytes (hash
    ``sha256``), written in about 1 KB per MiB: the zeros are one compressed chunk repeated
    as consecutive gzip members, which gzip readers join into one stream."""
    assert size % chunk == 0 and chunk % tarfile.BLOCKSIZE == 0
    index = f"{sha256}  644  {name}\n".encode()
    info, _ = file_member("BATON-CONTENT", index)
    info.size = len(index)
    head = info.tobuf() + index + bytes(-len(index) % tarfile.BLOCKSIZE)
    big = tarfile.TarInfo(name)
    big.size, big.mode = size, 0o644
    zeros = gzip.compress(bytes(chunk), mtime=0)
    with path.open("wb") as out:
        out.write(gzip.compress(head + big.tobuf(), mtime=0))
        for _ in range(size // chunk):
            out.write(zeros)
        out.write(gzip.compress(bytes(2 * tarfile.BLOCKSIZE), mtime=0))
    return path


def tar_bytes(members: Iterable[tuple[tarfile.TarInfo, bytes | None]], end: bool = True) -> bytes:
    """Uncompressed tar bytes for ``members``, header by header: a header may promise data
    that does not follow, and ``end=False`` leaves out the end-of-archive blocks."""
    out = bytearray()
    for info, data in members:
        if data is not None:
            info.size = len(data)
        out += info.tobuf()
        if data is not None:
            out += data + bytes(-len(data) % tarfile.BLOCKSIZE)
    return bytes(out + (bytes(2 * tarfile.BLOCKSIZE) if end else b""))
