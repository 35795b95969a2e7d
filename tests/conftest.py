"""Shared fixtures: real bundles, real uv environments, real `baton serve` processes."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
BATON = [sys.executable, "-m", "baton"]
EXAMPLE = ROOT / "examples" / "penguins" / "bundle"


# `make test` runs on two pytest-xdist workers (`--dist loadgroup`). Tests that share one
# machine-wide thing run on one worker, in order: the Ray cluster's fixed ports, podman's
# image store (builds and prunes).
XDIST_GROUPS = (("tests/cluster/", "ray"), ("tests/image/", "podman"),
                ("tests/deploy/test_kubernetes.py", "podman"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = next((g for prefix, g in XDIST_GROUPS if item.nodeid.startswith(prefix)), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def image_base_early(request: pytest.FixtureRequest) -> Iterator[None]:
    """When the session builds container images, their Debian base (debootstrap: the
    longest step on a fresh machine) is built from the start, in the background, while the
    tests before tests/deploy and tests/image run; those wait for it (``ensure_base`` takes
    a lock) rather than build it then. Any failure is theirs to report."""
    import shutil
    import threading

    wanted = any(i.nodeid.startswith(("tests/image/", "tests/deploy/test_kubernetes"))
                 for i in request.session.items)
    if not wanted or not all(shutil.which(t) for t in ("podman", "debootstrap")):
        yield
        return
    from baton.image.base import ensure_base
    from tests.image.conftest import HOME

    def build() -> None:
        try:
            ensure_base(HOME / "image")
        except Exception:  # the image tests build it again and say why it fails
            pass

    thread = threading.Thread(target=build, name="image-base", daemon=True)
    thread.start()
    yield
    thread.join(600)


@pytest.fixture(scope="session")
def baton_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Baton home per test session: environments are built once and shared."""
    return tmp_path_factory.mktemp("baton-home")


@pytest.fixture(scope="session")
def baton_env(baton_home: Path) -> dict[str, str]:
    # One worker per model unless a test asks for more: tests that count workers, pids or
    # restarts need a fixed count. The self-sizing default (BATON_WORKERS unset or "0") has
    # its own tests in tests/runtime/test_sizing.py.
    env = dict(os.environ, BATON_HOME=str(baton_home), UV_PYTHON_DOWNLOADS="never",
               BATON_WORKERS="1")
    env.pop("VIRTUAL_ENV", None)
    return env


def tamper(archive: Path, old: bytes, new: bytes, member: str = "model/predict.py") -> None:
    """Rebuild a .baton archive with one file's bytes changed and its index left as it was
    (what an attacker who rewrites a bundle in transit would send)."""
    out = io.BytesIO()
    with tarfile.open(archive, "r:gz") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for info in src:
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                data = data.replace(old, new)
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    archive.write_bytes(gzip.compress(out.getvalue()))


