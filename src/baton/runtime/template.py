"""Worker templates: a process per model that has imported the model's libraries and forks
its workers, so that a worker's start or restart costs its model's load only
(docs/protocol.md#worker-templates).

The template is the Python runner started with ``--template`` (template_runner.py), under
the same command, environment, working directory and session rules as a worker. The engine
talks to it over a Unix ``SOCK_SEQPACKET`` socket on its standard input: ``warm`` first,
then one ``fork`` per worker, carrying the worker's three pipe ends. The forked worker is
the template's child, in a session of its own; the engine watches it through a pidfd and
learns its exit status from the template, which reaps it. A template that cannot warm up,
or dies, is replaced by spawning workers directly (docs/protocol.md says when).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import logging
import os
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

import orjson

from baton.errors import WorkerTimeout
from baton.runtime.spec import WorkerSpec

if TYPE_CHECKING:  # imported where used: `baton serve` spawns templates before its loop
    import asyncio

    from baton.runtime.forked import ForkedTransport

log = logging.getLogger("baton.worker")
_IDS = itertools.count(1)
#: Templates in a row that die before forking a worker, after which a pool spawns only.
MAX_FAILED_STARTS = 3
#: Pipe capacity for a forked worker's frames (a socket pair's, not a pipe's 64 KiB).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class TemplateGone(Exception):
    """The template cannot fork this worker: it is to be spawned directly."""


class Template:
    """One template process of a model: ``spawn()`` (no event loop needed), then ``fork()``."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        #: new, warming, ready or dead.
        self.state = "new"
        self.reason = ""
        self.warm_failed = False
        self.warm_seconds: float | None = None
        self.forked = 0
        self.started_at = 0.0
        self._control: socket.socket | None = None
        self._stderr: int | None = None
        self._partial = b""
        self._lines = collections.deque[str](maxlen=20)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._forks: dict[int, asyncio.Future[int]] = {}
        self._children: dict[int, ForkedTransport] = {}
        self._early_exits: dict[int, int] = {}
        self._reaped: asyncio.Future[Any] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> None:
        """Start the process and send it ``warm``; it imports while the caller goes on."""
        engine, template = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe()
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [*self.spec.command(), "--template"], stdin=template.fileno(), stdout=err_w,
                stderr=err_w, cwd=str(self.spec.bundle_dir), env=self.spec.environment(),
                start_new_session=True)
            engine.send(orjson.dumps({"op": "warm", "bundle_dir": str(self.spec.bundle_dir),
                                      **self.spec.load}))
        except OSError as exc:
            engine.close()
            os.close(err_r)
            self.state, self.reason = "dead", f"cannot start: {exc}"
            return
        finally:
            template.close()
            os.close(err_w)
        self._control, self._stderr, self.state = engine, err_r, "warming"

    def _attach(self) -> asyncio.AbstractEventLoop:
        """Read the template's messages and log in the running loop (from the first fork)."""
        import asyncio

        loop = asyncio.get_running_loop()
        if self._loop is None and self._control is not None and self._stderr is not None:
            self._loop = loop
            self._control.setblocking(False)
            os.set_blocking(self._stderr, False)
            loop.add_reader(self._control.fileno(), self._on_control)
            loop.add_reader(self._stderr, self._on_stderr)
        return loop

    async def fork(self, protocol: asyncio.SubprocessProtocol) -> ForkedTransport:
        """A new worker, forked once the template has warmed up, its pipes read by
        ``protocol`` as a subprocess transport's are. Raises TemplateGone when the template
        cannot fork it, WorkerTimeout when it gave no answer within the load timeout."""
        import asyncio

        from baton.runtime.forked import ForkedTransport

        loop = self._attach()
        control = self._control
        if self.state == "dead" or control is None:
            raise TemplateGone(self.reason or "no template")
        pipes = [os.pipe() for _ in range(3)]  # the worker's stdin, stdout, stderr
        ours = [pipes[0][1], pipes[1][0], pipes[2][0]]
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        for fd in (pipes[0][1], pipes[1][1]):
            with contextlib.suppress(OSError):  # a larger pipe where the system allows it
                fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
        rid = next(_IDS)
        answer: asyncio.Future[int] = loop.create_future()
        self._forks[rid] = answer
        try:
            socket.send_fds(control, [orjson.dumps({"op": "fork", "id": rid})], theirs)
        except OSError as exc:
            self._forks.pop(rid, None)
            _close(ours)
            raise TemplateGone(f"template {self.pid}: {exc}") from None
        finally:
            _close(theirs)
        try:
            pid = await asyncio.wait_for(answer, self.spec.load_timeout)
        except TimeoutError:
            _close(ours)
            self._gone(f"no worker forked within {self.spec.load_timeout:g}s")
            raise WorkerTimeout(f"{self.spec.model}: worker sent no 'hello' within "
                                f"{self.spec.load_timeout:.0f}s") from None
        except BaseException:
            self._forks.pop(rid, None)
            _close(ours)
            raise
        self.forked += 1
        child = ForkedTransport(lambda: self.state != "dead", loop, protocol, pid, *ours)
        self._children[pid] = child
        await child.connect()
        if pid in self._early_exits:
            child.exited(self._early_exits.pop(pid))
        return child

    async def close(self) -> None:
        """Close the socket: the template kills what is left of its workers and exits."""
        self._gone("closed")
        if self._reaped is not None:
            await self._reaped

    def discard(self) -> None:
        """Close it without an event loop. One that has forked nothing is killed and reaped
        now: it may be importing still, and would read the end of its socket only after."""
        proc = self.proc
        if self.state != "dead" and not self.forked and proc is not None \
                and proc.poll() is None:  # not reaped: its pid is still its own
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # its session's group: just itself
            proc.wait()
        self._gone("not used")

    # -- events ------------------------------------------------------------------------
    def _on_control(self) -> None:
        while self._control is not None:
            try:
                data = self._control.recv(1 << 16)
            except BlockingIOError:
                return
            except ConnectionResetError:  # it ended with a fork unread: what it sent before
                continue  # is still queued behind the error (its warm failure, say)
            except OSError:
                data = b""
            if not data:
                self._gone("its process ended" + (f": {self._tail()}" if self._lines else ""))
                return
            self._on_message(orjson.loads(data))

    def _on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "warm" and msg.get("ok"):
            self.state, self.warm_seconds = "ready", msg.get("seconds")
            log.info("%s: worker template %s imported the model's libraries in %.3fs (%s "
                     "modules)", self.spec.model, self.pid, msg.get("seconds") or 0.0,
                     msg.get("modules"))
        elif op == "warm":
            self.warm_failed = True
            log.warning("%s: worker template %s could not import the model's libraries; "
                        "workers are spawned directly: %s\n%s", self.spec.model, self.pid,
                        msg.get("error"), msg.get("traceback", ""))
            self._gone(f"could not warm up: {msg.get('error')}")
        elif op in ("forked", "fork_failed"):
            fut = self._forks.pop(msg.get("id", 0), None)
            if fut is not None and not fut.done():
                if op == "forked":
                    fut.set_result(int(msg["pid"]))
                else:
                    fut.set_exception(TemplateGone(f"template {self.pid}: {msg.get('error')}"))
        elif op == "exited":
            pid, code = int(msg["pid"]), int(msg["code"])
            child = self._children.pop(pid, None)
            if child is not None:
                child.exited(code)
            else:  # reaped before its fork's answer was handled
                self._early_exits[pid] = code

    def _on_stderr(self) -> None:
        fd = self._stderr
        if fd is None:
            return
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop() if data else b""
        if not data and lines and not lines[-1]:
            lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            self._lines.append(line)
            log.info("[%s template pid %s] %s", self.spec.model, self.pid, line)
        if not data:
            self._close_stderr()

    def _tail(self) -> str:
        return " | ".join(list(self._lines)[-5:])

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._stderr)
            os.close(self._stderr)
            self._stderr = None

    def _gone(self, reason: str) -> None:
        """The template forks no more: fail what waits on it, let its workers' exits be
        known from their pidfds, and reap the process."""
        if self.state == "dead" and self._control is None:
            return
        self.state, self.reason = "dead", self.reason or reason
        if self._control is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        if self._loop is not None and self._stderr is not None:
            self._on_stderr()  # what it said last
        self._close_stderr()
        for fut in self._forks.values():
            if not fut.done():
                fut.set_exception(TemplateGone(f"template {self.pid}: {self.reason}"))
        self._forks.clear()
        children, self._children = list(self._children.values()), {}
        for child in children:
            child.orphaned()
        proc = self.proc
        if proc is not None and self._reaped is None:
            import asyncio

            with contextlib.suppress(RuntimeError):  # no loop: the process exits on EOF
                self._reaped = asyncio.get_running_loop().run_in_executor(None, _reap, proc)

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "state": self.state, "forked": self.forked,
                "warm_seconds": self.warm_seconds, **({"reason": self.reason}
                                                      if self.state == "dead" else {})}


