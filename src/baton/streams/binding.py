"""A stream binding (what a model reads and writes) and its running statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StreamBinding:
    """Where a model's records come from and where its scores and dead letters go."""

    model: str
    input: str
    #: Where outputs go; "" for a binding that writes none (e.g. a labels stream).
    output: str
    dead_letter: str
    group: str = ""
    max_batch: int = 256
    read_timeout: float = 0.2
    #: Micro-batches read but not yet acknowledged, at most (1: strictly one at a time).
    in_flight: int = 3
    #: Seconds between two looks at the input's backlog (``lag``), where the connector can tell.
    lag_interval: float = 5.0
    #: What the binding does, as /v1/models shows it: "predictions" (scores) or "labels".
    kind: str = "predictions"

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
    in_flight: int = 0
    #: Records in the input this binding has not read yet (None: the connector cannot tell).
    lag: int | None = None
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)
