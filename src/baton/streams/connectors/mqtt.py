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
import ssl
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from baton.streams.base import Message, OptionKind, OutRecord, StreamError, StreamURL
from baton.streams.connectors._support import (
    KEY_HEADER,
    Inbox,
    address,
    explain,
    number,
    reason,
    safe_name,
    stream_error,
)
from baton.streams.security import PASSWORD_FROM, TLS_FILES

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = ("paho.mqtt", "paho-mqtt")
OPTIONS: dict[str, OptionKind] = {"client_id": "text", "group": "text",
                                   "session_expiry": "number", "timeout": "number",
                                   **PASSWORD_FROM, **TLS_FILES}

DEFAULT_PORT = 1883
TLS_PORT = 8883
CONNECT_TIMEOUT = 10.0


def _error(what: str, url: StreamURL, exc: BaseException | str) -> StreamError:
    return stream_error("mqtt", what, url, exc)


def _settle(fut: asyncio.Future[None], error: str | None) -> None:
    if not fut.done():
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(StreamError(error))


class _Session:
    """One paho client: connect without blocking the loop, know whether it is connected."""

    def __init__(self, url: StreamURL, client_id: str, persistent: bool) -> None:
        self.url = url
        self.client_id = client_id
        self.persistent = persistent
        self.client: Any = None
        self.lock = threading.Lock()  # guards connected/generation against paho's thread
        self.connected = False
        self.generation = 0
        self.lost = ""
        self.gone = threading.Event()  # set by paho's thread when a connection ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes

        if not self.url.name:
            raise _error("open", self.url, "the URL names no topic (mqtt://HOST:PORT/TOPIC)")
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=self.persistent)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(1, 5)
        if self.url.username:
            client.username_pw_set(self.url.username, self.url.password)
        if self.url.tls_context is not None:
            client.tls_set_context(self.url.tls_context)
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = (int(number(self.url, "session_expiry", 604800))
                                       if self.persistent else 0)
        self.client = client
        self.hook(client)
        host, port = address(self.url, TLS_PORT if self.url.tls else DEFAULT_PORT)
        try:
            await asyncio.to_thread(client.connect, host, port, 30,
                                    clean_start=not self.persistent, properties=props)
        except ssl.SSLError as exc:  # the TLS handshake failed: the broker was reached
            self.client = None
            raise _error("connect", self.url, exc) from None
        except (OSError, ValueError) as exc:
            self.client = None
            raise StreamError(f"cannot reach the mqtt broker at {host}:{port} for "
                              f"{self.url.redacted}: {explain(reason(exc), self.url)}",
                              details={"url": self.url.redacted}) from None
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), CONNECT_TIMEOUT)
        except (StreamError, TimeoutError) as exc:
            await self.close()
            raise _error("connect", self.url, exc.message if isinstance(exc, StreamError)
                         else f"no answer within {CONNECT_TIMEOUT:.0f}s") from None

    def hook(self, client: Any) -> None:
        """Set more callbacks before connecting (the source's subscription, its messages)."""

    def renew(self, session_present: bool) -> None:
        """Runs under the lock as a connection begins, before any of its messages."""

    def after_connect(self, client: Any, session_present: bool) -> bool:
        """Runs in paho's thread once connected; False when ready is signalled later."""
        return True

    def signal_ready(self, error: str | None = None) -> None:
        if self._loop is not None and self._ready is not None:
            try:
                self._loop.call_soon_threadsafe(_settle, self._ready, error)
            except RuntimeError:  # the loop is gone: nobody waits any more
                pass

    def _on_connect(self, client: Any, _ud: Any, flags: Any, rc: Any, _props: Any) -> None:
        if rc.is_failure:
            self.lost = f"connection refused by the broker: {rc}"
            self.signal_ready(self.lost)
            return
        with self.lock:
            self.generation += 1
            self.connected = True
            self.renew(flags.session_present)
        if self.after_connect(client, flags.session_present):
            self.signal_ready()

    def _settle_acks(self, client: Any) -> None:
        """Return once the broker has processed every PUBACK sent so far.

        PUBACK has no reply, and a broker that is still writing to a client that hangs up
        can drop what it had not read yet (Mosquitto does: the acknowledged messages then
        come again). The broker answers packets in order, so the UNSUBACK of a filter we
        never subscribed to arrives only after it has handled every PUBACK before it.
        """
        done = threading.Event()
        client.on_unsubscribe = lambda *_args: done.set()
        client.unsubscribe(f"baton-sync/{self.client_id}")
        done.wait(5)

    def _on_disconnect(self, _c: Any, _ud: Any, _flags: Any, rc: Any, _props: Any) -> None:
        with self.lock:
            self.connected = False
            self.lost = f"disconnected from the broker ({rc}); reconnecting"
        self.gone.set()
        # Hung up on before accepting the connection (a TLS listener reached without TLS):
        # say so now rather than after CONNECT_TIMEOUT. Once connected this settles nothing.
        self.signal_ready(f"the broker closed the connection before accepting it ({rc})")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        with self.lock:
            was_connected, self.connected = self.connected, False
        if was_connected:
            if self.persistent:
                await asyncio.to_thread(self._settle_acks, client)
            # DISCONNECT goes out after every PUBACK queued before it; wait until it has
            # left, since stopping paho's loop first would drop what is still queued.
            self.gone.clear()
            client.disconnect()
            await asyncio.to_thread(self.gone.wait, 5)
        await asyncio.to_thread(client.loop_stop)


