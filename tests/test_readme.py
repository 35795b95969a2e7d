"""The README's shell blocks run as written, in a fresh shell, and print what it shows.

Every ```` ```console ```` block of README.md is run, command by command, in a scratch folder
that holds the repository's ``examples/`` and ``.venv/`` (as a fresh clone after ``make
install`` does), with ``.venv/bin`` removed from PATH: only the README's own ``source
.venv/bin/activate`` puts ``baton`` and ``python`` there. A block the test cannot run (it
serves in the foreground, downloads, needs a registry) is marked in the README source with
``<!-- readme-test: skip (why) -->`` on the line before it.

A ``baton serve`` command, or one ending in ``&``, is started in the background (stopping the
server started before it) and awaited until it prints ``Baton is serving at``. The documented
ports (8000, 8765) and stream names are replaced by free ports and unique names.

What the README shows is checked against what came: a JSON answer must have the same keys,
lengths, strings and numbers (floats to 1e-6; prediction ids only in shape); a text answer
must contain every shown line except those that vary by run (timings, the table, ``…``).
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import re
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE, ROOT, free_port, stop_process

README = ROOT / "README.md"
_SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->")
#: Lines of text output that change from run to run.
_VOLATILE_LINE = re.compile(r"…|[│┃┏┡└━]|\d\.\d+ ?(?:s|ms|MB)\b|^MB\)$|\(\d+\.\d+s\)")
#: JSON fields whose values are fresh on every call (prediction ids).
_VOLATILE_KEYS = {"ids", "id", "prediction_ids"}
_READY = "Baton is serving at"


@dataclass
class Step:
    line: int  # in README.md, for the failure message
    command: str
    shown: str
    skipped: str | None  # why, when the block is marked


def _complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def readme_steps(text: str) -> list[Step]:
    steps: list[Step] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        marker = _SKIP.fullmatch(lines[i - 1].strip()) if i else None
        i += 1
        current: Step | None = None
        while i < len(lines) and not lines[i].startswith("```"):
            line = lines[i]
            if current is not None and not _complete(current.command):
                current.command += "\n" + line
            elif line.startswith("$ "):
                current = Step(i + 1, line[2:], "", marker.group(1) if marker else None)
                steps.append(current)
            elif current is not None:
                current.shown += line + "\n"
            i += 1
        i += 1
    return steps


def test_readme_has_runnable_blocks() -> None:
    steps = readme_steps(README.read_text())
    run = [s.command.split()[0] for s in steps if s.skipped is None]
    assert "source" in run and "baton" in run and "curl" in run, run
    skipped = [s for s in steps if s.skipped is not None]
    assert len(skipped) <= len(steps) / 2, "most of the README is marked as not runnable"


# -- Comparing what the README shows with what came ----------------------------------------

def _json_differences(shown: Any, real: Any, where: str = "$") -> list[str]:
    key = where.rsplit(".", 1)[-1].split("[")[0]
    if key in _VOLATILE_KEYS:
        same_shape = type(shown) is type(real) and (
            not isinstance(shown, list) or len(shown) == len(real))
        return [] if same_shape else [f"{where}: {real!r} is not like {shown!r}"]
    if isinstance(shown, dict) and isinstance(real, dict):
        out = [f"{where}: keys {sorted(real)} where the README shows {sorted(shown)}"
               ] if shown.keys() != real.keys() else []
        for k in shown.keys() & real.keys():
            out += _json_differences(shown[k], real[k], f"{where}.{k}")
        return out
    if isinstance(shown, list) and isinstance(real, list) and len(shown) == len(real):
        return [d for n, (a, b) in enumerate(zip(shown, real, strict=True))
                for d in _json_differences(a, b, f"{where}[{n}]")]
    if isinstance(shown, float) and isinstance(real, float | int):
        ok = math.isclose(shown, real, rel_tol=1e-6, abs_tol=1e-9)
        return [] if ok else [f"{where}: {real!r}, the README shows {shown!r}"]
    return [] if shown == real else [f"{where}: {real!r}, the README shows {shown!r}"]


def differences(shown: str, real: str, *, digests: bool) -> list[str]:
    if not shown.strip():
        return []
    try:
        expected = json.loads(shown)
    except ValueError:
        expected = None
    if expected is not None:
        try:
            return _json_differences(expected, json.loads(real))
        except ValueError:
            return [f"the README shows JSON, the command printed:\n{real}"]
    have = {line.strip() for line in real.splitlines()}
    return [f"missing line: {line.strip()!r}" for line in shown.splitlines()
            if line.strip() and not _VOLATILE_LINE.search(line)
            and (digests or not line.startswith("sha256:")) and line.strip() not in have]


def _same_files(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


# -- Running the steps -----------------------------------------------------------------------

class Shell:
    """Runs README commands in a scratch folder, as a user's fresh terminal would."""

    def __init__(self, work: Path, env: dict[str, str], substitutions: dict[str, str]) -> None:
        self.work, self.env, self.substitutions = work, env, substitutions
        self.prelude: list[str] = []  # `source ...` lines, as an open terminal keeps them
        self.server: tuple[subprocess.Popen[bytes], Path] | None = None

    def substitute(self, text: str) -> str:
        for old, new in self.substitutions.items():
            text = re.sub(rf"\b{re.escape(old)}\b", new, text)
        return text

    def script(self, command: str) -> str:
        return "\n".join(["set -e", *self.prelude, command])

    def run(self, step: Step) -> str:
        command = self.substitute(step.command)
        if command.startswith("baton serve") or command.rstrip().endswith("&"):
            return self.start_server(step, command.rstrip().removesuffix("&"))
        r = subprocess.run(["bash", "-c", self.script(command)], cwd=self.work, env=self.env,
                           capture_output=True, text=True, timeout=1200,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (
            f"README.md:{step.line}: `{command}` exited {r.returncode}:\n{r.stdout}{r.stderr}")
        if command.startswith("source "):
            self.prelude.append(command)
        return r.stdout + r.stderr

    def start_server(self, step: Step, command: str) -> str:
        self.stop_server()
        log = self.work / f"server-{step.line}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", self.script(f"exec {command}")],
                                    cwd=self.work, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.server = (proc, log)
        deadline = time.monotonic() + 180
        while _READY not in log.read_text():
            assert proc.poll() is None, (
                f"README.md:{step.line}: `{command}` exited {proc.returncode}:\n"
                f"{log.read_text()}")
            assert time.monotonic() < deadline, (
                f"README.md:{step.line}: `{command}` did not print {_READY!r} in 180 s:\n"
                f"{log.read_text()}")
            time.sleep(0.1)
        return log.read_text()

    def stop_server(self) -> None:
        if self.server is None:
            return
        proc, _ = self.server
        self.server = None
        stop_process(proc)


