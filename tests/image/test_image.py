"""``baton image``: a real podman build of the example bundle, run as IT would run it.

One image is built per module (``built``); every test reads or runs it. Measured on the
2-core development machine under load: 416 s with the base and the wheelhouses cached and
the engine and model layers built (239 s of it the build, 102 s ``podman save``); about
3 minutes when those layers are cached too; add about 8 minutes for a cold base and 3.5 for
cold wheelhouses (docs/image.md#figures).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.bundle.loader import open_bundle
from baton.image.build import BuiltImage, build_image
from baton.image.layout import BUNDLE as IMAGE_BUNDLE
from baton.settings import Settings

from ..conftest import free_port
from .conftest import BUNDLE, assert_running, labels, podman, remove_image

# A first build under load takes minutes (base, wheelhouses, layers): past the 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SAMPLES = json.loads((BUNDLE / "samples" / "input.json").read_text())
EXPECTED = json.loads((BUNDLE / "samples" / "expected.json").read_text())
LOCKED_DOWN = ("--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges")


def v2_body(records: list[dict[str, object]]) -> dict[str, object]:
    """The samples as V2 columns: strings as BYTES, the rest as FP64 / INT64 (nulls kept)."""
    kinds = {"island": "BYTES", "sex": "BYTES", "year": "INT64"}
    return {"inputs": [{"name": name, "shape": [len(records)],
                        "datatype": kinds.get(name, "FP64"),
                        "data": [r[name] for r in records]} for name in records[0]]}


def wait_ready(port: int, container: str, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                        timeout=2) as reply:
                if reply.status == 200:
                    return
        except urllib.error.HTTPError as exc:  # 503 while the model loads
            exc.close()  # it holds the response's socket: unclosed, a ResourceWarning later
        except OSError:
            pass
        assert_running(container)
        time.sleep(0.2)
    raise AssertionError(f"not ready within {deadline_s}s: {podman('logs', container).stderr}")


@pytest.fixture(scope="module")
def serving(built: BuiltImage) -> Iterator[tuple[str, int]]:
    """The image serving, locked down: read-only root, no capabilities, a non-root user."""
    port = free_port()
    started = time.monotonic()
    cid = podman("run", "--detach", *LOCKED_DOWN, "--user", "10001:0",
                 "-p", f"127.0.0.1:{port}:8000", built.tag).stdout.strip()
    try:
        wait_ready(port, cid)
        print(f"start-up to ready: {time.monotonic() - started:.1f}s")
        yield cid, port
    finally:
        podman("rm", "--force", "--time", "5", cid, check=False)


def test_v2_infer_through_the_published_port_returns_the_models_answer(
        serving: tuple[str, int]) -> None:
    _, port = serving
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/penguins/infer",
        data=json.dumps(v2_body(SAMPLES)).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        outputs = {o["name"]: o["data"] for o in json.load(reply)["outputs"]}
    assert outputs["prediction"] == [row["prediction"] for row in EXPECTED]
    assert outputs["proba_Adelie"] == pytest.approx([r["proba_Adelie"] for r in EXPECTED],
                                                    abs=1e-6)


def test_the_engine_runs_as_a_non_root_user_on_a_read_only_root(
        serving: tuple[str, int]) -> None:
    cid, _ = serving
    assert podman("exec", cid, "id", "-u").stdout.strip() == "10001"
    denied = podman("exec", cid, "touch", f"{IMAGE_BUNDLE}/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert podman("healthcheck", "run", cid).returncode == 0


def test_the_default_user_is_not_root(built: BuiltImage) -> None:
    out = podman("run", "--rm", *LOCKED_DOWN, "--network", "none", built.tag, "id", "-u")
    assert out.stdout.strip() != "0"


def test_baton_check_inside_the_image_proves_the_samples(built: BuiltImage) -> None:
    out = podman("run", "--rm", *LOCKED_DOWN, "--network", "none", built.tag,
                 "baton", "check", "--iterations", "5", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout


def test_labels_carry_the_bundle_digest_and_the_health_check(built: BuiltImage,
                                                             settings: Settings) -> None:
    digest = open_bundle(BUNDLE, settings.bundles_dir).digest
    found = labels(built.tag)
    assert found["io.baton.bundle.digest"] == digest == built.bundle.digest
    assert found["org.opencontainers.image.version"] == "1.0.0"
    assert found["io.baton.image.source"] == "folder:bundle"
    image = json.loads(podman("image", "inspect", built.tag).stdout)[0]
    assert "baton.image.health" in " ".join(image["Healthcheck"]["Test"])
    assert image["Config"]["User"] == "10001:0"
    assert list(image["Config"]["Volumes"]) == ["/var/lib/baton"]


def test_an_unchanged_bundle_rebuilds_entirely_from_the_cache(
        built: BuiltImage, settings: Settings, source: Path) -> None:
    again = build_image(str(BUNDLE), settings, tag=built.tag, source=source)
    assert again.fully_cached, again
    assert again.image_id == built.image_id
    print(f"warm rebuild: {again.total_seconds:.1f}s (podman build {again.build_seconds:.1f}s)")


def test_a_changed_bundle_rebuilds_only_its_own_layers(
        built: BuiltImage, settings: Settings, source: Path, tmp_path: Path) -> None:
    changed = tmp_path / "bundle"
    shutil.copytree(BUNDLE, changed)
    toml = changed / "baton.toml"
    toml.write_text(toml.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    image = build_image(str(changed), settings, tag=f"{built.tag}-changed", source=source)
    try:
        assert image.cached_steps >= 3  # ENV, the engine venv, the model environment
        assert not image.fully_cached
        assert labels(image.image_id)["io.baton.bundle.version"] == "1.0.1"
        print(f"changed bundle: {image.total_seconds:.1f}s ({image.cached_steps} of "
              f"{image.steps} steps cached)")
    finally:
        remove_image(image.image_id)


def test_save_writes_an_oci_archive_that_podman_loads(built: BuiltImage,
                                                       tmp_path: Path) -> None:
    from baton.image.build import save_archive

    archive = tmp_path / "penguins.oci.tar"
    save_archive(built.tag, archive)
    listing = subprocess.run(["tar", "-tf", str(archive)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "index.json" in listing and "oci-layout" in listing
    loaded = podman("load", "--input", str(archive))
    assert "Loaded image" in loaded.stdout


def test_the_sbom_lists_every_layer_of_packages_and_validates(built: BuiltImage,
                                                              tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from baton.image.sbom import write_sbom

    target = tmp_path / "sbom.json"
    count = write_sbom(built.tag, built.labels, target)
    text = target.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(text) is None
    components = json.loads(text)["components"]
    assert len(components) == count
    where = {(c["properties"][0]["value"].split(":")[0], c["name"]) for c in components}
    assert {("engine", "baton"), ("engine", "uvicorn"), ("model", "scikit-learn"),
            ("debian", "python3.11"), ("debian", "libc6")} <= where
    sklearn = next(c for c in components if c["name"] == "scikit-learn")
    assert sklearn["purl"] == "pkg:pypi/scikit-learn@1.9.1"