class _SourceSession(_Session):
    def __init__(self, url: StreamURL, client_id: str, inbox: Inbox[Any]) -> None:
        super().__init__(url, client_id, persistent=True)
        self.inbox = inbox
        #: Packet id -> state of each message handed out whose PUBACK was never sent:
        #: "held" (in the pipeline), "resent" (in the pipeline, and its copy came on a later
        #: connection and was dropped), "acked" (acknowledged while no PUBACK could go out:
        #: sent when its copy comes). The broker reuses no such id, so a DUP copy with it
        #: is that very message. Guarded by ``lock``.
        self.unacked: dict[int, str] = {}
        #: Messages of connections before this generation belong to a session the broker
        #: forgot (or to a closed source): nothing to acknowledge for them.
        self.session_since = 0

    def renew(self, session_present: bool) -> None:
        if not session_present:
            self.forget(self.generation)

    def forget(self, since: int) -> None:
        """Under the lock: messages of connections before ``since`` are not acknowledged."""
        self.unacked.clear()
        self.session_since = since

    def hook(self, client: Any) -> None:
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    def after_connect(self, client: Any, session_present: bool) -> bool:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        if session_present and self._loop is not None:
            # The session kept every unacknowledged message and sends them all again now:
            # drop the copies still waiting here, or each would be scored twice. (Without
            # the session they are nowhere else, so they stay.) Runs before any message of
            # this connection reaches the inbox: call_soon_threadsafe keeps the order.
            generation = self.generation
            self._loop.call_soon_threadsafe(
                self.inbox.discard, lambda item: item[0] < generation)

        # Every connect: harmless when the session kept the subscription, and it repairs
        # a session the broker forgot (retained messages only for a new subscription).
        client.subscribe(self.url.name, options=SubscribeOptions(qos=1, retainHandling=1))
        return False  # ready once the SUBACK arrives

    def _on_subscribe(self, _c: Any, _ud: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        failed = [c for c in codes if c.is_failure]
        self.signal_ready(f"subscription to {self.url.name!r} refused: {failed[0]}"
                          if failed else None)

    def _on_message(self, client: Any, _ud: Any, msg: Any) -> None:
        with self.lock:
            generation = self.generation
            state = self.unacked.get(msg.mid) if msg.dup else None
            if state == "acked":  # done already: the broker only missed its PUBACK
                del self.unacked[msg.mid]
                client.ack(msg.mid, msg.qos)
            elif state is not None:  # still in the pipeline: acknowledged from there
                self.unacked[msg.mid] = "resent"
        if state is None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.inbox.put, (generation, msg))
            except RuntimeError:  # closing: the broker sends it again to the next session
                pass


def _client_id(url: StreamURL, group: str) -> str:
    digest = hashlib.sha256(url.name.encode()).hexdigest()[:10]
    return url.option("client_id", f"{safe_name(group)[:40]}-{digest}")


class MqttSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.url = url
        self.inbox: Inbox[Any] = Inbox()
        self.session = _SourceSession(url, _client_id(url, url.option("group", group)),
                                      self.inbox)

    async def open(self) -> None:
        await self.session.close()
        self.inbox.clear()
        await self.session.connect()

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        # While disconnected, hand nothing out: an ack could not reach the broker, which
        # sends those messages again if the session survives (then they are dropped here).
        if not self.session.connected:
            raise _error("receive", self.url, self.session.lost or "not connected")
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
        self.session = _Session(url, "", persistent=False)

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
            raise _error("publish", self.url, why)
        client = self.session.client
        infos = []
        for r in records:
            props = _properties(PacketTypes.PUBLISH)
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
            raise _error("publish", self.url, why) from None

    async def close(self) -> None:
        await self.session.close()


def _wait_published(infos: list[Any], timeout: float, session: _Session) -> None:
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


def _properties(packet_type: int) -> Properties:
    """MQTT v5 properties of one packet (paho's Properties, whose constructor is untyped)."""
    from paho.mqtt.properties import Properties

    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