def _fresh_env(baton_env: dict[str, str], port: int) -> dict[str, str]:
    """The test's environment as a new terminal has it: no virtual environment on PATH."""
    venv_bin = str(ROOT / ".venv" / "bin")
    path = [p for p in baton_env["PATH"].split(os.pathsep)
            if p and os.path.realpath(p) != os.path.realpath(venv_bin)]
    return {**baton_env, "PATH": os.pathsep.join(path), "BATON_PORT": str(port)}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # section 9 builds a container image (docs/image.md has the times)
def test_readme_commands_run_as_written(baton_env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    for name in ("examples", ".venv"):
        (work / name).symlink_to(ROOT / name)
    suffix = uuid.uuid4().hex[:8]
    port = free_port()
    streams = {name: f"{name}-{suffix}" for name in ("penguins-in", "penguins-out")}
    shell = Shell(work, _fresh_env(baton_env, port),
                  {"8000": str(port), "8765": str(free_port()), **streams})
    ran = 0
    try:
        for step in readme_steps(README.read_text()):
            if step.skipped is not None:
                continue
            output = shell.run(step)
            ran += 1
            # A retrained bundle shares the committed example's digest only when training
            # gave the very same files (same library versions, same floating-point results).
            retrained = work / "build" / "penguins"
            digests = ("examples/penguins/bundle" in step.command or not retrained.exists()
                       or _same_files(retrained, EXAMPLE))
            wrong = differences(shell.substitute(step.shown), output, digests=digests)
            assert not wrong, (f"README.md:{step.line}: `{step.command}` does not print what "
                               f"the README shows:\n" + "\n".join(wrong))
    finally:
        shell.stop_server()
        subprocess.run(["redis-cli", "DEL", *streams.values()], capture_output=True,
                       timeout=30, check=False)
    assert ran >= 10, f"only {ran} README commands ran"
