"""What a bundle archive may unpack to, counted byte by byte while it streams.

An archive is read as ``raw file -> gzip -> tar``. :class:`UnpackedStream` sits between gzip
and tar: every byte tar asks for passes through it and is counted before tar sees it, so a
limit stops the archive before anything past it is read, let alone written. The
compression ratio is only judged once :data:`RATIO_CHECKED_AFTER` bytes are unpacked: small
text files that compress very well must never trip it, and a bomb cannot do harm before.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from baton.errors import BundleError

if TYPE_CHECKING:
    from baton.settings import Settings

#: Unpacked bytes after which the compression ratio is checked.
RATIO_CHECKED_AFTER = 64 * 2**20
#: Largest ``BATON-CONTENT`` index: about 150,000 lines, far more than ``max_files``.
MAX_INDEX_BYTES = 16 * 2**20
#: Largest tar extended header (PAX ``x``, GNU long name): a path is at most 4 KiB.
MAX_HEADER_BYTES = 64 * 2**10

_CHUNK = 1 << 20


class ArchiveTooLarge(BundleError):
    """An archive that would unpack past a limit; details name the limit and its setting."""

    code = "ARCHIVE_TOO_LARGE"
    http_status = 413


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on one archive. The defaults are :class:`~baton.settings.Settings`' defaults."""

    #: Total unpacked bytes (files and their tar headers).
    max_bytes: int = 8 * 1024**3
    #: Files the index may list.
    max_files: int = 10_000
    #: Bytes of any one file.
    max_file_bytes: int = 4 * 1024**3
    #: Unpacked bytes per compressed byte, once ``RATIO_CHECKED_AFTER`` are unpacked.
    max_ratio: float = 200.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(settings.archive_max_bytes, settings.archive_max_files,
                   settings.archive_max_file_bytes, settings.archive_max_ratio)

    def exceeded(self, limit: str, actual: float, what: str, **details: Any) -> ArchiveTooLarge:
        """The error for ``what`` (a phrase) going past ``limit`` (a field of this class)."""
        value = getattr(self, limit)
        setting = f"BATON_ARCHIVE_{limit.upper()}"
        return ArchiveTooLarge(f"{what}: more than the archive limit {limit} of {value} "
                               f"(the setting {setting} changes it)",
                               details={"limit": limit, "value": value, "actual": actual,
                                        "setting": setting, **details})


def fixed_limit_exceeded(limit: str, value: int, actual: int, what: str) -> ArchiveTooLarge:
    """The error for a cap no honest bundle comes near, which no setting changes."""
    return ArchiveTooLarge(f"{what}: more than the {value} bytes Baton allows",
                           details={"limit": limit, "value": value, "actual": actual,
                                    "setting": None})


class _CountingFile:
    """The raw archive file, counting the compressed bytes read from it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.count = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.count += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        # gzip asks for it only to rewind, which reading forward never does
        return self.f.seek(offset, whence)


class UnpackedStream:
    """The unpacked tar stream of an archive, forward only, held to ``limits``.

    ``read`` counts the bytes first and refuses those past a limit; ``seek`` only skips
    forward (tar never needs more when members are read in order); ``peek`` lets the tar
    guard look at an extended header before tar reads it; ``last`` is the last block read.
    """

    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.limits = limits
        self._raw = _CountingFile(archive.open("rb"))
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
        self.unpacked, self.pos, self.last = 0, 0, b""
        self._ahead = b""

    def close(self) -> None:
        self._gz.close()
        self._raw.f.close()

    def _pull(self, size: int) -> bytes:
        data = self._gz.read(size)
        total = self.unpacked + len(data)
        if total > self.limits.max_bytes:
            raise self.limits.exceeded("max_bytes", total, "the archive unpacks to "
                                       f"more than {self.limits.max_bytes} bytes")
        if total > RATIO_CHECKED_AFTER and total > self.limits.max_ratio * self._raw.count:
            ratio = round(total / max(self._raw.count, 1), 1)
            raise self.limits.exceeded(
                "max_ratio", ratio, f"the archive unpacked {total} bytes from "
                f"{self._raw.count} compressed bytes, a ratio of {ratio} (a compression bomb?)",
                unpacked=total, compressed=self._raw.count)
        self.unpacked = total
        return data

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise ValueError("an archive is read in bounded pieces")
        if self._ahead:
            data, self._ahead = self._ahead[:size], self._ahead[size:]
            if len(data) < size:
                data += self._pull(size - len(data))
        else:
            data = self._pull(size)
        self.pos += len(data)
        self.last = data
        return data

    def peek(self, size: int) -> bytes:
        if len(self._ahead) < size:
            self._ahead += self._pull(size - len(self._ahead))
        return self._ahead[:size]

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset < self.pos:
            raise OSError("an archive is read forward only")
        while self.pos < offset and self.read(min(_CHUNK, offset - self.pos)):
            pass
        return self.pos

    def write(self, data: bytes) -> int:
        raise OSError("an archive being verified is read only")

    def rest_is_zeros(self) -> bool:
        """Read to the end (so gzip checks its CRC): is nothing but zeros left?"""
        while chunk := self.read(_CHUNK):
            if chunk.count(0) != len(chunk):
                return False
        return True
