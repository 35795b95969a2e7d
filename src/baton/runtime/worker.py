"""One worker process: the model's interpreter running the runner, spoken to over its stdio."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import orjson
import psutil

from baton.batch import Batch
from baton.errors import (
    ModelError,
    ModelLoadError,
    WorkerCrashed,
    WorkerError,
    WorkerLimitExceeded,
    WorkerTimeout,
)
from baton.runtime import sandbox
from baton.runtime.forked import ForkedTransport
from baton.runtime.isolation import LIMIT_CODES
from baton.runtime.limits import WorkerLimits
from baton.runtime.protocol import WorkerPipes, decode_columns, encode_predict, pack_frame
from baton.runtime.sizing import peak_rss as peak_rss  # where callers have found it
from baton.runtime.spec import WorkerSpec as WorkerSpec
from baton.runtime.template import Template, TemplateGone

log = logging.getLogger("baton.worker")
#: Signals that come from outside the model (an operator, a supervisor, the OOM killer),
#: unlike an exit of its own or a fault in its code (SIGSEGV, SIGABRT, SIGBUS, SIGFPE).
OUTSIDE_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


class Worker:
    """A running worker. ``start()`` spawns (or forks) and loads; ``predict()`` sends one batch."""

    def __init__(self, spec: WorkerSpec, slot: int, template: Template | None = None) -> None:
        self.spec = spec
        self.slot = slot
        #: Where the worker is forked from (docs/protocol.md#worker-templates); None: spawned.
        self.template = template
        self.state = "new"
        #: The process running the model (inside a sandbox, bwrap's child): the one to
        #: measure, and the pid shown.
        self.pid: int | None = None
        #: The process started, leader of the worker's process group (bwrap, if sandboxed).
        self.leader: int | None = None
        self.started_at = 0.0
        self.info: dict[str, Any] = {}
        self.raw = False
        self.exited = asyncio.Event()
        self._transport: asyncio.SubprocessTransport | ForkedTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        #: Request id -> its answer: a Batch (predict) or a header (metrics).
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._control: asyncio.Future[dict[str, Any]] | None = None
        self._next_id = 0
        self._stderr = collections.deque[str](maxlen=40)
        self._partial = b""
        self.exit_reason = ""
        #: What the worker sent that the protocol cannot mean, if it did (it was stopped).
        self.protocol_error: str | None = None
        #: The error code of a limit that stopped the worker (MEMORY_LIMIT...), if one did.
        self.limit_hit = ""
        self.returncode: int | None = None
        self.limits: WorkerLimits | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.state = "starting"
        self.started_at = time.monotonic()
        self._control = loop.create_future()
        iso = self.spec.isolation
        try:
            if iso.limited:
                self.limits = WorkerLimits.prepare(iso, f"{self.spec.model}-{self.slot}")
            launching = asyncio.ensure_future(self._launch(loop))
            transport = await asyncio.shield(launching)  # a process, once started, is ours
        except (OSError, WorkerError) as exc:
            self.state = "dead"
            self._release_limits()
            if isinstance(exc, WorkerError):
                raise
            raise WorkerError(f"{self.spec.model}: cannot start worker: {exc}") from None
        except asyncio.CancelledError:  # a pool closing: kill what the launch started
            with contextlib.suppress(BaseException):
                self._attach(await launching)
                await self._killed()
            raise
        self._attach(transport)
        try:
            hello = await self._await_control("hello")
            self.info = hello
            self._contain()
            self.raw = "raw" in hello.get("encodings", [])
            load = {"op": "load", "bundle_dir": str(self.spec.bundle_dir), **self.spec.load}
            self._send(pack_frame(orjson.dumps(load)))
            loaded = await self._await_control("loaded")
        except BaseException:
            await self._killed()
            raise
        if not loaded.get("ok"):
            await self._killed()
            err = loaded.get("error", {})
            raise ModelLoadError(f"{self.spec.model}: {err.get('stage', 'load')} failed: "
                                 f"{err.get('message', 'unknown error')}",
                                 details={"stage": err.get("stage", "load"),
                                          "traceback": err.get("traceback", "")})
        self.info["load_seconds"] = loaded.get("seconds")
        self.state = "ready"
        log.info("%s#%d: worker %s ready in %.3fs (%s; load %.3fs)", self.spec.model,
                 self.slot, self.pid, time.monotonic() - self.started_at, "forked by template "
                 f"{self.template.pid}" if self.template else "spawned",
                 loaded.get("seconds") or 0.0)

    def _attach(self, transport: asyncio.SubprocessTransport | ForkedTransport) -> None:
        self._transport = transport
        self._stdin = transport.get_pipe_transport(0)  # type: ignore[assignment]
        self.pid = self.leader = transport.get_pid()

    async def _launch(self, loop: asyncio.AbstractEventLoop
                      ) -> asyncio.SubprocessTransport | ForkedTransport:
        """Fork the worker from its template or, without one or when it cannot, spawn it."""
        if self.template is not None:
            try:
                return await self.template.fork(WorkerPipes(self))
            except TemplateGone as exc:
                log.warning("%s#%d: the worker is spawned directly: %s", self.spec.model,
                            self.slot, exc)
                self.template = None
        transport, _ = await loop.subprocess_exec(
            lambda: WorkerPipes(self), *self.spec.command(), cwd=str(self.spec.bundle_dir),
            env=self.spec.environment(), start_new_session=True)
        return transport

    def _contain(self) -> None:
        """Before the model loads: find the process running it (inside the sandbox, a
        child of bwrap) and put every process of the worker under its limits."""
        if self.leader is None or not (self.spec.isolation.sandboxed or self.limits):
            return
        pids, self.pid = sandbox.processes(self.leader, self.spec.runner.script)
        if self.limits is not None:
            self.limits.apply(pids)

    def _release_limits(self) -> None:
        if self.limits is not None:
            self.limits.release()

    async def _await_control(self, op: str) -> dict[str, Any]:
        control = self._control
        if control is None:  # only start() waits for control messages, after creating it
            raise WorkerError(f"{self.spec.model}: no '{op}' can come: the worker was "
                              "never started")
        try:
            msg = await asyncio.wait_for(asyncio.shield(control),
                                         self.spec.load_timeout)
        except TimeoutError:
            raise WorkerTimeout(f"{self.spec.model}: worker sent no '{op}' within "
                                f"{self.spec.load_timeout:.0f}s") from None
        if msg.get("op") != op:
            raise WorkerError(f"{self.spec.model}: expected '{op}' from worker, got {msg}")
        self._control = asyncio.get_running_loop().create_future()
        return msg

    async def _killed(self) -> None:
        """Kill a worker that did not start, and see it exit (its transport closes then),
        also when the start was cancelled (a pool closing)."""
        self.kill()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.exited.wait(), 5)

    def kill(self) -> None:
        if self._transport is not None and self.leader is not None and not self.exited.is_set():
            try:
                os.killpg(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if isinstance(self._transport, ForkedTransport):  # maybe before its setsid()
                self._transport.kill()
            if self.limits is not None:  # what left the worker's session, too
                self.limits.kill_all()

    def broke_protocol(self, exc: Exception) -> None:
        """The worker sent a frame the protocol cannot mean (a model writing to the
        runner's channel): it is stopped, its requests fail as in a crash, it is replaced."""
        self.protocol_error = f"{type(exc).__name__}: {exc}"[:300]
        self.exit_reason = f"broke the worker protocol ({self.protocol_error}) and was stopped"
        log.error("%s#%d: worker %s %s", self.spec.model, self.slot, self.pid, self.exit_reason)
        self.kill()

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it has not after ``grace`` seconds."""
        if self._transport is None or self.exited.is_set():
            return
        self.state = "stopping"
        try:
            self._send(pack_frame(orjson.dumps({"op": "shutdown"})))
            if self._stdin is not None:
                self._stdin.close()
        except (RuntimeError, OSError):
            pass
        try:
            await asyncio.wait_for(self.exited.wait(), grace)
        except TimeoutError:
            self.kill()
            await self.exited.wait()

    # -- requests ----------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def predict(self, batch: Batch, timeout: float) -> asyncio.Future[Batch]:
        return self._request(lambda rid: encode_predict(rid, batch, self.raw), timeout)

    def metrics(self, functions: list[str], y_true: list[Any], y_pred: list[Any],
                outputs: list[Any], timeout: float) -> asyncio.Future[Any]:
        """Ask the runner to compute the bundle's metric functions; resolves to a header."""
        return self._request(lambda rid: pack_frame(orjson.dumps(
            {"op": "metrics", "id": rid, "functions": functions, "y_true": y_true,
             "y_pred": y_pred, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)),
            timeout)

    def _request(self, frame: Callable[[int], bytes], timeout: float) -> asyncio.Future[Any]:
        """Send the frame built for a new request id; the future resolves with the answer,
        or fails on a timeout or when the worker is (or turns out to be) gone."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self.state != "ready":
            fut.set_exception(WorkerCrashed(f"{self.spec.model}: worker is {self.state}"))
            return fut
        self._next_id += 1
        rid = self._next_id
        self._pending[rid] = fut
        self._timers[rid] = loop.call_later(timeout, self._on_timeout, rid, timeout)
        try:
            self._send(frame(rid))
        except (RuntimeError, OSError) as exc:  # the pipe closed before the exit was seen
            self.state = "exiting"
            self._timers.pop(rid).cancel()
            self._pending.pop(rid)
            fut.set_exception(WorkerCrashed(f"{self.spec.model}: worker {self.pid} is gone "
                                            f"({exc})", details={"pid": self.pid}))
        return fut

    def _send(self, frame: bytes) -> None:
        """Write a frame; RuntimeError (what a closed pipe raises too) when there is no
        pipe, which callers already treat as a worker that is gone."""
        stdin = self._stdin
        if stdin is None:
            raise RuntimeError(f"{self.spec.model}: worker slot {self.slot} has no pipe "
                               "(never started)")
        stdin.write(frame)

    # -- events from the pipes ---------------------------------------------------------
    def _on_frame(self, header: dict[str, Any], payload: bytes) -> None:
        if header.get("op") != "result":
            if self._control is not None and not self._control.done():
                self._control.set_result(header)
            return
        rid = header.get("id")
        if not isinstance(rid, int):  # answers no request: nothing waits for it
            return
        fut = self._pending.pop(rid, None)
        timer = self._timers.pop(rid, None)
        if timer:
            timer.cancel()
        if fut is None or fut.done():
            return
        if header.get("ok") and "values" in header:
            fut.set_result(header)
        elif header.get("ok"):
            try:
                fut.set_result(decode_columns(header["columns"], payload, header["rows"]))
            except ModelError as exc:
                fut.set_exception(exc)
        else:
            err = header.get("error", {})
            log.warning("%s: model raised: %s\n%s", self.spec.model, err.get("message"),
                        err.get("traceback", ""))
            code = err.get("code", "MODEL_ERROR")
            message = err.get("message", "model failed")
            hit = self.limits.hit() if self.limits is not None else None
            code = hit or code
            if code in LIMIT_CODES:
                message = f"{self.spec.isolation.explain(code)}: {message}"
            if code in ("MEMORY_LIMIT", "PROCESS_LIMIT"):
                # Memory it could not get, or processes it started: the worker is replaced.
                self.limit_hit, self.exit_reason = code, self.spec.isolation.explain(code)
                self.state = "exiting"  # it takes no more batches
                self.kill()
            fut.set_exception(ModelError(message, code=code,
                                         details={"stage": err.get("stage", "model")}))

    def _on_stderr(self, data: bytes) -> None:
        text = (self._partial + data).split(b"\n")
        self._partial = text.pop()
        for line in text:
            decoded = line.decode("utf-8", "replace")
            self._stderr.append(decoded)
            log.info("[%s#%d pid %s] %s", self.spec.model, self.slot, self.pid, decoded)

    def _on_timeout(self, rid: int, timeout: float) -> None:
        self.exit_reason = f"hung: no answer within {timeout:g}s"
        self.state = "hung"
        self._fail_all(WorkerTimeout(f"{self.spec.model}: worker {self.pid} gave no answer "
                                     f"within {timeout:g}s; it is being restarted"))
        self.kill()

    def _on_exit(self) -> None:
        code = self._transport.get_returncode() if self._transport else None
        if self.spec.isolation.sandboxed:
            code = sandbox.returncode(code)
        self.returncode = code
        hit = self.limits.hit() if self.limits is not None else None
        if hit:
            self.limit_hit, self.exit_reason = hit, self.spec.isolation.explain(hit)
        self._release_limits()
        if not self.exit_reason:
            self.exit_reason = (f"killed by signal {signal.Signals(-code).name}"
                                if code is not None and code < 0 else f"exited with code {code}"
                                if code is not None else "ended; its template, gone, could "
                                "not say how")
        was = self.state
        self.state = "dead"
        tail = " | ".join(list(self._stderr)[-5:])
        crashed = WorkerLimitExceeded if self.limit_hit else WorkerCrashed
        self._fail_all(crashed(
            f"{self.spec.model}: worker {self.pid} {self.exit_reason} while handling this "
            "request" + (f"; its last output: {tail}" if tail else ""),
            code=self.limit_hit or None,
            details={"pid": self.pid, "reason": self.exit_reason}))
        if self._control is not None and not self._control.done():
            self._control.set_exception(WorkerCrashed(
                f"{self.spec.model}: worker {self.exit_reason} during start-up"
                + (f": {tail}" if tail else ""), details={"stage": "import" if was ==
                                                          "starting" else "model"}))
            self._control.exception()  # mark retrieved: start() may already have given up
        if self._transport is not None:
            self._transport.close()
        self.exited.set()

    def _fail_all(self, exc: Exception) -> None:
        for rid, fut in list(self._pending.items()):
            if not fut.done():
                fut.set_exception(exc)
            timer = self._timers.pop(rid, None)
            if timer:
                timer.cancel()
        self._pending.clear()

    @property
    def killed_from_outside(self) -> bool:
        """Whether the process died of a signal sent from outside (see OUTSIDE_SIGNALS)."""
        code = self.returncode
        return (code is not None and code < 0 and -code in OUTSIDE_SIGNALS
                and not self.limit_hit and self.protocol_error is None)

    @property
    def last_output(self) -> list[str]:
        return list(self._stderr)

    def memory(self) -> int:
        """Bytes of memory the worker holds: the larger of its resident set now and at its
        peak (a model often needs more while it loads than once loaded); 0 if it is gone."""
        pid = self.pid
        if pid is None or self.exited.is_set():
            return 0
        try:
            rss = int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0
        return max(rss, peak_rss(pid) or 0)
