"""What the end-to-end stream tests share: the scoring model and its bundle's contract,
keyed inputs with bad records among them, reading back outputs and dead letters as any
consumer would, and the checks that every record ended exactly once (or within a window).
The fixtures that start engines are in conftest.py."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import httpx

from baton.streams.binding import StreamBinding
from tests.conftest import Server, records_contract
from tests.streams.kits import Item, Kit

if TYPE_CHECKING:
    from tests.streams.conftest import Aio

MODEL = '''
import os, time

class Model:
    def predict(self, inputs):
        time.sleep(float(os.environ.get("BATON_TEST_SLEEP", "0")))  # to kill it mid-stream
        return {"score": [min(1.0, a / 1000.0) for a in inputs["amount"]]}
'''

CONTRACT = records_contract(
    inputs={"amount": {"type": "float", "min": 0.0},
            "country": {"type": "string", "categories": ["DE", "FR", "US"]},
            "age": {"type": "integer", "nullable": True}},
    outputs={"score": "float"})


#: The engines' micro-batch size (``--max-batch``).
MAX_BATCH = 20
#: Records an engine holds read and not yet acknowledged, at most: the pipeline's
#: micro-batches in flight (its default) of MAX_BATCH each. A kill may deliver those again,
#: and nothing else.
WINDOW = StreamBinding("m", "in", "out", "dead").in_flight * MAX_BATCH


def make_inputs(n: int, *, line_keys: bool = False) -> tuple[list[Item], dict[str, bytes]]:
    """``n`` keyed records, one in 12 of them bad in one of four ways; and the bad ones.

    ``line_keys``: keyed by line number, as the file connector keys a record without a key
    field (a line that is not JSON has none)."""
    items: list[Item] = []
    bad: dict[str, bytes] = {}
    for i in range(n):
        key = str(i + 1) if line_keys else f"r{i:05d}"
        good = {"amount": float(i % 700), "country": "DEFRUS"[i % 3 * 2:][:2],
                "age": None if i % 5 == 0 else 20 + i % 60}
        broken = None if i % 12 != 5 else [
            b"\xff\xfe\x00 not JSON, not even UTF-8",
            json.dumps({**good, "amount": "a lot"}).encode(),       # wrong type
            json.dumps({"amount": 3.0, "age": 30}).encode(),       # missing field
            json.dumps({**good, "country": "XX"}).encode()][i // 12 % 4]
        value = broken if broken is not None else json.dumps(good).encode()
        items.append((key, value))
        if broken is not None:
            bad[key] = broken
    return items, bad


class Outcome:
    """Outputs and dead letters read back from the broker, as any consumer would."""

    def __init__(self, aio: Aio, kit: Kit, output: str, dead: str) -> None:
        self.aio = aio
        self.out, self.dead = kit.reader(output), kit.reader(dead)

    def start(self) -> Outcome:
        self.aio.run(self.out.start())
        self.aio.run(self.dead.start())
        return self

    def poll(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        bodies = []
        for reader in (self.out, self.dead):
            items = self.aio.run(reader.poll())
            parsed = [json.loads(v) for _, v in items]
            for (key, _), body in zip(items, parsed, strict=True):
                assert key == body["key"], f"message key {key!r} != record key {body['key']!r}"
            bodies.append(parsed)
        return bodies[0], bodies[1]

    def seen(self) -> set[str]:
        out, dead = self.poll()
        return {b["key"] for b in out} | {b["key"] for b in dead}

    async def close(self) -> None:
        await self.out.close()
        await self.dead.close()


def wait_until(check: Callable[[], bool], what: str, server: Server | None = None,
               patience: float = 90) -> None:
    """Poll ``check``; a deadline only turns a hang into a failure, it asserts no speed."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if check():
            return
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"baton serve exited while waiting for {what}:\n"
                                 f"{server.output()[-4000:]}")
        time.sleep(0.02)
    tail = f":\n{server.output()[-4000:]}" if server is not None else ""
    raise AssertionError(f"{what}: not reached within {patience:.0f}s{tail}")


Engines = Callable[..., Server]


def answers(server: Server, path: str) -> bool:
    try:
        return server.client.get(path).status_code == 200
    except httpx.TransportError:
        return False


Tidy = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


def urls(kit: Kit, streams: tuple[str, str, str]) -> tuple[str, str, str]:
    return kit.url(streams[0]), kit.url(streams[1]), kit.url(streams[2])


def sigkill(server: Server) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)  # the engine; its workers exit on EOF
    server.proc.wait()


def stream_stats(server: Server) -> dict[str, Any]:
    streams: list[dict[str, Any]] = server.client.get("/v1/models").json()["streams"]
    return streams[0]


def check_complete(outcome: Outcome, items: list[Item], bad: dict[str, bytes],
                   digest: str) -> tuple[int, str]:
    """Every key accounted for exactly as it should be; returns the number of duplicates
    (outputs and dead letters beyond the first of each key) and a summary."""
    out, dead = outcome.poll()
    out_keys, dead_keys = Counter(b["key"] for b in out), Counter(b["key"] for b in dead)
    keys = [k for k, _ in items]
    lost = [k for k in keys if k not in out_keys and k not in dead_keys]
    assert not lost, f"{len(lost)} record(s) lost, e.g. {lost[:5]}"
    assert set(dead_keys) == set(bad), "dead letters must be exactly the bad records"
    assert set(out_keys) == set(keys) - set(bad)
    for letter in dead:
        original = bad[letter["key"]]
        assert letter["stage"] in ("decode", "contract"), letter
        assert letter["code"] and letter["message"], letter
        assert letter["digest"] == digest
        payload = (base64.b64decode(letter["payload"])
                   if letter["payload_encoding"] == "base64"
                   else letter["payload"].encode())
        assert payload == original, letter
    for body in out:
        assert body["output"]["score"] >= 0 and body["model"] == "scorer"
    dups = sum(c - 1 for c in out_keys.values()) + sum(c - 1 for c in dead_keys.values())
    return dups, f"{len(items)} records, {len(bad)} dead letters, {dups} duplicate(s)"
