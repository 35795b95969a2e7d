"""``baton replay``: send dead letters back to the input once their cause is fixed.

Each dead letter's original payload and key are written to the input destination; the dead
letter is acknowledged only after that write is durable, so a replay interrupted halfway
loses nothing and at worst sends a record twice.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import orjson

from baton.streams.base import Message, OutRecord, open_sink, open_source


@dataclass
class ReplayResult:
    replayed: int = 0
    skipped: int = 0
    by_stage: dict[str, int] = field(default_factory=dict)


def payload_of(msg: Message) -> tuple[str | None, bytes, str] | None:
    """(key, original payload, stage) of a dead letter, or None if it is not one."""
    try:
        body = orjson.loads(msg.value)
        raw = body["payload"]
        data = base64.b64decode(raw) if body.get("payload_encoding") == "base64" \
            else raw.encode()
        return body.get("key"), data, str(body.get("stage", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


async def replay(dead_letter: str, target: str, *, stages: set[str] | None = None,
                 limit: int | None = None, batch: int = 256,
                 group: str = "baton-replay") -> ReplayResult:
    source = open_source(dead_letter, group=group)
    sink = open_sink(target)
    result = ReplayResult()
    await source.open()
    await sink.open()
    try:
        while limit is None or result.replayed < limit:
            want = batch if limit is None else min(batch, limit - result.replayed)
            messages = await source.read(want, 0.5)
            if not messages:
                break
            out: list[OutRecord] = []
            for m in messages:
                parsed = payload_of(m)
                if parsed is None or (stages and parsed[2] not in stages):
                    result.skipped += 1
                    continue
                key, data, stage = parsed
                out.append(OutRecord(key, data))
                result.by_stage[stage] = result.by_stage.get(stage, 0) + 1
            if out:
                await sink.write(out)
            await source.ack(messages)
            result.replayed += len(out)
    finally:
        await source.close()
        await sink.close()
    return result
