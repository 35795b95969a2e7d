"""The Python runner's template mode (docs/protocol.md#worker-templates).

``python -I -B runner.py --template`` runs with the *model's* interpreter, like the runner,
and imports only the standard library itself; runner.py loads this file by its path. The
process imports the model's libraries once, then forks a worker whenever the engine asks,
so that a worker's start costs its model's load only.

Standard input is a Unix ``SOCK_SEQPACKET`` socket to the engine; each message is one JSON
object. The engine sends ``warm`` (the ``load`` message) first, then ``fork`` messages, each
carrying three descriptors (``SCM_RIGHTS``): the new worker's standard input, output and
error. The template answers ``warm`` (``ok`` and ``seconds``, or ``ok: false`` and an
``error``, and exits), ``forked`` (``id``, ``pid``) or ``fork_failed`` (``id``, ``error``),
and ``exited`` (``pid``, ``code``: the exit status, or minus the signal) when it reaps a
worker. End of file on the socket: it kills what is left of its workers and exits.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import pickle
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any


def serve() -> None:
    """Be the template; return only in a forked worker, with descriptors 0, 1 and 2 on
    the pipes the engine gave it (the runner then goes on as any worker)."""
    control = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    data = control.recv(1 << 20)
    if not data:  # the engine is gone before it said what to import
        os._exit(0)
    message = json.loads(data)
    started = time.perf_counter()
    # No cyclic collection while importing: the passes over the growing heap of modules
    # are a tenth of the imports' time, and find next to nothing (about a thousand objects
    # for scikit-learn and pandas), which the freeze below then keeps.
    gc.disable()
    try:
        warm(message)
    except BaseException as exc:  # a worker spawned from scratch will say it properly
        _send(control, {"op": "warm", "ok": False,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-4000:]})
        os._exit(0)
    _send(control, {"op": "warm", "ok": True, "seconds": time.perf_counter() - started,
                    "modules": len(sys.modules)})
    gc.freeze()  # the workers' collector leaves the template's objects (and pages) alone
    gc.enable()  # in the template and in the workers it forks
    _loop(control)


def warm(load: dict[str, Any]) -> None:
    """Import what the model's load will: numpy, pandas for a records contract, and the
    modules of the model itself (a pickle's classes, the entrypoint's module,
    onnxruntime), without keeping the model: each worker loads its own."""
    if not hasattr(socket, "recv_fds"):
        raise RuntimeError("a template needs Python 3.9 or later")
    bundle = load["bundle_dir"]
    os.chdir(bundle)
    if bundle not in sys.path:
        sys.path.insert(0, bundle)
    for name in ("numpy", "pandas" if load.get("kind") == "records" else ""):
        if name:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    spec = load["model"]
    entry = spec["entrypoint"]
    if entry == "builtin:sklearn":
        with open(os.path.join(bundle, spec["artifact"]), "rb") as f:
            pickle.load(f)
    elif entry == "builtin:onnx":
        importlib.import_module("onnxruntime")
    else:
        importlib.import_module(entry.partition(":")[0])


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message).encode())


def _loop(control: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through wake_w
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    workers: set[int] = set()
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                _reap(control, workers)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
            except OSError:
                data, fds = b"", []
            if not data:  # the engine is gone or done: so are its workers
                for pid in workers:
                    _kill(pid)
                os._exit(0)
            request = json.loads(data)
            if request.get("op") != "fork" or len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                _send(control, {"op": "fork_failed", "id": request.get("id"),
                                "error": f"{type(exc).__name__}: {exc}"})
                continue
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                selector.close()
                for fd in (wake_r, wake_w):
                    os.close(fd)
                control.close()
                _become_worker(fds)
                return
            for fd in fds:
                os.close(fd)
            workers.add(pid)
            _send(control, {"op": "forked", "id": request.get("id"), "pid": pid})


def _become_worker(fds: list[int]) -> None:
    """In the forked child: a session of its own, its own stdio, fresh random state."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    for module, reseed in (("numpy.random", "seed"), ("torch", "seed")):
        if module in sys.modules:  # Python's own random reseeds itself after a fork
            try:
                getattr(sys.modules[module], reseed)()
            except Exception:
                pass


def _reap(control: socket.socket, workers: set[int]) -> None:
    while workers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        workers.discard(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _send(control, {"op": "exited", "pid": pid, "code": code})


def _kill(pid: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
