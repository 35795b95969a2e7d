"""`baton serve` starts each local model's worker template before it imports the engine
(docs/protocol.md#worker-templates): the model's imports, the longest part of a start,
run beside the engine's own. The bundle is verified before its template starts (the
template runs the model's code), and the engine's pool forks from that same template.

The probe is `baton serve` with ``subprocess.Popen`` recording, at each start of a
template, which of the engine's modules were imported by then.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import (
    CHAOS_CONTRACT,
    free_port,
    run_baton,
    stop_process,
    tamper,
    write_bundle,
)

#: Modules that only the engine imports (server stack, request path, numeric code).
ENGINE_MODULES = ("baton.cli.serve_engine", "baton.serving.service", "baton.server.app",
                  "baton.runtime.pool", "uvicorn", "starlette", "numpy")

PROBE = f'''
import json, subprocess, sys

record = sys.argv.pop(1)


class Recording(subprocess.Popen):
    def __init__(self, args, *rest, **kw):
        imported = [m for m in {ENGINE_MODULES!r} if m in sys.modules]
        super().__init__(args, *rest, **kw)
        if "--template" in [str(a) for a in args]:
            with open(record, "a") as f:
                f.write(json.dumps({{"pid": self.pid, "imported": imported}}) + "\\n")


subprocess.Popen = Recording
from baton.cli.main import main

main(args=sys.argv[1:], prog_name="baton")
'''


def probe(record: Path, *args: str | Path, env: dict[str, str]) -> subprocess.Popen[str]:
    log = record.with_suffix(".log").open("w")  # noqa: SIM115  (the child holds it)
    with log:
        return subprocess.Popen([sys.executable, "-c", PROBE, str(record), "serve",
                                 *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                                stderr=log, text=True, start_new_session=True)


def test_the_template_starts_before_the_engine_is_imported_and_forks_its_workers(
        chaos_bundle: Path, baton_env: dict[str, str], tmp_path: Path) -> None:
    assert run_baton("check", chaos_bundle, "--report", tmp_path / "r.json",
                     "--iterations", "1", env=baton_env).returncode == 0  # its environment
    record, port = tmp_path / "templates.jsonl", free_port()
    proc = probe(record, chaos_bundle, "--port", str(port), env=baton_env)
    try:
        deadline = time.monotonic() + 120
        model = None
        while model is None or not model["parameters"]["ready"]:
            assert proc.poll() is None, record.with_suffix(".log").read_text()
            assert time.monotonic() < deadline, "not ready in 120 s"
            time.sleep(0.1)
            try:
                model = httpx.get(f"http://127.0.0.1:{port}/v2/models/chaos").json()
            except httpx.TransportError:
                continue
        template = model["parameters"]["template"]
        assert template["state"] == "ready" and template["forked"] == 1
        [worker] = model["parameters"]["workers"]
        assert worker["state"] == "ready"
    finally:
        stop_process(proc)
    starts = [json.loads(line) for line in record.read_text().splitlines()]
    assert [s["imported"] for s in starts] == [[]], (
        "one template, started before any engine module was imported")
    assert starts[0]["pid"] == template["pid"]


def test_a_tampered_archive_starts_no_template(chaos_bundle: Path, baton_env: dict[str, str],
                                              tmp_path: Path) -> None:
    """Verification comes first: the archive is refused and none of its code ran."""
    assert run_baton("build", chaos_bundle, "-o", tmp_path, env=baton_env).returncode == 0
    [archive] = tmp_path.glob("*.baton")
    tamper(archive, b"x * 2", b"x * 3")
    record = tmp_path / "templates.jsonl"
    proc = probe(record, archive, "--port", str(free_port()), env=baton_env)
    assert proc.wait(120) == 2
    stderr = record.with_suffix(".log").read_text()
    assert "DIGEST_MISMATCH" in stderr and "model/predict.py" in stderr
    assert not record.exists()


def test_an_engine_that_fails_to_start_leaves_no_template_behind(
        baton_env: dict[str, str], tmp_path: Path) -> None:
    """The template started ahead is killed when the engine fails after it (here: a canary
    that is nowhere), even while it is still importing the model (here: for a minute)."""
    bundle = write_bundle(tmp_path / "slow", name="slow", contract=CHAOS_CONTRACT,
                          code="import time\ntime.sleep(60)\n\n\nclass Model:\n"
                               "    def predict(self, inputs):\n        return inputs\n")
    record = tmp_path / "templates.jsonl"
    proc = probe(record, bundle, "--canary", f"{tmp_path / 'nowhere'}=10", "--port",
                 str(free_port()), env=baton_env)
    assert proc.wait(120) != 0
    assert "BUNDLE_NOT_FOUND" in record.with_suffix(".log").read_text()
    [start] = [json.loads(line) for line in record.read_text().splitlines()]
    assert not psutil.pid_exists(start["pid"]), "the template outlived its engine"
