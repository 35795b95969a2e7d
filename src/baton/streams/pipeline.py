"""The consume -> check -> predict -> produce -> acknowledge loop of one stream binding.

Delivery is at least once: a batch of input messages is acknowledged only after every one
of them has its output or its dead letter durably written, and batches are written and
acknowledged in the order they were read. A few micro-batches are in flight per binding
(``in_flight``, default 3): while one is written and acknowledged, the next is being scored
and the one after it read, so neither the broker round trips nor the worker wait for each
other. Beyond that window nothing more is read (backpressure). A model that is briefly
unavailable (restarting, queue full) is waited for, never dead-lettered; a sink that refuses
writes stalls the loop, and nothing after it is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from baton.backoff import Backoff
from baton.batch import Batch
from baton.errors import BatonError, ContractViolation, ModelError, ModelNotReady, WorkerError
from baton.streams.base import (
    Message,
    OutRecord,
    Sink,
    Source,
    open_sink,
    open_source,
    redact_url,
    url_secrets,
)
from baton.streams.binding import StreamBinding, StreamStats
from baton.streams.records import (
    ModelIdentity,
    StreamModel,
    dead_letter,
    decode_messages,
    output_record,
    output_records,
)

log = logging.getLogger("baton.streams")

T = TypeVar("T")


class Scored(NamedTuple):
    """A micro-batch scored: the version that scored it, its outputs, its dead letters."""

    model: StreamModel
    outputs: list[OutRecord]
    dead: list[OutRecord]


@dataclass(frozen=True)
class _Ends:
    """A connected binding's streams: where records come from and where they go."""

    source: Source
    sink: Sink | None
    dead: Sink


def _identity(svc: StreamModel) -> ModelIdentity:
    return ModelIdentity(svc.name, svc.version, svc.bundle.digest)


