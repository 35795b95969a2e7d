"""A refused push leaves nothing in the content store (issue 9: "a refused push leaves its
blob in the store forever"), and ``baton registry gc`` removes what older versions left.

The archive and its manifest are verified before anything is stored; when the database
then refuses the version, its blob is removed unless another version references it.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from baton.bundle.archive import INDEX_NAME
from baton.errors import BatonError
from baton.registry.service import Registry
from tests.bundle.tars import file_member, flip_bytes, index_of, write_tar

from .conftest import MakeArchive, actor, unique


def stored_files(reg: Registry) -> list[Path]:
    """Everything in the content folder, temporary files included."""
    root = reg.blobs.root
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def push_error(reg: Registry, archive: Path, role: str = "data-scientist") -> BatonError:
    with pytest.raises(BatonError) as err:
        reg.push(actor(role), archive)
    return err.value


def test_different_content_under_an_existing_version_leaves_no_blob(
        registry: Registry, make_archive: MakeArchive) -> None:
    name = unique("immutable")
    first = make_archive(name)
    registry.push(actor("data-scientist"), first.path)
    before = stored_files(registry)
    changed = make_archive(name, variant="retrained")

    assert push_error(registry, changed.path).code == "IMMUTABLE_VERSION"
    assert not registry.blobs.path(changed.digest).exists()
    assert stored_files(registry) == before == [registry.blobs.path(first.digest)]


def test_an_archive_refused_before_the_database_stores_nothing(
        registry: Registry, make_archive: MakeArchive, tmp_path: Path) -> None:
    built = make_archive(unique("refused"))
    no_manifest = {"baton.toml": b"[bundle]\nname = 'incomplete'\n"}
    broken = write_tar(tmp_path / "broken.baton", [
        file_member(INDEX_NAME, index_of(no_manifest)),
        *(file_member(n, d) for n, d in no_manifest.items())])
    tampered = flip_bytes(built.path, tmp_path / "flipped.baton")

    assert push_error(registry, broken).code == "INVALID_MANIFEST"
    assert push_error(registry, tampered).code in ("DIGEST_MISMATCH", "INVALID_BUNDLE")
    assert push_error(registry, built.path, role="viewer").code == "FORBIDDEN"
    assert stored_files(registry) == []
    assert isinstance(tarfile.open(built.path), tarfile.TarFile)  # the genuine one is fine
    registry.push(actor("data-scientist"), built.path)
    assert stored_files(registry) == [registry.blobs.path(built.digest)]


def test_a_version_the_database_refuses_after_storing_leaves_no_blob(
        registry: Registry, make_archive: MakeArchive, backend: str) -> None:
    """The database's own refusal (a trigger, as a real constraint would) comes after the
    blob was written: the push removes it."""
    name = unique("vetoed")
    built = make_archive(name)
    _veto_versions_named(registry, name, backend)
    try:
        with pytest.raises(DBAPIError, match="vetoed by the test"):
            registry.push(actor("data-scientist"), built.path)
    finally:
        _veto_versions_named(registry, None, backend)
    assert not registry.blobs.path(built.digest).exists()
    assert registry.list(actor("viewer"), name) == []
    registry.push(actor("data-scientist"), built.path)  # nothing left half-done
    assert registry.blobs.path(built.digest).exists()


def test_pushing_the_same_content_again_keeps_the_blob_its_version_references(
        registry: Registry, make_archive: MakeArchive) -> None:
    built = make_archive(unique("again"))
    registry.push(actor("data-scientist"), built.path)
    _, created = registry.push(actor("admin"), built.path)
    assert created is False
    assert stored_files(registry) == [registry.blobs.path(built.digest)]


def _veto_versions_named(reg: Registry, name: str | None, backend: str) -> None:
    with reg.db.engine.begin() as conn:
        if backend == "postgresql":
            conn.execute(text("DROP TRIGGER IF EXISTS test_veto ON bundle_versions"))
            conn.execute(text("DROP FUNCTION IF EXISTS test_veto()"))
            if name is not None:
                conn.execute(text(f"""CREATE FUNCTION test_veto() RETURNS trigger AS $$
                    BEGIN IF NEW.name = '{name}' THEN RAISE EXCEPTION 'vetoed by the test';
                    END IF; RETURN NEW; END; $$ LANGUAGE plpgsql"""))
                conn.execute(text("CREATE TRIGGER test_veto BEFORE INSERT ON bundle_versions "
                                  "FOR EACH ROW EXECUTE FUNCTION test_veto()"))
            return
        conn.execute(text("DROP TRIGGER IF EXISTS test_veto"))
        if name is not None:
            conn.execute(text(f"""CREATE TRIGGER test_veto BEFORE INSERT ON bundle_versions
                WHEN NEW.name = '{name}' BEGIN SELECT RAISE(ABORT, 'vetoed by the test'); END"""))
