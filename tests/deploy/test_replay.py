"""`baton replay`: dead letters go back to the input, each once, with their original bytes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_baton


def letter(key: str, stage: str, payload: str) -> str:
    return json.dumps({"key": key, "stage": stage, "code": "X", "message": "m",
                       "payload": payload, "payload_encoding": "utf-8", "model": "m",
                       "version": "1", "digest": "sha256:0", "time": 0})


def test_replay_sends_payloads_back_once_and_filters_by_stage(
        tmp_path: Path, baton_env: dict[str, str]) -> None:
    dead = tmp_path / "dead.jsonl"
    dead.write_text("\n".join([letter("a", "contract", '{"x": 500}'),
                               letter("b", "decode", "{broken"),
                               letter("c", "contract", '{"x": 700}'), "not a dead letter"])
                    + "\n")
    target = tmp_path / "in.jsonl"
    r = run_baton("replay", "--dead-letter", f"file://{dead}", "--to", f"file://{target}",
                  "--stage", "contract", env=baton_env)
    assert r.returncode == 0, r.stderr
    assert "replayed 2 dead letter(s)" in r.stdout and "skipped 2" in r.stdout
    assert target.read_text().splitlines() == ['{"x": 500}', '{"x": 700}']
    again = run_baton("replay", "--dead-letter", f"file://{dead}", "--to", f"file://{target}",
                      env=baton_env)
    assert "replayed 0" in again.stdout  # acknowledged letters are not replayed twice
    assert len(target.read_text().splitlines()) == 2


def test_replay_from_a_missing_source_is_a_clear_error(tmp_path: Path,
                                                       baton_env: dict[str, str]) -> None:
    r = run_baton("replay", "--dead-letter", f"file://{tmp_path}/nope.jsonl", "--to",
                  f"file://{tmp_path}/in.jsonl", env=baton_env)
    assert r.returncode == 8 and "STREAM_ERROR" in r.stderr and "nope.jsonl" in r.stderr
