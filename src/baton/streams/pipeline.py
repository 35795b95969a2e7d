"""The consume -> check -> predict -> produce -> acknowledge loop of one stream binding.

Delivery is at least once: a batch of input messages is acknowledged only after every one
of them has its output or its dead letter durably written. At most one micro-batch is in
flight per binding (backpressure: the loop reads again only when the last batch is done).
A model that is briefly unavailable (restarting, queue full) is waited for, never
dead-lettered; a sink that refuses writes stalls the loop, and nothing is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from baton.errors import BatonError, ContractViolation, ModelError, ModelNotReady, WorkerError
from baton.streams.base import Message, OutRecord, Sink, Source, open_sink, open_source, redact_url
from baton.streams.records import ModelIdentity, dead_letter, decode_messages, output_record

log = logging.getLogger("baton.streams")


@dataclass(frozen=True)
class StreamBinding:
    """Where a model's records come from and where its scores and dead letters go."""

    model: str
    input: str
    output: str
    dead_letter: str
    group: str = ""
    max_batch: int = 256
    read_timeout: float = 0.2

    @property
    def consumer_group(self) -> str:
        return self.group or f"baton-{self.model}"


@dataclass
class StreamStats:
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


class Backoff:
    def __init__(self, first: float = 0.1, cap: float = 10.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)

    def reset(self) -> None:
        self.delay = self.first


