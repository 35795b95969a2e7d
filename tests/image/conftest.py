"""One image of the example bundle, built once per module with real podman.

The base image and the wheelhouses are cached across runs (a base is keyed by its inputs,
a wheelhouse by its pins) in ``build/image-home`` (or ``$BATON_TEST_IMAGE_HOME``), as an
operator's ``BATON_HOME`` keeps them; each run's images get their own tag and are removed
by ID at the end. A missing podman or debootstrap fails the setup with the command that
installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.image.build import BuiltImage, build_image
from baton.image.podman import podman_env
from baton.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "examples" / "penguins" / "bundle"
HOME = Path(os.environ.get("BATON_TEST_IMAGE_HOME") or ROOT / "build" / "image-home")


def podman(*args: str, check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(),
                          stdin=subprocess.DEVNULL, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def settings() -> Settings:
    for tool in ("podman", "buildah", "runc", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/ensure-packages.sh "
                        f"(apt-get install -y podman buildah runc debootstrap)")
    return Settings(home=HOME)


@pytest.fixture(scope="module")
def tag() -> str:
    return f"localhost/baton-test/penguins:{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Baton's checkout, frozen for the module: an edit elsewhere in the working tree while
    the tests run must not change the engine layer between a build and its rebuild."""
    root = tmp_path_factory.mktemp("baton-source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, root / name)
    shutil.copytree(ROOT / "src" / "baton", root / "src" / "baton",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def built(settings: Settings, tag: str, source: Path) -> Iterator[BuiltImage]:
    image = build_image(str(BUNDLE), settings, tag=tag, source=source)
    yield image
    remove_image(image.image_id)


def remove_image(image_id: str) -> None:
    """Remove one image this run built, by ID (its layers stay while others use them)."""
    podman("rmi", "--force", image_id, check=False)


def assert_running(container: str) -> None:
    """Fail with the container's logs if it has stopped (a wait need not run on)."""
    state = podman("inspect", "--format", "{{.State.Running}}", container, check=False)
    if state.stdout.strip() != "true":
        logs = podman("logs", container, check=False)
        raise AssertionError(f"the container stopped: {logs.stdout}{logs.stderr}")


def labels(ref: str) -> dict[str, str]:
    config = json.loads(podman("image", "inspect", ref).stdout)[0]
    return dict(config["Labels"] or {})