def run_baton(*args: str | Path, env: dict[str, str], timeout: float = 300,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BATON, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def migration_head(migrations: Path | None = None) -> str:
    """The newest Alembic revision in ``migrations`` (default: the registry's schema; the
    prediction log has its own, ``baton.monitor.predlog.store.MIGRATIONS``)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from baton.registry.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations or MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace: float = 30) -> None:
    """SIGTERM a process started in its own session, by its PID; after ``grace`` seconds,
    SIGKILL its process group (which holds its workers)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class Server:
    """A real `baton serve` process on a free loopback port."""

    def __init__(self, bundles: list[Path], env: dict[str, str], args: list[str]) -> None:
        Path(env["BATON_HOME"]).mkdir(parents=True, exist_ok=True)
        self._launch = (bundles, env, args)
        self._start()

    def _start(self) -> None:
        bundles, env, args = self._launch
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(env["BATON_HOME"]) / f"serve-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*BATON, "serve", *map(str, bundles), "--port", str(self.port), *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        tries = 3
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                # free_port() closes the port it found: on a busy machine (two test workers)
                # another process can take it before serve binds it. Then, another port.
                if "Address already in use" in self.output() and (tries := tries - 1):
                    self.client.close()
                    self.log.close()
                    self._start()
                    continue
                raise AssertionError(f"baton serve exited early:\n{self.output()}")
            try:
                if self.client.get("/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"baton serve not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def model(self, name: str) -> dict[str, Any]:
        return self.client.get(f"/v2/models/{name}").json()

    def worker_pids(self, name: str) -> list[int]:
        return [w["pid"] for w in self.model(name)["parameters"]["workers"]
                if w["state"] == "ready"]

    def stop(self) -> int:
        stop_process(self.proc)
        self.client.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def serve(baton_env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    """Factory: ``serve([bundle, ...], "--workers", "2")`` starts a ready server."""
    servers: list[Server] = []

    def start(bundles: list[Path], *args: str, ready: bool = True,
              env: dict[str, str] | None = None) -> Server:
        server = Server(bundles, {**baton_env, **(env or {})}, list(args))
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for s in servers:
        s.stop()


# -- Bundles written by the tests ----------------------------------------------------------

CHAOS_CODE = '''
import os, time

class Model:
    """Behaves as the 'action' column says: the tool to induce every worker fault."""

    def load(self, bundle_dir):
        if os.path.exists(os.path.join(bundle_dir, "FAIL_LOAD")):
            raise RuntimeError("load failed on purpose")

    def predict(self, inputs):
        out = []
        for action, x in zip(inputs["action"], inputs["x"]):
            if action == "crash":
                os._exit(3)
            if action == "hang":
                time.sleep(3600)
            if action == "sleep":
                time.sleep(1.0)
            if action == "raise":
                raise ValueError("boom: the model refused x=%r" % x)
            out.append(1000.0 if action == "bad_output" else x * 2)
        return {"y": out, "pid": [os.getpid()] * len(out), "debug": ["internal"] * len(out)}
'''


def write_bundle(path: Path, *, name: str, manifest_extra: str = "", code: str = "",
                 requirements: list[str] | None = None, contract: str, samples: tuple[Any, Any]
                 | None = None, entrypoint: str = "model.predict:Model") -> Path:
    (path / "model").mkdir(parents=True, exist_ok=True)
    (path / "model" / "__init__.py").write_text("")
    (path / "model" / "predict.py").write_text(textwrap.dedent(code))
    sample_section = ""
    if samples is not None:
        (path / "samples").mkdir(exist_ok=True)
        (path / "samples" / "input.json").write_text(json.dumps(samples[0]))
        (path / "samples" / "expected.json").write_text(json.dumps(samples[1]))
        sample_section = ('[samples]\ninput = "samples/input.json"\n'
                          'expected = "samples/expected.json"\ntolerance = 1e-9\n')
    reqs = json.dumps(requirements or [])
    (path / "baton.toml").write_text(
        f'[bundle]\nname = "{name}"\nversion = "1.0.0"\nowner = "tests"\n\n'
        f'[model]\nrunner = "python"\nentrypoint = "{entrypoint}"\n\n'
        f'[environment]\npython = "3.11"\nrequirements = {reqs}\n\n'
        f'{sample_section}{manifest_extra}\n{textwrap.dedent(contract)}')
    return path


def records_contract(inputs: dict[str, str | dict[str, Any]],
                     outputs: dict[str, str | dict[str, Any]]) -> str:
    """A records contract's TOML: each field is ``name: type`` or ``name: {"type": ...,
    "min": ..., "categories": [...], ...}``."""
    def fields(spec: dict[str, str | dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": name, **({"type": f} if isinstance(f, str) else f)}
                for name, f in spec.items()]

    return tomli_w.dumps({"contract": {"kind": "records", "inputs": fields(inputs),
                                       "outputs": fields(outputs)}})


CHAOS_CONTRACT = records_contract(
    inputs={"action": {"type": "string",
                       "categories": ["ok", "crash", "hang", "sleep", "raise", "bad_output"]},
            "x": {"type": "float", "min": -100.0, "max": 100.0}},
    outputs={"y": {"type": "float", "min": -200.0, "max": 200.0}, "pid": "integer"})


@pytest.fixture(scope="session")
def chaos_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pure-Python model (no dependencies) whose input chooses its behaviour."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "chaos", name="chaos",
                        code=CHAOS_CODE, contract=CHAOS_CONTRACT)


TENSOR_CODE = '''
class Model:
    def predict(self, inputs):
        x = inputs["x"]
        return {"sum": x.sum(axis=1, keepdims=True)}
'''

TENSOR_CONTRACT = '''
[contract]
kind = "tensors"

[[contract.inputs]]
name = "x"
datatype = "FP64"
shape = [-1, 3]

[[contract.outputs]]
name = "sum"
datatype = "FP64"
shape = [-1, 1]
'''


@pytest.fixture(scope="session")
def numpy_pin() -> str:
    import numpy

    return f"numpy=={numpy.__version__}"


@pytest.fixture(scope="session")
def tensor_bundle(tmp_path_factory: pytest.TempPathFactory, numpy_pin: str) -> Path:
    """A numpy model with a tensor contract: row sums of an [n, 3] FP64 input."""
    return write_bundle(tmp_path_factory.mktemp("bundles") / "tensor", name="rowsum",
                        code=TENSOR_CODE, contract=TENSOR_CONTRACT, requirements=[numpy_pin],
                        samples=({"x": [[1.0, 2.0, 3.0], [0.5, 0.5, 0.0]]},
                                 {"sum": [[6.0], [1.0]]}))
