"""``file://PATH.jsonl``: JSON Lines files as a stream.

Source: reads lines and follows the file as it grows; the acknowledged position is kept in
``PATH.offset-GROUP`` (written atomically and fsynced), so a restart resumes after the last
acknowledged line. The key of a record is its ``key`` option field (``?key=FIELD``) or its
line number. Sink: appends one JSON line per record and fsyncs before returning.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import orjson

from baton.streams.base import Message, OptionKind, OutRecord, StreamError, StreamURL

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = None
OPTIONS: dict[str, OptionKind] = {"key": "text"}


class FileSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.path = Path(url.path)
        self.key_field = url.options.get("key")
        self.offset_path = self.path.with_name(f"{self.path.name}.offset-{group}")
        self._file: object = None
        self._pos = 0
        self._line = 0

    async def open(self) -> None:
        if not self.path.exists():
            raise StreamError(f"input file {self.path} does not exist")
        if self.offset_path.exists():
            pos, line = self.offset_path.read_text().split()
            self._pos, self._line = int(pos), int(line)

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        out = self._read_lines(max_records)
        if not out:
            await asyncio.sleep(timeout)
            out = self._read_lines(max_records)
        return out

    def _read_lines(self, max_records: int) -> list[Message]:
        out: list[Message] = []
        with self.path.open("rb") as f:
            f.seek(self._pos)
            while len(out) < max_records:
                line = f.readline()
                if not line or not line.endswith(b"\n"):
                    break  # nothing more, or a line still being written
                self._pos += len(line)
                self._line += 1
                value = line.strip()
                if not value:
                    continue
                out.append(Message(self._key(value), value, (self._pos, self._line)))
        return out

    def _key(self, value: bytes) -> str:
        if self.key_field:
            try:
                key = orjson.loads(value).get(self.key_field)
                if key is not None:
                    return str(key)
            except (orjson.JSONDecodeError, AttributeError):
                pass
        return str(self._line)

    async def ack(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        pos, line = messages[-1].position
        tmp = self.offset_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(f"{pos} {line}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.offset_path)

    async def lag(self) -> int | None:
        """Complete lines after the read position (counted in the file, 1 MiB at a time)."""
        return await asyncio.to_thread(self._count_unread)

    def _count_unread(self) -> int:
        lines = 0
        with self.path.open("rb") as f:
            f.seek(self._pos)
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
        return lines

    async def close(self) -> None:
        return None


class FileSink:
    def __init__(self, url: StreamURL) -> None:
        self.path = Path(url.path)
        self._fd: int | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise StreamError(f"cannot open {self.path} for writing: {exc}") from None

    async def write(self, records: Sequence[OutRecord]) -> None:
        if self._fd is None:
            raise StreamError(f"cannot write to {self.path}: it is not open")
        data = b"".join(r.value + b"\n" for r in records)
        try:
            os.write(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            raise StreamError(f"cannot write to {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_source(url: StreamURL, *, group: str) -> FileSource:
    return FileSource(url, group)


def open_sink(url: StreamURL) -> FileSink:
    return FileSink(url)
