"""``mqtt://HOST:PORT/TOPIC``: MQTT 5 with QoS 1, via paho-mqtt 2.

Source: a subscription to the topic; with ``?shared=true``, engines of one ``--group``
share the input through an MQTT 5 shared subscription, ``$share/GROUP/TOPIC``: the broker
hands each message to one member (Mosquitto: in turn, at publish time). Opt-in, because
Mosquitto before 2.0.19 forgets shared subscriptions on restart (below); without it each
engine gets every message. Each engine has its own persistent session (clean start off,
``?session_expiry=`` seconds, default 7 days), under a client id made of the group, a
digest of the topic, the host name and the pid (``?client_id=`` to choose it), so engines
never take each other's session. Messages are acknowledged (PUBACK) only when the pipeline
acks them (paho's ``manual_ack``); the record key is the MQTT 5 user property ``key``,
other user properties become headers.

An engine that goes away leaves its session behind, with what the broker assigned to it
and never had a PUBACK for. Mosquitto (2.0) gives none of it to the other members: a
session that ends (expiry 0) takes its messages with it, one that is kept holds them (and
still gets its turn of new ones) until it expires. So the session is kept, and a notice
names it: a retained message ``baton/orphans/GROUP-DIGEST/CLIENT_ID`` whose payload is the
client id, published on ``close`` and, for an engine killed or cut off, by the broker (the
session's will, after ``WILL_DELAY`` seconds without a reconnect). Every engine of the
group watches these notices:

- An engine that starts inherits a session left behind: it connects under that client
  id, as if it had restarted (a single engine keeps its order across a clean restart).
- A running engine adopts one after a random wait, claiming it (the notice cleared, which
  the others see): it connects under its client id, unsubscribes it, takes what it holds
  (the unacknowledged ones come again, then the queue) into its own inbox, and once nothing
  of it is unacknowledged and nothing came for ``DRAIN_QUIET`` seconds, ends it (session
  expiry 0 on DISCONNECT).

What that costs: a killed engine's messages wait ``WILL_DELAY`` seconds and come again
once (at-least-once: the ones the engine had scored without acknowledging are the
duplicates, within its in-flight window); an engine restarted before its will went out
starts a new session and adopts the old one, so its order is kept only per session. The
notices need publish and subscribe rights on ``baton/orphans/#``.

Backlog: the source sends Receive Maximum (``?receive_maximum=``, default 1000) when it
connects, so the broker has at most that many messages unacknowledged on the way to it
and keeps the rest queued (Mosquitto honours it, after a reconnect too): the engine's
memory holds at most that many. Size it above the pipeline's micro-batches in flight.

Limits that come from MQTT and Mosquitto, not from this connector:

- A session only receives what is published *after* its first subscription: start the
  engine once (or open the source once) before publishing, or those messages are gone.
- Mosquitto queues for a session only up to ``max_queued_messages`` (default 1000; beyond
  it new messages are dropped), for ``session_expiry`` seconds. Size both for the longest
  outage you must survive; with N engines each session gets about 1/N of the messages.
- Mosquitto before 2.0.19 does not keep shared subscriptions across its own restart (the
  sessions and their messages, yes): with ``?shared=true``, what is published after the
  broker came back and before the engines subscribed again (paho reconnects within 1 to
  5 s) is dropped. A plain subscription, the default, it keeps.
- After a reconnect that kept the session, the broker sends again every message it has had
  no PUBACK for, with the same packet id and the DUP flag: messages of the old connection
  not yet handed out are dropped here (their copies take their place), and the copies of
  messages the pipeline still holds are dropped too, their PUBACK going out on the new
  connection when the pipeline acknowledges them. While disconnected, ``read`` hands
  nothing out. Without the session (expired) the broker has forgotten them.
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
import os
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

from baton.streams.base import Message, OptionKind, OutRecord, StreamError, StreamURL
from baton.streams.connectors._mqtt_session import (
    MqttSession,
    NoticeReader,
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
                                   "shared": ("true", "false"),
                                   "session_expiry": "number", "receive_maximum": "number",
                                   "timeout": "number", **PASSWORD_FROM, **TLS_FILES}
#: An adopted session is drained once nothing of it is waiting or unacknowledged and no
#: message came for this long (the broker sends its queue as acknowledgements free room).
DRAIN_QUIET = 3.0
#: Engines that saw the same notice wait a random time in this range before claiming it:
#: the first claim (the notice cleared) reaches the others, who leave it alone.
CLAIM_JITTER = (0.5, 2.0)


def _digest(url: StreamURL) -> str:
    return hashlib.sha256(url.name.encode()).hexdigest()[:10]


def _client_id(url: StreamURL, group: str) -> str:
    engine = f"{safe_name(socket.gethostname())[:30]}-{os.getpid()}"
    return url.option("client_id", f"{safe_name(group)[:40]}-{_digest(url)}-{engine}")


class MqttSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.url = url
        self.inbox: Inbox[Any] = Inbox()
        group = url.option("group", group)
        # Opt-in: Mosquitto before 2.0.19 forgets shared subscriptions when it restarts, and
        # drops what is published before the engines subscribe again (a plain subscription
        # it keeps); one engine loses nothing without it.
        self.share = f"$share/{safe_name(group)}/{url.name}" \
            if url.option("shared", "false") == "true" else url.name
        self.notices = f"baton/orphans/{safe_name(group)[:40]}-{_digest(url)}"
        self.own_id = _client_id(url, group)
        self.session = self._session(self.own_id, adopted=False)
        self.inherit = "client_id" not in url.options
        self.adopted: dict[str, SourceSession] = {}
        self.adopting: dict[str, asyncio.Task[None]] = {}
        self.wanted: set[str] = set()  # notices not yet claimed by anyone

    def _session(self, client_id: str, adopted: bool) -> SourceSession:
        return SourceSession(self.url, client_id, self.inbox, self.share, self.notices,
                             self._notice, adopted=adopted)

    async def open(self) -> None:
        await self.session.close()
        self.inbox.discard(lambda item: item[0] is self.session)
        with self.session.lock:
            self.session.waiting = 0
        if self.inherit:  # once: carry on with a session an engine left, in its order
            self.inherit = False
            owner = await self._left_behind()
            if owner is not None:
                self.session = self._session(owner, adopted=False)
        await self.session.connect()

    async def _recover(self) -> None:
        """Another connection took the session: take back this engine's own session, or,
        if the session was inherited (another engine inherits it too), start its own."""
        old = self.session
        await old.close()
        with old.lock:  # what was handed out is abandoned: the session's holder gets it
            old.forget(old.generation + 1)
        self.inbox.discard(lambda item: item[0] is old)
        self.session = self._session(self.own_id if old.taken_over else old.client_id,
                                     adopted=False)
        await self.session.connect()

    async def _left_behind(self) -> str | None:
        """The client id of a session an engine of the group left behind, if any."""
        reader = NoticeReader(self.url, self.notices)
        try:
            await reader.connect()
        except StreamError:
            return None  # the real connection says why
        try:  # engines starting together: the first claim reaches the others
            await asyncio.sleep(random.uniform(0, CLAIM_JITTER[0]))
            with reader.lock:
                topic, owner = min(reader.found.items(), default=(None, None))
            if topic is not None and reader.client is not None:  # claimed
                reader.client.publish(topic, b"", qos=1, retain=True)
            return owner
        finally:
            await reader.close()

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        # While disconnected, hand nothing out: an ack could not reach the broker, which
        # sends those messages again if the session survives (then they are dropped here).
        if not self.session.connected:
            if not (self.session.taken_over or self.session.client is None):
                raise mqtt_error("receive", self.url, self.session.lost or "not connected")
            await self._recover()
        elif not self.session.subscribed and not self.session.adopted:
            # Reconnected, subscription not confirmed yet: say so (the binding shows it, and
            # /v2/health/ready is 503) until the broker queues the input for this session.
            raise mqtt_error("receive", self.url, "connected, not subscribed again yet")
        got = await self.inbox.take(max_records, timeout)
        for s, generation, m in got:
            with s.lock:  # a copy sent again after a reconnect is known by its packet id
                s.waiting -= 1
                if m.qos > 0 and generation == s.generation:
                    s.unacked[m.mid] = "held"
        return [self._message(s, generation, m) for s, generation, m in got]

    def _message(self, s: SourceSession, generation: int, m: Any) -> Message:
        props = getattr(m.properties, "UserProperty", None) or []
        headers = {str(k): str(v) for k, v in props}
        key = headers.pop(KEY_HEADER, None)
        return Message(key, bytes(m.payload), (s, generation, m.mid, m.qos), headers)

    async def ack(self, messages: Sequence[Message]) -> None:
        for m in messages:
            s, generation, mid, qos = m.position
            with s.lock:  # paho's thread cannot start a new connection while we ack
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

    def _notice(self, topic: str, payload: bytes) -> None:
        """A session of the group went away (payload: its client id) or was claimed
        (empty): claim it after a random wait unless another engine does first."""
        owner = payload.decode(errors="replace")
        if not payload:
            self.wanted.discard(topic)
        elif owner != self.session.client_id and topic not in self.adopting:
            self.wanted.add(topic)
            task = asyncio.get_running_loop().create_task(self._adopt(topic, owner))
            self.adopting[topic] = task
            task.add_done_callback(lambda _t: self.adopting.pop(topic, None))

    async def _adopt(self, topic: str, owner: str) -> None:
        await asyncio.sleep(random.uniform(*CLAIM_JITTER))
        client = self.session.client
        if topic not in self.wanted or client is None:
            return
        self.wanted.discard(topic)
        client.publish(topic, b"", qos=1, retain=True)  # claimed: the others leave it
        adopted = self.adopted[topic] = self._session(owner, adopted=True)
        try:
            while not await self._drain(adopted):
                await asyncio.sleep(1.0)  # the broker went away: take the session again
        finally:
            self.adopted.pop(topic, None)
            with adopted.lock:  # what was handed out is abandoned: the broker resends it
                adopted.forget(adopted.generation + 1)
            await adopted.close()
            if not adopted.ended and not adopted.taken_over:
                self._leave_notice(adopted)

    async def _drain(self, adopted: SourceSession) -> bool:
        """Take the session over, and end it once drained: True when done (ended, or
        taken over by someone else), False when the connection failed."""
        await adopted.close()  # the previous try's client, if any
        try:
            await adopted.connect()
        except StreamError:
            return adopted.taken_over
        while adopted.connected:
            if not adopted.present or adopted.drained(DRAIN_QUIET):
                await adopted.close(end=True)
                return True
            await asyncio.sleep(0.5)
        return adopted.taken_over

    def _leave_notice(self, s: SourceSession) -> None:
        """Another engine is to adopt what ``s`` still holds (its own notice went out
        already if it was connected)."""
        if self.session.connected and self.session.client is not None:
            self.session.client.publish(s.notice_topic, s.client_id.encode(), qos=1,
                                        retain=True)

    async def close(self) -> None:
        tasks = [*self.adopting.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # each leaves its notice
        with self.session.lock:
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