class StreamPipeline:
    def __init__(self, binding: StreamBinding, service: Callable[[], Any]) -> None:
        """``service()`` returns the model version to use now (it follows version switches)."""
        self.binding = binding
        self.service = service
        self.stats = StreamStats()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self.source: Source | None = None
        self.sink: Sink | None = None
        self.dead: Sink | None = None

    async def run(self) -> None:
        try:
            await self._connect()
            while not self._stopping.is_set():
                messages = await self._read()
                if messages:
                    await self.handle(messages)
        except _Stopped:
            log.info("%s: stream stopped with a batch unacknowledged (it will be redelivered)",
                     self.binding.model)
        except Exception as exc:  # nobody awaits this task: never let it die silently
            self.stats.last_error = f"stream stopped: {exc}"
            log.exception("%s: stream stopped by an unexpected error", self.binding.model)
        finally:
            await self._close()
            self._stopped.set()

    async def stop(self) -> None:
        """Finish the batch in flight, then stop (nothing half-done is acknowledged)."""
        self._stopping.set()
        await self._stopped.wait()

    # -- steps ---------------------------------------------------------------------------
    async def _connect(self) -> None:
        b = self.binding
        self.source = open_source(b.input, group=b.consumer_group)
        self.sink = open_sink(b.output)
        self.dead = open_sink(b.dead_letter)
        for name, part in (("input", self.source), ("output", self.sink),
                           ("dead letter", self.dead)):
            await self._retry(f"open {name}", part.open)
        log.info("%s: streaming %s -> %s (dead letters: %s)", b.model, redact_url(b.input),
                 redact_url(b.output), redact_url(b.dead_letter))

    async def _read(self) -> list[Message]:
        assert self.source is not None
        source = self.source
        return await self._retry("read input", lambda: source.read(
            self.binding.max_batch, self.binding.read_timeout))

    async def handle(self, messages: Sequence[Message]) -> None:
        svc, outputs, dead = await self._score(messages)
        if svc.metrics is not None:
            for letter in dead:
                stage = letter.headers["baton-stage"]
                svc.metrics.error("output" if stage == "output_contract" else stage,
                                  letter.headers["baton-code"])
        assert self.sink is not None and self.dead is not None
        sink, dead_sink = self.sink, self.dead
        if outputs:
            await self._retry("write output", lambda: sink.write(outputs))
        if dead:
            await self._retry("write dead letters", lambda: dead_sink.write(dead))
        assert self.source is not None
        source = self.source
        await self._retry("acknowledge input", lambda: source.ack(messages))
        self.stats.consumed += len(messages)
        self.stats.produced += len(outputs)
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1

    async def _score(self, messages: Sequence[Message]) -> tuple[Any, list[OutRecord],
                                                                 list[OutRecord]]:
        svc = await self._ready_service()
        model = ModelIdentity(svc.name, svc.version, svc.bundle.digest)
        decoded = decode_messages(messages, svc.records, model)
        outputs: list[OutRecord] = []
        dead = list(decoded.dead)
        m = svc.metrics
        if decoded.batch is None:
            return svc, outputs, dead
        try:
            out = await self._predict(svc, decoded.batch)
            if m is not None:
                m.records("stream", out.rows)
            svc.log_predictions([msg.key or "" for msg in decoded.good], decoded.batch, out)
            return svc, [output_record(msg, r, model) for msg, r in
                         zip(decoded.good, out.to_records(), strict=True)], dead
        except (ModelError, WorkerError, ContractViolation) as exc:
            if len(decoded.good) == 1:
                return svc, [], [*dead, dead_letter(decoded.good[0], _stage(exc), exc, model)]
        for i, msg in enumerate(decoded.good):  # isolate the record(s) that broke the model
            one = decoded.batch.slice(i, i + 1)
            try:
                out = await self._predict(svc, one)
                outputs.append(output_record(msg, out.to_records()[0], model))
            except (ModelError, WorkerError, ContractViolation) as exc:
                dead.append(dead_letter(msg, _stage(exc), exc, model))
        if m is not None and outputs:
            m.records("stream", len(outputs))
        return svc, outputs, dead

    async def _predict(self, svc: Any, batch: Any) -> Any:
        backoff = Backoff()
        while True:
            try:
                return await svc.predict(batch)
            except ModelNotReady as exc:  # restarting or queue full: wait, never dead-letter
                self.stats.retries += 1
                self.stats.last_error = exc.message
                await backoff.wait()

    async def _ready_service(self) -> Any:
        backoff = Backoff()
        while True:
            try:
                svc = self.service()
                if svc.ready:
                    return svc
                why = f"{self.binding.model} is not ready"
            except BatonError as exc:
                why = exc.message
            self.stats.last_error = why
            await backoff.wait()

    async def _retry(self, what: str, step: Callable[[], Any]) -> Any:
        """Run ``step`` until it succeeds, with backoff; errors are logged and visible."""
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                result = await step()
                if self.stats.last_error and self.stats.last_error.startswith(what):
                    self.stats.last_error = None
                return result
            except Exception as exc:  # a client may raise outside its documented errors
                if self._stopping.is_set():
                    raise _Stopped() from None
                message = exc.message if isinstance(exc, BatonError) else \
                    f"unexpected {type(exc).__name__}: {exc}"
                self.stats.retries += 1
                self.stats.last_error = f"{what}: {message}"
                log.warning("%s: cannot %s (retrying in %.1fs): %s", self.binding.model, what,
                            backoff.delay, message, exc_info=not isinstance(exc, BatonError))
                await self._pause(backoff)

    async def _pause(self, backoff: Backoff) -> None:
        """Back off before a retry, but leave at once when stop is asked meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), backoff.delay)
        except TimeoutError:
            backoff.delay = min(backoff.delay * 2, backoff.cap)
            return
        raise _Stopped()

    async def _close(self) -> None:
        for part in (self.source, self.sink, self.dead):
            if part is not None:
                try:
                    await part.close()
                except Exception as exc:
                    log.warning("closing a stream failed: %s", exc)

    def describe(self) -> dict[str, Any]:
        b, s = self.binding, self.stats
        return {"model": b.model, "input": redact_url(b.input),
                "output": redact_url(b.output), "dead_letter": redact_url(b.dead_letter),
                "group": b.consumer_group,
                "consumed": s.consumed, "produced": s.produced,
                "dead_lettered": s.dead_lettered, "batches": s.batches, "retries": s.retries,
                "last_error": s.last_error}


class _Stopped(Exception):
    """Stop was asked while a step kept failing: leave without acknowledging."""


def _stage(exc: BatonError) -> str:
    if isinstance(exc, ContractViolation) and exc.direction == "output":
        return "output_contract"
    return "model"
