"""Tamper detection: content altered in the blob store is never served, and the client
never writes what it cannot verify."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from baton.bundle.archive import verify_archive
from baton.errors import BatonError
from baton.registry.client import RegistryClient, RegistryError
from baton.registry.service import Registry

from .conftest import ApiServer, MakeArchive, actor, assert_error, unique


def rewrite_one_file(archive: Path) -> None:
    """Rebuild the tar with model/predict.py changed and the index left as it was."""
    out = io.BytesIO()
    with tarfile.open(archive, "r:gz") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "model/predict.py":
                data = data.replace(b"self.scale = 1000.0", b"self.scale = 10.0")
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    archive.write_bytes(gzip.compress(out.getvalue()))


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
