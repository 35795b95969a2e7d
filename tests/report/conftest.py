"""The handoff report of the example bundle, written once per session by the real
``baton report`` (which runs the real ``baton check``), and a headless Chromium to open it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.conftest import EXAMPLE, run_baton


class Written(NamedTuple):
    folder: Path
    data: dict[str, Any]
    stdout: str


@pytest.fixture(scope="session")
def example_report(baton_env: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Written:
    folder = tmp_path_factory.mktemp("handoff") / "out"
    r = run_baton("report", EXAMPLE, "--output", folder, "--seconds", "0.2", env=baton_env,
                  timeout=900)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return Written(folder, json.loads((folder / "report.json").read_text()), r.stdout)


# The dashboard's headless Chromium (package scope there, so this package gets its own),
# its real registry and engine, its tab and screenshots (tests/dashboard/).
from tests.dashboard.conftest import (  # noqa: E402,F401
    browser,
    expected_console,
    page,
    registry_engine,
    screenshot_dir,
    shot,
)
