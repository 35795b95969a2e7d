"""Writing tar.gz archives by hand, as an attacker or a broken tool would."""

from __future__ import annotations

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
