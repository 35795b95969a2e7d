"""A refused push leaves nothing in the content store (issue 9: "a refused push leaves its
blob in the store forever"), and ``baton registry gc`` removes what older versions left.

The archive and its manifest are verified before anything is stored; when the database
then refuses the version, its blob is removed unless another version references it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from baton.bundle.archive import INDEX_NAME, ArchiveLimits, build_archive
from baton.bundle.scaffold import scaffold
from baton.cli.main import main
from baton.errors import BatonError
from baton.registry.client import RegistryClient
from baton.registry.service import Registry
from tests.bundle.tars import file_member, flip_bytes, index_of, write_tar, write_zero_bomb

from .conftest import ApiServer, MakeArchive, MakeRegistry, actor, unique


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


# -- archive limits ------------------------------------------------------------------------------

def test_a_bomb_is_refused_before_its_limit_is_written_and_leaves_nothing(
        make_registry: MakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 32 * 2**20
    bomb = write_zero_bomb(tmp_path / "bomb.baton", "model/weights.bin", size,
                           hashlib.sha256(bytes(size)).hexdigest())
    reg = make_registry()
    reg.blobs.limits = ArchiveLimits(max_file_bytes=2**20)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where the push unpacks, to look inside
    tempfile.tempdir = None
    try:
        err = push_error(reg, bomb)
    finally:
        tempfile.tempdir = None
    assert (err.code, err.http_status, err.details["limit"]) == (
        "ARCHIVE_TOO_LARGE", 413, "max_file_bytes")
    assert stored_files(reg) == []
    assert list(scratch.iterdir()) == []


def test_pull_verifies_within_the_limits_and_stops_an_oversized_download(
        registry: Registry, serve_api: Any, tmp_path: Path) -> None:
    folder = scaffold(tmp_path / "big", unique("big"))
    (folder / "model" / "noise.bin").write_bytes(os.urandom(256 * 1024))
    built = build_archive(folder, tmp_path / "archives")
    registry.push(actor("data-scientist"), built.path)
    server: ApiServer = serve_api(registry)
    client = RegistryClient(server.url, registry.bootstrap_admin(unique("root")))
    ref = f"{built.path.name.rsplit('-', 1)[0]}@0.1.0"
    try:
        for limits, what in ((ArchiveLimits(max_bytes=100_000), "the downloaded archive"),
                             (ArchiveLimits(max_file_bytes=1000), "")):
            dest = tmp_path / f"pulled-{limits.max_bytes}"
            with pytest.raises(BatonError) as err:
                client.pull(ref, dest, limits=limits)
            assert err.value.code == "ARCHIVE_TOO_LARGE" and what in err.value.message
            assert list(dest.iterdir()) == []
        path, digest = client.pull(ref, tmp_path / "ok")
        assert digest == built.digest and path.read_bytes() == built.path.read_bytes()
    finally:
        client.close()


# -- garbage collection --------------------------------------------------------------------------

def test_gc_removes_unreferenced_blobs_and_stale_uploads_only(
        make_registry: MakeRegistry, make_archive: MakeArchive, tmp_path: Path,
        database_url: str, key_file: Path) -> None:
    reg = make_registry()
    kept = make_archive(unique("kept"))
    reg.push(actor("data-scientist"), kept.path)
    orphan = make_archive(unique("orphan"))  # as a refused push of an older Baton left it
    orphan_path = reg.blobs.path(orphan.digest)
    orphan_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(orphan.path, orphan_path)
    stale = orphan_path.parent / ".put-stale"
    stale.write_bytes(b"half an upload")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = orphan_path.parent / ".put-fresh"  # may still be in progress
    fresh.write_bytes(b"an upload")
    everything = stored_files(reg)

    env = {"BATON_HOME": str(tmp_path / "home")}
    args = ["registry", "gc", "--db", database_url, "--storage", str(reg.blobs.root),
            "--key-file", str(key_file)]
    dry = CliRunner().invoke(main, [*args, "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    assert lines[-1] == "would remove 2 file(s)"
    assert sorted(lines[:-1]) == sorted([f"would remove {orphan_path}", f"would remove {stale}"])
    assert stored_files(reg) == everything
    done = CliRunner().invoke(main, args, env=env)
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[-1] == "removed 2 file(s)"
    assert stored_files(reg) == sorted([reg.blobs.path(kept.digest), fresh])
    assert reg.archive_path(actor("viewer"), f"{kept.path.name.rsplit('-', 1)[0]}@0.1.0")


def test_a_blob_collected_between_storing_and_recording_is_stored_again(
        registry: Registry, make_archive: MakeArchive) -> None:
    """The blob is written before the database lock is taken (a large archive takes time to
    verify and copy); gc running in that moment removes it as unreferenced, and the push
    writes it again once it holds the lock."""
    built = make_archive(unique("raced"))
    record = registry._record_push

    def gc_first(*args: Any) -> Any:
        assert registry.collect_garbage() == [registry.blobs.path(built.digest)]
        return record(*args)

    registry._record_push = gc_first  # type: ignore[method-assign]
    desc, created = registry.push(actor("data-scientist"), built.path)
    assert created and desc["digest"] == built.digest
    _, path = registry.archive_path(actor("viewer"), f"{desc['name']}@0.1.0")
    assert path == registry.blobs.path(built.digest) and stored_files(registry) == [path]
