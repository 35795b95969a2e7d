"""``mqtt://HOST:PORT/TOPIC``: MQTT 5 with QoS 1, via paho-mqtt 2.

Source: a persistent session (clean start off, ``?session_expiry=`` seconds, default 7
days) under a client id derived from the group and the topic (``?client_id=`` to choose
it), subscribed at QoS 1. Messages are acknowledged (PUBACK) only when the pipeline acks
them (paho's ``manual_ack``), so a message delivered to an engine that dies before its
output is written is sent again when the session reconnects. The record key is the MQTT 5
user property ``key``; other user properties become headers.

Limits that come from MQTT itself, not from this connector:

- A session only receives what is published *after* its first subscription: start the
  engine once (or open the source once) before publishing, or those messages are gone.
- While the engine is away the broker queues for the session only up to its own limit
  (Mosquitto: ``max_queued_messages``, default 1000; beyond it new messages are dropped) and
  for ``session_expiry`` seconds. Size both for the longest outage you must survive.
- While connected, the broker sends at most its in-flight window of unacknowledged
  messages (Mosquitto: ``max_inflight_messages``, default 20), so micro-batches stay that
  small; a backlog queued while the engine was away arrives at once and waits in memory.
- While disconnected, ``read`` hands nothing out. After a reconnect that kept the session,
  the broker sends again every message it has had no PUBACK for, with the same packet id
  and the DUP flag: messages of the old connection not yet handed out are dropped here
  (their copies take their place), and the copies of messages the pipeline still holds
  are dropped too, their PUBACK going out on the new connection when the pipeline
  acknowledges them. A packet id without its PUBACK cannot name another message, so this
  never drops one by mistake. Without the session (expired, or a broker that keeps none)
  the broker has forgotten them: they are not acknowledged and do not come again.
- There is no replay: once acknowledged, a message cannot be read again (``baton replay``
  from an MQTT dead-letter topic sees only what arrives after it subscribed).
- Mosquitto may lose PUBACKs that it had not read yet when a client hangs up while it is
  still writing to it; ``close`` waits for an UNSUBACK round trip first, so acknowledged
  messages are not delivered again after a clean stop.

Sink: publishes at QoS 1 with the key as user property ``key`` and returns once the broker
acknowledged every message (PUBACK). A failed write drops the client (and whatever it still
queued) and reconnects on the next write, so retries never pile up copies.

Credentials: ``mqtt://USER:PASSWORD@...`` (the password may come from ``?password_env=``/
``?password_file=``). TLS: ``mqtts://`` (default port 8883) with ``?ca=``, and
``?cert=``/``?key=`` when the broker asks for client certificates
(``require_certificate``); the broker's certificate and host name are always verified.

paho runs its network loop in its own thread; callbacks hand messages to the event loop
with ``call_soon_threadsafe``, and nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any

from baton.streams.base import Message, OptionKind, OutRecord, StreamURL
from baton.streams.connectors._mqtt_session import (
    MqttSession,
    SourceSession,
    mqtt_error,
    mqtt_properties,
)
from baton.streams.connectors._support import (
    KEY_HEADER,
    Inbox,
    number,
    reason,
    safe_name,
)
from baton.streams.security import PASSWORD_FROM, TLS_FILES

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = ("paho.mqtt", "paho-mqtt")
OPTIONS: dict[str, OptionKind] = {"client_id": "text", "group": "text",
                                   "session_expiry": "number", "timeout": "number",
                                   **PASSWORD_FROM, **TLS_FILES}

def _client_id(url: StreamURL, group: str) -> str:
    digest = hashlib.sha256(url.name.encode()).hexdigest()[:10]
    return url.option("client_id", f"{safe_name(group)[:40]}-{digest}")


class MqttSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.url = url
        self.inbox: Inbox[Any] = Inbox()
        self.session = SourceSession(url, _client_id(url, url.option("group", group)),
                                     self.inbox)

    async def open(self) -> None:
        await self.session.close()
        self.inbox.clear()
        await self.session.connect()

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        # While disconnected, hand nothing out: an ack could not reach the broker, which
        # sends those messages again if the session survives (then they are dropped here).
        if not self.session.connected:
            raise mqtt_error("receive", self.url, self.session.lost or "not connected")
        got = await self.inbox.take(max_records, timeout)
        s = self.session
        with s.lock:  # a copy sent again after a reconnect is known by its packet id
            s.unacked.update((m.mid, "held") for generation, m in got
                             if m.qos > 0 and generation == s.generation)
        return [self._message(generation, m) for generation, m in got]

    def _message(self, generation: int, m: Any) -> Message:
        props = getattr(m.properties, "UserProperty", None) or []
        headers = {str(k): str(v) for k, v in props}
        key = headers.pop(KEY_HEADER, None)
        return Message(key, bytes(m.payload), (generation, m.mid, m.qos), headers)

    async def ack(self, messages: Sequence[Message]) -> None:
        s = self.session
        with s.lock:  # paho's thread cannot start a new connection while we ack
            for m in messages:
                generation, mid, qos = m.position
                if qos == 0 or generation < s.session_since:
                    continue  # nothing to acknowledge, or the broker forgot it
                live = s.connected and s.client is not None
                if live and (generation == s.generation or s.unacked.get(mid) == "resent"):
                    s.client.ack(mid, qos)
                    s.unacked.pop(mid, None)
                elif mid in s.unacked:
                    s.unacked[mid] = "acked"  # PUBACK when the broker sends it again

    async def lag(self) -> int | None:
        """Messages received and not yet read. MQTT does not tell what the broker still
        queues for the session, so this is a lower bound."""
        return len(self.inbox)

    async def close(self) -> None:
        with self.session.lock:  # what was handed out is abandoned: the broker resends it
            self.session.forget(self.session.generation + 1)
        await self.session.close()


class MqttSink:
    def __init__(self, url: StreamURL) -> None:
        self.url = url
        self.timeout = number(url, "timeout", 30)
        self.session = MqttSession(url, "", persistent=False)

    async def open(self) -> None:
        await self.session.close()
        await self.session.connect()

    async def write(self, records: Sequence[OutRecord]) -> None:
        from paho.mqtt.packettypes import PacketTypes

        if not records:
            return
        if self.session.client is None:
            await self.session.connect()
        if not self.session.connected:  # paho would queue them until it reconnects
            why = self.session.lost or "not connected"
            await self.session.close()
            raise mqtt_error("publish", self.url, why)
        client = self.session.client
        infos = []
        for r in records:
            props = mqtt_properties(PacketTypes.PUBLISH)
            pairs = [*([(KEY_HEADER, r.key)] if r.key is not None else []),
                     *r.headers.items()]
            if pairs:
                props.UserProperty = pairs
            infos.append(client.publish(self.url.name, r.value, qos=1, properties=props))
        try:
            await asyncio.to_thread(_wait_published, infos, self.timeout, self.session)
        except (RuntimeError, ValueError, TimeoutError) as exc:
            why = reason(exc) if self.session.connected else self.session.lost or reason(exc)
            await self.session.close()  # drop what paho still holds: the retry resends
            raise mqtt_error("publish", self.url, why) from None

    async def close(self) -> None:
        await self.session.close()


def _wait_published(infos: list[Any], timeout: float, session: MqttSession) -> None:
    """Wait for every PUBACK; give up at once when the connection drops."""
    deadline = time.monotonic() + timeout
    for info in infos:
        while not info.is_published():
            if not session.connected:
                raise RuntimeError(session.lost or "disconnected")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not acknowledged by the broker within {timeout:.0f}s")
            info.wait_for_publish(0.1)


def open_source(url: StreamURL, *, group: str) -> MqttSource:
    return MqttSource(url, group)


def open_sink(url: StreamURL) -> MqttSink:
    return MqttSink(url)
