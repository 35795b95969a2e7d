"""The registry validates pushed code in the sandbox: a data scientist's model never sees
the registry's signing key (with it, they could sign their own promotions)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from baton.bundle.archive import build_archive
from baton.bundle.scaffold import scaffold
from baton.registry.app import subprocess_check_runner

from .conftest import MakeRegistry, actor, database_key, unique

READS_THE_KEY = '''
import os as _os

if _os.path.exists({key!r}):
    raise RuntimeError("the model could read the registry's signing key")
'''


def key_reader(tmp_path: Path, name: str, key: Path) -> Path:
    folder = scaffold(tmp_path / secrets.token_hex(4), name)
    with (folder / "model" / "predict.py").open("a") as f:
        f.write(READS_THE_KEY.format(key=str(key)))
    return build_archive(folder, tmp_path / "archives" / secrets.token_hex(4)).path


@pytest.mark.parametrize("isolation", ["sandbox", "process"])
def test_pushed_code_is_validated_where_the_signing_key_cannot_be_seen(
        make_registry: MakeRegistry, real_check: Any, baton_home: Path, tmp_path: Path,
        database_url: str, tmp_path_factory: pytest.TempPathFactory, isolation: str) -> None:
    key_file, _ = database_key(database_url, tmp_path_factory)
    check = real_check if isolation == "sandbox" else subprocess_check_runner(
        baton_home, isolation="process")  # what an operator opting out gets
    reg, name, op = make_registry(check=check), unique("key-reader"), actor("operator")
    reg.push(actor("data-scientist"), key_reader(tmp_path, name, key_file))
    result = reg.validate(op, name)
    report = result["check_report"]
    if isolation == "sandbox":
        assert result["stage"] == "validated", report
    else:  # the same code, unsandboxed, reads the key: the check shows it
        assert result["stage"] == "draft"
        assert report["failed_stage"] == "import"
        assert "could read the registry's signing key" in str(report["error"])
