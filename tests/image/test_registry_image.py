"""``baton image NAME@VERSION``: an image built from what a registry signed, then run as a
registry-following engine that switches versions as they are promoted — locked down as in
test_image.py (read-only root, no capabilities, a non-root user).

The registry is a real ``baton registry serve`` on the host's loopback; the container uses
the host's network to reach it (``--network host``), as a pod reaches a registry Service.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from baton.image.build import BuiltImage, build_image
from baton.settings import Settings
from tests.conftest import free_port
from tests.serving.test_registry_serving import Registry, running_registry, scorer

from .conftest import assert_running, labels, podman, remove_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
LOCKED_DOWN = ("--read-only", "--cap-drop", "all", "--security-opt", "no-new-privileges")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory,
             baton_env: dict[str, str]) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry-home"), baton_env) as reg:
        yield reg


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scorers")
    return {"1.0.0": scorer(root, "1.0.0", 2.0), "2.0.0": scorer(root, "2.0.0", 3.0)}


@pytest.fixture(scope="module")
def from_registry(registry: Registry, archives: dict[str, Path], settings: Settings,
                  source: Path) -> Iterator[BuiltImage]:
    """The image of scorer@1.0.0 as the registry signed it for production."""
    registry.release(archives["1.0.0"], "1.0.0")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BATON_TOKEN", registry.tokens["eve"])
        image = build_image("scorer@1.0.0", Settings(home=settings.home,
                                                     registry_key=registry.key),
                            registry=registry.url, source=source,
                            tag="localhost/baton-test/scorer:registry")
    yield image
    remove_image(image.image_id)


def answer(port: int, token: str) -> str | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/scorer/predict", data=b'[{"x": 1.0}]',
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return str(json.loads(reply.read())["predictions"][0]["v"])
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket: unclosed, a ResourceWarning later
        return None
    except (OSError, KeyError):
        return None


def wait_for_version(port: int, token: str, version: str, container: str,
                     deadline_s: float = 240) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if answer(port, token) == version:
            return
        assert_running(container)
        time.sleep(0.2)
    logs = podman("logs", "--tail", "40", container, check=False)
    raise AssertionError(f"not serving {version} within {deadline_s}s: {logs.stderr}")


def test_an_image_built_from_the_registry_holds_the_digest_it_signed(
        from_registry: BuiltImage, registry: Registry) -> None:
    signed = registry.admin.show("scorer@1.0.0")["digest"]
    found = labels(from_registry.tag)
    assert found["io.baton.bundle.digest"] == signed == from_registry.bundle.digest
    assert found["io.baton.bundle.version"] == "1.0.0"
    assert found["io.baton.image.source"] == f"registry:{registry.url} scorer@1.0.0"


def test_a_registry_following_container_switches_versions_as_they_are_promoted(
        from_registry: BuiltImage, registry: Registry, archives: dict[str, Path]) -> None:
    port = free_port()
    follow = {"BATON_REGISTRY": registry.url, "BATON_TOKEN": registry.tokens["eve"],
              "BATON_REGISTRY_KEY": registry.key, "BATON_PORT": str(port),
              "BATON_SERVE_POLL": "0.5", "BATON_HOST": "127.0.0.1"}
    cid = podman("run", "--detach", *LOCKED_DOWN, "--user", "10001:0", "--network", "host",
                 *[a for k, v in follow.items() for a in ("--env", f"{k}={v}")],
                 from_registry.tag).stdout.strip()
    caller = registry.tokens["dana"]  # an engine following a registry takes its tokens
    try:
        wait_for_version(port, caller, "1.0.0", cid)
        refused = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/scorer/predict", data=b'[{"x": 1.0}]',
            headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(refused, timeout=5)
        err.value.close()
        assert err.value.code == 401  # no token: the registry's users only
        registry.release(archives["2.0.0"], "2.0.0")
        wait_for_version(port, caller, "2.0.0", cid)
        registry.client("olga").promote("scorer@1.0.0", "production", "rollback")
        wait_for_version(port, caller, "1.0.0", cid)
    finally:
        podman("rm", "--force", "--time", "5", cid, check=False)
