"""The image's parts that need no build: entrypoint arguments, variables, configuration."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from baton.errors import BatonError
from baton.image.base import base_tag, debian_mirror
from baton.image.build import build_image, default_tag
from baton.image.containerfile import Layers, render
from baton.image.entrypoint import baton_args, serve_variables
from baton.image.layout import BUNDLE as IMAGE_BUNDLE
from baton.image.podman import CONTAINERS_CONF, podman_env
from baton.settings import Settings

from .conftest import BUNDLE, ROOT


@pytest.mark.parametrize(("given", "expected"), [
    (["serve"], ["serve", str(IMAGE_BUNDLE)]),
    (["serve", "--workers", "2"], ["serve", "--workers", "2", str(IMAGE_BUNDLE)]),
    (["serve", "/srv/other"], ["serve", "/srv/other"]),
    (["serve", "--registry", "https://registry:8443"], ["serve", "--registry",
                                                        "https://registry:8443"]),
    (["check", "--iterations", "5"], ["check", "--iterations", "5", str(IMAGE_BUNDLE)]),
    (["version"], ["version"]),
])
def test_serve_and_check_get_the_images_bundle_unless_given_another(
        given: list[str], expected: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATON_REGISTRY", raising=False)
    assert baton_args(given) == expected


def test_the_images_commands_still_answer_dash_h_after_their_arguments_are_read() -> None:
    """The entrypoint reads serve's arguments, then runs baton in the same process."""
    from click.testing import CliRunner

    from baton.cli.main import main

    for command in ("serve", "check"):
        baton_args([command, "-h"])
        shown = CliRunner().invoke(main, [command, "-h"], prog_name="baton")
        assert shown.exit_code == 0, shown.output
        assert f"Usage: baton {command}" in shown.output


def test_a_registry_given_by_variable_replaces_the_images_bundle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_REGISTRY", "https://registry:8443")
    assert baton_args(["serve"]) == ["serve"]


def test_every_serve_option_has_a_variable_and_docs_image_lists_it() -> None:
    rows = serve_variables()
    variables = {variable for _, variable, _ in rows}
    assert {"BATON_WORKERS", "BATON_PORT", "BATON_REGISTRY", "BATON_SERVE_CANARY",
            "BATON_SERVE_STAGE", "BATON_SERVE_MAX_BATCH"} <= variables
    assert len(variables) == len(rows)
    page = (ROOT / "docs" / "image.md").read_text()
    missing = [v for v in sorted(variables) if f"`{v}`" not in page]
    assert not missing, f"docs/image.md lacks {missing}"


def test_batons_containers_conf_applies_unless_the_operator_set_one() -> None:
    assert podman_env({})["CONTAINERS_CONF"] == str(CONTAINERS_CONF)
    assert podman_env({"CONTAINERS_CONF": "/etc/mine.conf"})["CONTAINERS_CONF"] == \
        "/etc/mine.conf"
    text = CONTAINERS_CONF.read_text()
    assert 'runtime = "runc"' in text and 'cgroup_manager = "cgroupfs"' in text
    assert '"nofile=1024:1024"' in text


def test_the_mirror_is_read_from_apts_sources_in_either_format(tmp_path: Path) -> None:
    (tmp_path / "a.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "\nTypes: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert debian_mirror((tmp_path,)) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert debian_mirror((one_line,)) == "http://other.example/debian"
    with pytest.raises(BatonError) as err:
        debian_mirror((tmp_path / "none",))
    assert err.value.code == "DEBIAN_MIRROR_MISSING"


def test_the_base_tag_changes_with_each_input() -> None:
    tags = {base_tag("http://a/debian", "amd64"), base_tag("http://b/debian", "amd64"),
            base_tag("http://a/debian", "arm64")}
    assert len(tags) == 3
    assert all(re.fullmatch(r"localhost/baton/base:bookworm-[0-9a-f]{16}", t) for t in tags)


def test_layers_go_from_least_to_most_often_changed() -> None:
    text = render(Layers("localhost/baton/base:x", "E1", "0.1.0", "3.11", "M1",
                         {"io.baton.bundle.digest": "sha256:ab"}))
    order = [text.index(s) for s in ("FROM ", ": engine E1", ": model M1", "COPY bundle",
                                      'io.baton.bundle.digest="sha256:ab"')]
    assert order == sorted(order)
    assert "HEALTHCHECK" in text and "USER 10001:0" in text


def test_a_bundle_for_another_python_is_refused_before_anything_is_built(
        tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    toml = bundle / "baton.toml"
    toml.write_text(toml.read_text().replace('python = "3.11"', 'python = "3.12"'))
    with pytest.raises(BatonError) as err:
        build_image(str(bundle), Settings(home=tmp_path / "home"))
    assert err.value.code == "PYTHON_MISMATCH"
    assert not (tmp_path / "home" / "image").exists()


def test_a_bundle_asking_for_the_sandbox_is_refused_before_anything_is_built(
        tmp_path: Path) -> None:
    """bubblewrap cannot nest in the image's capability-less container: refused, not an
    image whose model never starts."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    toml = bundle / "baton.toml"
    toml.write_text(toml.read_text() + '\n[isolation]\nlevel = "sandbox"\n')
    with pytest.raises(BatonError, match="asks for isolation level 'sandbox'") as err:
        build_image(str(bundle), Settings(home=tmp_path / "home"))
    assert err.value.code == "SANDBOX_UNAVAILABLE"
    assert not (tmp_path / "home" / "image").exists()


def test_a_missing_bundle_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BatonError) as err:
        build_image(str(tmp_path / "nothing"), Settings(home=tmp_path / "home"))
    assert err.value.code == "BUNDLE_NOT_FOUND"


def test_the_default_name_is_the_bundles() -> None:
    from baton.bundle.loader import open_bundle

    bundle = open_bundle(BUNDLE, Path("/nonexistent"))
    assert default_tag(bundle) == "localhost/baton/penguins:1.0.0"


def test_offline_without_a_wheelhouse_is_refused_before_any_download(tmp_path: Path) -> None:
    from baton.bundle.manifest import EnvironmentSpec
    from baton.image.wheelhouse import model_wheelhouse

    with pytest.raises(BatonError) as err:
        model_wheelhouse(tmp_path, EnvironmentSpec("3.11", ("six==1.16.0",)), offline=True)
    assert err.value.code == "WHEELHOUSE_REQUIRED"
    assert [p.name for p in tmp_path.iterdir()] == []  # no partial wheelhouse left