class PoolTemplate:
    """The template of one pool: started by ``prewarm()`` (``baton serve``, before its own
    start-up) or for the first restart of a worker (a one-shot job that never restarts one
    spawns its worker as before), started again when it dies, given up (workers spawned
    directly) when it cannot import the model's libraries or dies ``MAX_FAILED_STARTS``
    times in a row before forking."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.enabled = spec.forks
        self.current: Template | None = None
        self.failures = 0

    def prewarm(self) -> None:
        if self.enabled and self.current is None:
            self._start()

    def get(self, again: bool = True) -> Template | None:
        """The template to fork the next worker from (maybe still warming), or None;
        ``again``: the worker replaces one (without a template yet, a first start spawns)."""
        if not self.enabled or (self.current is None and not again):
            return None
        old = self.current
        if old is not None and old.state != "dead":
            return old
        if old is not None:
            self.failures = 0 if old.forked else self.failures + 1
            if old.warm_failed or self.failures >= MAX_FAILED_STARTS:
                self.enabled = False
                log.warning("%s: workers are spawned directly from now on: the worker "
                            "template %s", self.spec.model, old.reason)
                return None
            log.warning("%s: worker template %s ended (%s); starting another",
                        self.spec.model, old.pid, old.reason)
        return self._start()

    def _start(self) -> Template:
        self.current = Template(self.spec)
        self.current.spawn()
        return self.current

    async def close(self) -> None:
        if self.current is not None:
            await self.current.close()

    def abandon(self) -> None:
        """Give up a template started for nothing (``baton serve`` failed before its engine
        started, or the pool is another's), without an event loop: see Template.discard."""
        self.enabled = False
        if self.current is not None:
            self.current.discard()

    def describe(self) -> dict[str, Any] | None:
        return self.current.describe() if self.current is not None else None


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _reap(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
