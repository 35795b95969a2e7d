"""Building isolated environments with uv: exact pins, cached by lock, clean failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.bundle.manifest import EnvironmentSpec
from baton.env.builder import EnvBuilder, lock_key
from baton.errors import EnvironmentBuildError

from .conftest import PYTHON, run_python


def _leftovers(envs_dir: Path) -> list[str]:
    """What a failed build left in envs_dir, apart from its lock files."""
    names = [p.name for p in envs_dir.iterdir()] if envs_dir.exists() else []
    return sorted(n for n in names if not (n.startswith(".") and n.endswith(".lock")))


def test_lock_key_ignores_order_case_and_spacing() -> None:
    a = EnvironmentSpec("3.11", ("six==1.16.0", "idna==3.10", "typing_extensions==4.12.2"))
    b = EnvironmentSpec("3.11", ("IDNA == 3.10", "typing-extensions==4.12.2", "Six==1.16.0"))
    assert lock_key(a) == lock_key(b)


@pytest.mark.parametrize("other", [
    EnvironmentSpec("3.12", ("six==1.16.0",)),
    EnvironmentSpec("3.11", ("six==1.15.0",)),
    EnvironmentSpec("3.11", ("six==1.16.0", "idna==3.10")),
    EnvironmentSpec("3.11", ()),
])
def test_lock_key_differs_for_a_different_lock(other: EnvironmentSpec) -> None:
    assert lock_key(other) != lock_key(EnvironmentSpec("3.11", ("six==1.16.0",)))


def test_ensure_builds_exactly_the_pinned_packages(builder: EnvBuilder, envs_dir: Path) -> None:
    env = builder.ensure(EnvironmentSpec(PYTHON, ("six==1.16.0",)))
    assert env.cached is False
    assert env.path == envs_dir / lock_key(EnvironmentSpec(PYTHON, ("six==1.16.0",)))
    assert env.python.is_file()

    six = run_python(env, "import six; print(six.__version__)")
    assert six.returncode == 0, six.stderr
    assert six.stdout.strip() == "1.16.0"

    listed = run_python(env, "import importlib.metadata as m; "
                             "print(sorted(d.metadata['Name'].lower() for d in m.distributions()))")
    assert listed.stdout.strip() == "['six']"

    running = run_python(env, "import sys; print('%d.%d' % sys.version_info[:2])")
    assert running.stdout.strip() == PYTHON


def test_batons_own_dependencies_stay_out(builder: EnvBuilder) -> None:
    env = builder.ensure(EnvironmentSpec(PYTHON, ("six==1.16.0",)))
    for module in ("baton", "msgspec", "numpy", "orjson", "uvicorn", "click"):
        proc = run_python(env, f"import {module}")
        assert proc.returncode != 0, f"{module} is importable in the model's environment"
        assert f"No module named '{module}'" in proc.stderr


def test_second_ensure_comes_from_the_cache(builder: EnvBuilder, envs_dir: Path) -> None:
    spec = EnvironmentSpec(PYTHON, ("six==1.16.0",))
    first = builder.ensure(spec)
    second = EnvBuilder(envs_dir).ensure(spec)
    assert (second.cached, second.path, second.build_seconds) == (True, first.path, 0.0)
    assert run_python(second, "import six").returncode == 0


def test_a_half_built_environment_is_replaced(builder: EnvBuilder, envs_dir: Path) -> None:
    spec = EnvironmentSpec(PYTHON, ("six==1.16.0",))
    leftover = builder.path_for(spec)
    leftover.mkdir(parents=True)
    (leftover / "junk-from-a-killed-build").write_text("")
    env = builder.ensure(spec)
    assert env.cached is False and env.path == leftover
    assert not (leftover / "junk-from-a-killed-build").exists()
    assert run_python(env, "import six").returncode == 0


def test_identical_pins_share_one_environment(builder: EnvBuilder, envs_dir: Path) -> None:
    first = builder.ensure(EnvironmentSpec(PYTHON, ("six==1.16.0", "idna==3.10")))
    second = builder.ensure(EnvironmentSpec(PYTHON, ("IDNA==3.10", "six==1.16.0")))
    assert second.cached is True
    assert second.path == first.path
    assert _leftovers(envs_dir) == [first.path.name]
    assert run_python(second, "import idna, six").returncode == 0


def test_an_unresolvable_pin_is_named_and_leaves_nothing(builder: EnvBuilder,
                                                         envs_dir: Path) -> None:
    spec = EnvironmentSpec(PYTHON, ("idna==3.10", "six==999.0.0"))
    with pytest.raises(EnvironmentBuildError) as info:
        builder.ensure(spec)
    err = info.value
    assert err.code == "ENVIRONMENT_BUILD_FAILED"
    assert err.exit_code == 4
    assert err.details["stage"] == "dependency_resolution"
    assert [f["requirement"] for f in err.details["failures"]] == ["six==999.0.0"]
    assert "six==999.0.0" in err.message
    assert _leftovers(envs_dir) == []
    # A failed build is not cached: the next attempt tries again, and fails again.
    with pytest.raises(EnvironmentBuildError):
        builder.ensure(spec)


def test_conflicting_pins_fail_clearly(builder: EnvBuilder, envs_dir: Path) -> None:
    with pytest.raises(EnvironmentBuildError) as info:
        builder.ensure(EnvironmentSpec(PYTHON, ("six==1.16.0", "six==1.15.0")))
    failures = info.value.details["failures"]
    assert {f["requirement"] for f in failures} == {"six==1.16.0", "six==1.15.0"}
    assert all("six" in f["reason"] for f in failures)
    assert "six==1.16.0" in info.value.message and "six==1.15.0" in info.value.message
    assert _leftovers(envs_dir) == []


def test_an_unavailable_python_fails_clearly(builder: EnvBuilder, envs_dir: Path) -> None:
    with pytest.raises(EnvironmentBuildError) as info:
        builder.ensure(EnvironmentSpec("3.99", ("six==1.16.0",)))
    err = info.value
    assert err.details["stage"] == "interpreter"
    assert err.details["failures"][0]["requirement"] == "python 3.99"
    assert "no Python 3.99 interpreter is available" in err.message
    assert _leftovers(envs_dir) == []


def test_a_wheelhouse_installs_offline(envs_dir: Path, wheelhouse: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty uv cache: whatever gets installed can only come from the wheelhouse.
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-uv-cache"))
    builder = EnvBuilder(envs_dir, wheelhouse=wheelhouse)
    env = builder.ensure(EnvironmentSpec(PYTHON, ("six==1.16.0",)))
    assert run_python(env, "import six; print(six.__version__)").stdout.strip() == "1.16.0"

    with pytest.raises(EnvironmentBuildError) as info:
        builder.ensure(EnvironmentSpec(PYTHON, ("idna==3.10",)))
    [failure] = info.value.details["failures"]
    assert failure["requirement"] == "idna==3.10"
    assert "idna" in failure["reason"]
    assert _leftovers(envs_dir) == [env.path.name]
