"""Opening a bundle from a folder, or from an archive extracted once per digest."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.bundle.archive import ArchiveLimits, ArchiveTooLarge, build_archive, bundle_digest
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


def test_an_altered_extracted_copy_is_extracted_again(make_bundle: MakeBundle,
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    built = build_archive(make_bundle(), tmp_path / "dist")
    bundles = tmp_path / "bundles"
    extracted = open_bundle(built.path, bundles).path
    genuine = (extracted / "model" / "predict.py").read_bytes()
    (extracted / "model" / "predict.py").chmod(0o644)
    (extracted / "model" / "predict.py").write_text("# changed on the server\n")
    (extracted / "model" / "predict.py").chmod(0o444)
    assert open_bundle(built.path, bundles).path == extracted
    assert (extracted / "model" / "predict.py").read_bytes() == genuine
    assert "model/predict.py: content differs" in caplog.text
    assert [p.name for p in bundles.iterdir()] == [extracted.name]


def test_the_extracted_copy_is_read_only(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle(files={"bin/run.sh": b"#!/bin/sh\n"})
    (bundle / "bin" / "run.sh").chmod(0o755)
    extracted = open_bundle(build_archive(bundle, tmp_path / "dist").path,
                            tmp_path / "bundles").path
    modes = {p.relative_to(extracted).as_posix(): p.stat().st_mode & 0o777
             for p in extracted.rglob("*")}
    assert modes["bin/run.sh"] == 0o555 and modes["baton.toml"] == 0o444
    assert modes["bin"] == modes["model"] == 0o555
    assert extracted.stat().st_mode & 0o777 == 0o555
    assert bundle_digest(extracted) == bundle_digest(bundle)


def test_an_archive_past_the_limits_is_refused_and_nothing_is_cached(
        make_bundle: MakeBundle, tmp_path: Path) -> None:
    built = build_archive(make_bundle(), tmp_path / "dist")
    bundles = tmp_path / "bundles"
    with pytest.raises(ArchiveTooLarge) as info:
        open_bundle(built.path, bundles, limits=ArchiveLimits(max_file_bytes=1000))
    assert info.value.details["limit"] == "max_file_bytes"
    assert list(bundles.iterdir()) == []
    assert open_bundle(built.path, bundles).digest == built.digest  # the defaults take it


def test_a_missing_bundle_is_named(tmp_path: Path) -> None:
    with pytest.raises(BundleError) as info:
        open_bundle(tmp_path / "nope.baton", tmp_path / "bundles")
    assert info.value.code == "BUNDLE_NOT_FOUND"
    assert "nope.baton" in info.value.message
