"""Tamper detection: content altered in the blob store is never served, and the client
never writes what it cannot verify."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from baton.bundle.archive import ArchiveLimits, ArchiveTooLarge, verify_archive
from baton.errors import BatonError
from baton.registry.blobs import BlobStore
from baton.registry.client import RegistryClient, RegistryError
from baton.registry.service import Registry
from tests.conftest import tamper

from .conftest import ApiServer, MakeArchive, actor, assert_error, unique


def rewrite_one_file(archive: Path) -> None:
    """Rebuild the tar with model/predict.py changed and the index left as it was."""
    tamper(archive, b"self.scale = 1000.0", b"self.scale = 10.0")


def flip_bytes(archive: Path) -> None:
    data = bytearray(archive.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))


def remove(archive: Path) -> None:
    archive.unlink()


TAMPERING = [rewrite_one_file, flip_bytes, remove]


def pushed(registry: Registry, make_archive: MakeArchive) -> tuple[str, str, Path]:
    name = unique("blob")
    built = make_archive(name)
    registry.push(actor("data-scientist"), built.path)
    return name, built.digest, registry.blobs.path(built.digest)


@pytest.mark.parametrize("tamper", TAMPERING)
def test_an_altered_blob_is_refused_by_the_service(
        registry: Registry, make_archive: MakeArchive, tamper: Callable[[Path], None]) -> None:
    name, digest, blob = pushed(registry, make_archive)
    tamper(blob)
    for call in (lambda: registry.archive_path(actor("viewer"), f"{name}@0.1.0"),
                 lambda: registry.validate(actor("operator"), name)):
        with pytest.raises(BatonError) as err:
            call()
        assert (err.value.code, err.value.http_status) == ("BLOB_CORRUPT", 500)
        assert err.value.details == {"digest": digest}
    assert registry.show(actor("viewer"), name)["stage"] == "draft"


@pytest.mark.parametrize("tamper", TAMPERING)
def test_an_altered_blob_is_not_served_and_the_client_writes_nothing(
        registry: Registry, make_archive: MakeArchive, serve_api: Callable[..., ApiServer],
        tmp_path: Path, tamper: Callable[[Path], None]) -> None:
    name, digest, blob = pushed(registry, make_archive)
    server = serve_api(registry)
    token = registry.bootstrap_admin(unique("admin"))
    tamper(blob)

    resp = server.client(token).get(f"/bundles/{name}/0.1.0/archive")
    assert assert_error(resp, 500, "BLOB_CORRUPT")["details"] == {"digest": digest}
    client = RegistryClient(server.url, token)
    dest = tmp_path / "pulled"
    try:
        for ref in (f"{name}@0.1.0", f"{name}@{digest}"):
            with pytest.raises(RegistryError) as err:
                client.pull(ref, dest)
            assert (err.value.code, err.value.http_status) == ("BLOB_CORRUPT", 500)
    finally:
        client.close()
    assert list(dest.iterdir()) == []  # neither the file nor a partial download


def test_pulls_are_verified_and_a_wrong_digest_fails(
        registry: Registry, make_archive: MakeArchive, serve_api: Callable[..., ApiServer],
        tmp_path: Path) -> None:
    name, digest, _ = pushed(registry, make_archive)
    server = serve_api(registry)
    client = RegistryClient(server.url, registry.bootstrap_admin(unique("admin")))
    try:
        path, got = client.pull(f"{name}@0.1.0", tmp_path / "a")
        assert got == digest and verify_archive(path, digest) == digest
        assert path.name == f"{name}-0.1.0.baton"
        assert path.stat().st_mode & 0o777 == 0o644  # readable by all, not mkstemp's 0600
        path, got = client.pull(f"{name}@{digest}", tmp_path / "b")
        assert got == digest and verify_archive(path) == digest

        for ref in (f"{name}@sha256:{'0' * 64}", f"{unique('other')}@{digest}"):
            with pytest.raises(RegistryError) as err:
                client.pull(ref, tmp_path / "c")
            assert (err.value.code, err.value.http_status, err.value.exit_code) == (
                "BUNDLE_NOT_FOUND", 404, 2)
        assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []
    finally:
        client.close()


def test_the_client_refuses_an_archive_that_does_not_match_its_digest(
        registry: Registry, make_archive: MakeArchive, tmp_path: Path) -> None:
    """A registry (or a proxy) that sends other bytes than the digest it announced."""
    name, digest, blob = pushed(registry, make_archive)
    other = make_archive(name, variant="substituted")
    info = registry.show(actor("viewer"), f"{name}@0.1.0")

    def lying_registry(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/archive"):
            return httpx.Response(200, content=other.path.read_bytes())
        return httpx.Response(200, json=info)

    client = RegistryClient("http://registry.invalid", "token")
    client.close()
    client.http = httpx.Client(base_url="http://registry.invalid/api/v1",
                               transport=httpx.MockTransport(lying_registry))
    try:
        for ref in (f"{name}@0.1.0", f"{name}@{digest}"):
            with pytest.raises(BatonError) as err:
                client.pull(ref, tmp_path / "out")
            assert err.value.code == "DIGEST_MISMATCH"
            assert err.value.details == {"expected": digest, "actual": other.digest}
    finally:
        client.close()
    assert list((tmp_path / "out").iterdir()) == []
    assert blob.exists()


# -- The store itself: limits, deletion, garbage collection ---------------------------------

def stored(store: BlobStore, make_archive: MakeArchive, name: str) -> str:
    digest, _ = store.put(make_archive(name).path)
    return digest


def test_put_holds_archives_to_the_store_limits_and_keeps_nothing_refused(
        make_archive: MakeArchive, tmp_path: Path) -> None:
    built = make_archive("limited")
    store = BlobStore(tmp_path / "blobs", ArchiveLimits(max_files=2))
    with pytest.raises(ArchiveTooLarge) as err:
        store.put(built.path)
    assert (err.value.code, err.value.http_status) == ("ARCHIVE_TOO_LARGE", 413)
    assert err.value.details["setting"] == "BATON_ARCHIVE_MAX_FILES"
    assert not (tmp_path / "blobs").exists() or list((tmp_path / "blobs").rglob("*")) == []


def test_a_stored_blob_is_read_back_within_the_limits(make_archive: MakeArchive,
                                                      tmp_path: Path) -> None:
    digest = stored(BlobStore(tmp_path / "blobs"), make_archive, "readback")
    with pytest.raises(ArchiveTooLarge) as err:  # not BLOB_CORRUPT: nothing was altered
        BlobStore(tmp_path / "blobs", ArchiveLimits(max_file_bytes=10)).open_verified(digest)
    assert err.value.details["limit"] == "max_file_bytes"


def test_delete_removes_one_blob(make_archive: MakeArchive, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    keep, gone = stored(store, make_archive, "keep"), stored(store, make_archive, "gone")
    assert store.delete(gone) is True
    assert store.delete(gone) is False
    assert not store.path(gone).exists() and store.open_verified(keep) == store.path(keep)
    with pytest.raises(BatonError) as err:
        store.delete("sha256:../../etc")
    assert err.value.code == "INVALID_DIGEST"


def test_garbage_collection_removes_unreferenced_blobs_and_stale_uploads(
        make_archive: MakeArchive, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    kept, orphan_a, orphan_b = (stored(store, make_archive, n) for n in ("kept", "oa", "ob"))
    shard = store.path(kept).parent
    stale, fresh = shard / ".put-stale", shard / ".put-fresh"
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload in progress")
    an_hour_ago = time.time() - 3601
    os.utime(stale, (an_hour_ago, an_hour_ago))
    foreign = tmp_path / "blobs" / "README"
    foreign.write_text("not ours")
    expected = sorted([store.path(orphan_a), store.path(orphan_b), stale])

    assert sorted(store.collect_garbage({kept}, dry_run=True)) == expected
    assert all(p.exists() for p in expected)
    assert sorted(store.collect_garbage({kept})) == expected
    assert not any(p.exists() for p in expected)
    assert fresh.exists() and foreign.exists()
    assert store.open_verified(kept) == store.path(kept)
    assert store.collect_garbage({kept}) == []
    assert store.collect_garbage({kept}, grace_seconds=0) == [fresh]
    assert BlobStore(tmp_path / "nothing-yet").collect_garbage(set()) == []
