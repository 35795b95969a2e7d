"""Opening a bundle from a folder, or from an archive extracted once per digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.bundle.archive import build_archive, bundle_digest
from baton.bundle.loader import open_bundle
from baton.errors import BundleError, DigestMismatchError

from .conftest import MakeBundle


def test_a_folder_is_read_in_place(make_bundle: MakeBundle, tmp_path: Path) -> None:
    folder = make_bundle()
    bundle = open_bundle(folder, tmp_path / "home" / "bundles")
    assert bundle.path == folder.resolve()
    assert (bundle.name, bundle.version) == ("demo", "0.1.0")
    assert bundle.digest == bundle_digest(folder)
    assert not (tmp_path / "home").exists()


def test_a_folder_with_another_digest_is_refused(make_bundle: MakeBundle,
                                                 tmp_path: Path) -> None:
    folder = make_bundle()
    expected = bundle_digest(folder)
    (folder / "model" / "predict.py").write_text("# edited after review\n")
    with pytest.raises(DigestMismatchError) as info:
        open_bundle(folder, tmp_path / "bundles", expected_digest=expected)
    assert info.value.details == {"expected": expected, "actual": bundle_digest(folder)}


def test_an_archive_is_extracted_once_per_digest(make_bundle: MakeBundle,
                                                 tmp_path: Path) -> None:
    built = build_archive(make_bundle(), tmp_path / "dist")
    bundles = tmp_path / "home" / "bundles"
    first = open_bundle(built.path, bundles)
    hex_digest = built.digest.split(":", 1)[1]
    assert first.path == bundles / hex_digest
    assert first.digest == built.digest
    assert first.manifest == built.manifest
    assert bundle_digest(first.path) == built.digest
    inode = (first.path / "model" / "predict.py").stat().st_ino

    # A second archive with the same content, built elsewhere, reuses the same folder.
    again = build_archive(make_bundle("copy"), tmp_path / "dist2")
    second = open_bundle(again.path, bundles)
    assert second.path == first.path
    assert (second.path / "model" / "predict.py").stat().st_ino == inode
    assert [p.name for p in bundles.iterdir()] == [hex_digest]


def test_an_archive_with_another_digest_is_refused_before_extraction(
        make_bundle: MakeBundle, tmp_path: Path) -> None:
    built = build_archive(make_bundle(), tmp_path / "dist")
    bundles = tmp_path / "bundles"
    wrong = "sha256:" + "f" * 64
    with pytest.raises(DigestMismatchError) as info:
        open_bundle(built.path, bundles, expected_digest=wrong)
    assert info.value.details == {"expected": wrong, "actual": built.digest}
    assert not bundles.exists() or list(bundles.iterdir()) == []


def test_an_altered_extracted_copy_is_refused(make_bundle: MakeBundle, tmp_path: Path) -> None:
    built = build_archive(make_bundle(), tmp_path / "dist")
    bundles = tmp_path / "bundles"
    extracted = open_bundle(built.path, bundles).path
    (extracted / "model" / "predict.py").write_text("# changed on the server\n")
    with pytest.raises(DigestMismatchError, match="was altered") as info:
        open_bundle(built.path, bundles)
    assert info.value.details == {"path": str(extracted)}


def test_a_missing_bundle_is_named(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as info:
        open_bundle(tmp_path / "nope.baton", tmp_path / "bundles")
    assert info.value.code == "BUNDLE_NOT_FOUND"
    assert "nope.baton" in info.value.message