class StreamPipeline:
    def __init__(self, binding: StreamBinding, service: Callable[[], StreamModel]) -> None:
        """``service()`` returns the model version to use now (it follows version switches)."""
        self.binding = binding
        self.service = service
        self.stats = StreamStats()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        #: The connected streams, kept to close them (set before they are opened).
        self._ends: _Ends | None = None
        self._running = False
        #: Every end opened once (the input subscribed): until then the engine is not ready,
        #: since a broker that deals messages to the subscribers present (MQTT's shared
        #: subscriptions) would give this engine none of what is published meanwhile.
        self._opened = False
        self._waiting_for_model: str | None = None
        #: The binding's passwords and tokens: no error text it shows may contain them.
        self._secrets: list[str] = []

    async def run(self) -> None:
        if self._stopping.is_set():  # stopped before it began: nothing to connect or drain
            self._stopped.set()
            return
        self._running = True
        try:
            await self._flow(await self._connect())
        except _Stopped:
            log.info("%s: stream stopped with batches unacknowledged (they will be "
                     "redelivered)", self.binding.model)
        except Exception as exc:  # nobody awaits this task: never let it die silently
            self.stats.last_error = f"stream stopped: {exc}"
            log.exception("%s: stream stopped by an unexpected error", self.binding.model)
        finally:
            await self._close()
            self._stopped.set()

    async def stop(self) -> None:
        """Finish the batches in flight, then stop (nothing half-done is acknowledged)."""
        self._stopping.set()
        if self._running:
            await self._stopped.wait()

    # -- steps ---------------------------------------------------------------------------
    async def _connect(self) -> _Ends:
        b = self.binding
        self._secrets = [secret for raw in (b.input, b.output, b.dead_letter) if raw
                         for secret in url_secrets(raw)]
        ends = self._ends = _Ends(open_source(b.input, group=b.consumer_group),
                                  open_sink(b.output) if b.output else None,
                                  open_sink(b.dead_letter))
        for name, part in (("input", ends.source), ("output", ends.sink),
                           ("dead letter", ends.dead)):
            if part is not None:
                await self._retry(f"open {name}", part.open)
        self._opened = True
        log.info("%s: streaming %s -> %s (dead letters: %s)", b.model, redact_url(b.input),
                 redact_url(b.output) if b.output else b.kind, redact_url(b.dead_letter))
        return ends

    async def _flow(self, ends: _Ends) -> None:
        """Read ahead while earlier batches are scored and written; acknowledge in order."""
        window = asyncio.Semaphore(max(1, self.binding.in_flight))
        order: asyncio.Queue[_Batch | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_ahead(ends.source, order, window))
        writer = asyncio.create_task(self._write_in_order(ends, order, window))
        watcher = asyncio.create_task(self._watch_lag(ends.source))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a step that gave up (stop asked while it kept failing)
            await writer
        finally:
            tasks: list[asyncio.Task[Any]] = [reader, writer, watcher]
            while not order.empty():  # read, never written: redelivered after the restart
                item = order.get_nowait()
                if item is not None:
                    tasks.append(item.scoring)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.stats.in_flight = 0

    async def _read_ahead(self, source: Source, order: asyncio.Queue[_Batch | None],
                          window: asyncio.Semaphore) -> None:
        try:
            while not self._stopping.is_set():
                await window.acquire()
                if self._stopping.is_set():
                    break
                messages = await self._read(source)
                if not messages:
                    window.release()
                    continue
                self.stats.in_flight += 1
                order.put_nowait(_Batch(messages, asyncio.create_task(self._score(messages))))
        finally:
            order.put_nowait(None)  # the writer finishes what was read, then ends

    async def _write_in_order(self, ends: _Ends, order: asyncio.Queue[_Batch | None],
                              window: asyncio.Semaphore) -> None:
        while (item := await order.get()) is not None:
            svc, outputs, dead = await item.scoring
            await self._deliver(ends, item.messages, svc, outputs, dead)
            self.stats.in_flight -= 1
            window.release()

    async def _watch_lag(self, source: Source) -> None:
        """Sample the input's backlog now and then; a failure only leaves it unknown."""
        lag = getattr(source, "lag", None)
        if lag is None:
            return
        while True:
            try:
                self.stats.lag = await asyncio.wait_for(lag(), 10)
            except Exception as exc:  # the broker is away: the read path reports that
                log.debug("%s: input backlog unknown: %s", self.binding.model, exc)
                self.stats.lag = None
            await asyncio.sleep(self.binding.lag_interval)

    async def _read(self, source: Source) -> list[Message]:
        return await self._retry("read input", lambda: source.read(
            self.binding.max_batch, self.binding.read_timeout))

    async def _deliver(self, ends: _Ends, messages: Sequence[Message], svc: StreamModel,
                       outputs: list[OutRecord], dead: list[OutRecord]) -> None:
        """Write outputs and dead letters durably, then acknowledge the inputs."""
        self._count_dead(svc, dead)
        sink, dead_sink, source = ends.sink, ends.dead, ends.source
        if outputs:
            if sink is None:  # only a labels binding has no output, and it scores nothing
                raise RuntimeError(f"{self.binding.model}: outputs but no output stream")
            await self._retry("write output", lambda: sink.write(outputs))
        if dead:
            await self._retry("write dead letters", lambda: dead_sink.write(dead))
        await self._retry("acknowledge input", lambda: source.ack(messages))
        self.stats.consumed += len(messages)
        self.stats.produced += len(outputs)
        self.stats.dead_lettered += len(dead)
        self.stats.batches += 1

    def _count_dead(self, svc: StreamModel, dead: Sequence[OutRecord]) -> None:
        """Count dead letters as the model's errors, by stage and code (a hook)."""
        if svc.metrics is not None:
            for letter in dead:
                stage = letter.headers["baton-stage"]
                svc.metrics.error("output" if stage == "output_contract" else stage,
                                  letter.headers["baton-code"])

    async def _score(self, messages: Sequence[Message]) -> Scored:
        svc = await self._ready_service()
        model = _identity(svc)
        if svc.records is None:  # streams are bound to records models only
            raise RuntimeError(f"{model.name} has a tensor contract: a stream carries records")
        decoded = decode_messages(messages, svc.records, model)
        outputs: list[OutRecord] = []
        dead = list(decoded.dead)
        m = svc.metrics
        if decoded.batch is None:
            return Scored(svc, outputs, dead)
        try:
            # What scored it names itself: after a hand-off, the successor (its version on the
            # outputs, in the prediction log and in the metrics).
            svc, out = await self._predict(svc, decoded.batch)
            model, m = _identity(svc), svc.metrics
            if m is not None:
                m.records("stream", out.rows)
            ids = svc.log_predictions(decoded.batch, out, [msg.key for msg in decoded.good])
            return Scored(svc, output_records(decoded.good, out, model, ids), dead)
        except (ModelError, WorkerError, ContractViolation) as exc:
            if len(decoded.good) == 1:
                return Scored(svc, [], [*dead, dead_letter(decoded.good[0], _stage(exc), exc,
                                                           model)])
        for i, msg in enumerate(decoded.good):  # isolate the record(s) that broke the model
            one = decoded.batch.slice(i, i + 1)
            try:
                scorer, out = await self._predict(svc, one)
                [pid] = scorer.log_predictions(one, out, [msg.key])
                outputs.append(output_record(msg, out.to_records()[0], _identity(scorer), pid))
            except (ModelError, WorkerError, ContractViolation) as exc:
                dead.append(dead_letter(msg, _stage(exc), exc, model))
        if m is not None and outputs:
            m.records("stream", len(outputs))
        return Scored(svc, outputs, dead)

    async def _predict(self, svc: StreamModel, batch: Batch) -> tuple[StreamModel, Batch]:
        """The version that scored the batch (``svc``, or its successor after a hand-off)
        and its outputs."""
        backoff = Backoff(0.1, 10.0)
        while True:
            try:
                scorer = svc.answering()
                out = await scorer.predict(batch)
                self._model_back()
                return scorer, out
            except ModelNotReady as exc:  # restarting or queue full: wait, never dead-letter
                self.stats.retries += 1
                self._model_waiting(exc.message)
                await backoff.sleep()

    async def _ready_service(self) -> StreamModel:
        backoff = Backoff(0.1, 10.0)
        while True:
            try:
                svc = self.service()
                if svc.ready:
                    return svc
                why = f"{self.binding.model} is not ready"
            except BatonError as exc:
                why = exc.message
            self._model_waiting(why)
            await backoff.sleep()

    def _model_waiting(self, why: str) -> None:
        self.stats.last_error = self._waiting_for_model = f"model: {why}"

    def _model_back(self) -> None:
        """The model answers again: clear the error it caused (not a broker step's)."""
        if self._waiting_for_model is not None:
            if self.stats.last_error == self._waiting_for_model:
                self.stats.last_error = None
            self._waiting_for_model = None

    async def _retry(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
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
                said = exc.message if isinstance(exc, BatonError) else \
                    f"unexpected {type(exc).__name__}: {exc}"
                message = self._scrub(said)
                self.stats.retries += 1
                self.stats.last_error = f"{what}: {message}"
                # The traceback of an unexpected error helps, unless its text held a secret.
                trace = not isinstance(exc, BatonError) and message == said
                delay = backoff.next()
                log.warning("%s: cannot %s (retrying in %.1fs): %s", self.binding.model, what,
                            delay, message, exc_info=trace)
                await self._pause(delay)

    def _scrub(self, text: str) -> str:
        """Connectors scrub their own errors; this also covers what a client raised
        outside them (the "unexpected" ones)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _pause(self, delay: float) -> None:
        """Back off before a retry, but leave at once when stop is asked meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return
        raise _Stopped()

    async def _close(self) -> None:
        ends = self._ends
        for part in (ends.source, ends.sink, ends.dead) if ends is not None else ():
            if part is not None:
                try:
                    await part.close()
                except Exception as exc:
                    log.warning("closing a stream failed: %s", exc)

    @property
    def unreachable(self) -> str | None:
        """Why a broker step keeps failing (or the stream stopped): /v2/health/ready's 503."""
        error = self.stats.last_error
        if error is None and not self._opened and not self._stopping.is_set():
            return f"{redact_url(self.binding.input)}: opening the streams"
        return None if error in (None, self._waiting_for_model) else \
            f"{redact_url(self.binding.input)}: {error}"

    def describe(self) -> dict[str, Any]:
        b, s = self.binding, self.stats
        return {"model": b.model, "kind": b.kind, "input": redact_url(b.input),
                "output": redact_url(b.output) if b.output else None,
                "dead_letter": redact_url(b.dead_letter), "group": b.consumer_group,
                **{name: getattr(s, name) for name in _SHOWN}}


#: The statistics /v1/models shows for a binding.
_SHOWN = ("consumed", "produced", "dead_lettered", "batches", "retries", "in_flight", "lag",
          "last_error")


@dataclass(slots=True)
class _Batch:
    """Messages read, and their scoring (running, or done and waiting to be written)."""

    messages: list[Message]
    scoring: asyncio.Task[Scored]


class _Stopped(Exception):
    """Stop was asked while a step kept failing: leave without acknowledging."""


def _stage(exc: BatonError) -> str:
    if isinstance(exc, ContractViolation) and exc.direction == "output":
        return "output_contract"
    return "model"
