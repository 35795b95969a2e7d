"""A worker forked by a template (template.py), as the engine's Worker sees it.

The worker is the template's child, not the engine's: the engine reads its pipes itself,
holds a pidfd to signal it and to see it end, and takes its exit status from the template,
which reaps it (docs/protocol.md#worker-templates).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable


class ForkedTransport:
    """A worker a template forked, with the face Worker knows of asyncio's subprocess
    transport: its pid, exit status and stdin, and ``protocol`` told of its output and
    exit. The exit status comes from the template; once the template is gone, a pidfd
    says when the worker ended, and its status stays unknown (None)."""

    def __init__(self, template_alive: Callable[[], bool], loop: asyncio.AbstractEventLoop,
                 protocol: asyncio.SubprocessProtocol, pid: int, stdin: int, stdout: int,
                 stderr: int) -> None:
        self.template_alive, self.loop, self.protocol = template_alive, loop, protocol
        self.pid = pid
        self._fds = {stdout: 1, stderr: 2}
        self._stdin_fd = stdin
        self._stdin: asyncio.WriteTransport | None = None
        self._pidfd: int | None = None
        with contextlib.suppress(OSError):  # already reaped: its "exited" comes anyway
            self._pidfd = os.pidfd_open(pid)
        self._ended = self._pidfd is None
        self._done = False
        self._returncode: int | None = None

    async def connect(self) -> None:
        for fd in self._fds:
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._read, fd)
        pipe = open(self._stdin_fd, "wb", buffering=0)  # noqa: SIM115 - the transport's
        self._stdin, _ = await self.loop.connect_write_pipe(
            lambda: _StdinProtocol(self.protocol), pipe)
        if self._pidfd is not None:
            self.loop.add_reader(self._pidfd, self._on_pidfd)

    # -- what Worker uses --------------------------------------------------------------
    def get_pid(self) -> int:
        return self.pid

    def get_returncode(self) -> int | None:
        return self._returncode

    def get_pipe_transport(self, fd: int) -> asyncio.WriteTransport | None:
        return self._stdin if fd == 0 else None

    def kill(self) -> None:
        """SIGKILL to the worker itself (its process group may not exist yet)."""
        if self._pidfd is not None and not self._done:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def close(self) -> None:
        for fd in list(self._fds):
            self._close_read(fd)
        if self._stdin is not None:
            self._stdin.close()
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    # -- events ------------------------------------------------------------------------
    def exited(self, code: int | None) -> None:
        """The worker ended with ``code`` (None: unknown): after what is left in its
        pipes, the protocol hears of it, once."""
        if self._done:
            return
        self._done, self._returncode = True, code
        for fd in list(self._fds):
            while fd in self._fds and self._read(fd):
                pass
        self.protocol.process_exited()

    def orphaned(self) -> None:
        """The template is gone: the exit is known from the pidfd alone."""
        if self._ended:
            self.exited(None)

    def _on_pidfd(self) -> None:
        if self._pidfd is not None:
            self.loop.remove_reader(self._pidfd)
        self._ended = True
        if not self.template_alive():
            self.exited(None)

    def _read(self, fd: int) -> bool:
        try:
            data = os.read(fd, 1 << 18)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.protocol.pipe_data_received(self._fds[fd], data)
            return True
        which = self._fds[fd]
        self._close_read(fd)
        self.protocol.pipe_connection_lost(which, None)
        return False

    def _close_read(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self.loop.remove_reader(fd)
            os.close(fd)


class _StdinProtocol(asyncio.Protocol):
    def __init__(self, protocol: asyncio.SubprocessProtocol) -> None:
        self.protocol = protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.pipe_connection_lost(0, exc)
