"""Bundle folders and hand-made archives for the bundle tests."""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from baton.bundle.scaffold import scaffold

from .tars import file_member, index_of, write_tar

MakeBundle = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    """A working bundle folder (``baton init``'s), with extra files written into it."""

    def make(where: str = "bundle", name: str = "demo",
             files: dict[str, bytes] | None = None) -> Path:
        path = scaffold(tmp_path / where, name)
        (path / "model" / "weights.bin").write_bytes(bytes(range(256)) * 4)
        for rel, data in (files or {}).items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(data)
        return path

    return make


@pytest.fixture
def craft_archive(tmp_path: Path) -> Callable[..., Path]:
    """An archive whose valid index lists ``files``, followed by ``extra`` members.

    ``content`` replaces the bytes stored for some files while the index keeps the
    digests of ``files``: a tampered archive.
    """

    def craft(name: str, files: dict[str, bytes],
              extra: Iterable[tuple[tarfile.TarInfo, bytes | None]] = (),
              content: dict[str, bytes] | None = None) -> Path:
        stored = {**files, **(content or {})}
        members = [file_member("BATON-CONTENT", index_of(files))]
        members += [file_member(n, d) for n, d in stored.items()]
        return write_tar(tmp_path / name, [*members, *extra])

    return craft
