"""The paho sessions behind the MQTT connector (:mod:`baton.streams.connectors.mqtt`): one
client each, connected without blocking the event loop; the source's also keeps the packet
ids of messages not yet acknowledged across reconnects, leaves a notice when it goes away
(its will, or on close) and can be adopted by another engine that drains and ends it."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from baton.streams.base import StreamError, StreamURL
from baton.streams.connectors._support import (
    Inbox,
    address,
    explain,
    number,
    reason,
    safe_name,
    stream_error,
)

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

DEFAULT_PORT = 1883
TLS_PORT = 8883
CONNECT_TIMEOUT = 10.0
#: Seconds the broker waits before publishing a vanished session's notice (its will): a
#: connection that comes back sooner (paho retries every 1 to 5 s) cancels it, so a blip
#: never lets another engine take over a live engine's session.
WILL_DELAY = 10
#: The DISCONNECT reason code when another connection with the same client id came.
SESSION_TAKEN_OVER = 0x8E


def mqtt_error(what: str, url: StreamURL, exc: BaseException | str) -> StreamError:
    return stream_error("mqtt", what, url, exc)


def _settle(fut: asyncio.Future[None], error: str | None) -> None:
    if not fut.done():
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(StreamError(error))


class MqttSession:
    """One paho client: connect without blocking the loop, know whether it is connected."""

    def __init__(self, url: StreamURL, client_id: str, persistent: bool,
                 reconnect: bool = True) -> None:
        self.url = url
        self.client_id = client_id
        self.persistent = persistent
        self.reconnect = reconnect
        self.client: Any = None
        self.lock = threading.Lock()  # guards connected/generation against paho's thread
        self.connected = False
        self.generation = 0
        self.lost = ""
        self.taken_over = False  # another connection took this client id (and session)
        self.ended = False  # closed with the session ended
        #: The broker confirmed the subscription on this connection (Mosquitto before
        #: 2.0.19 does not keep shared subscriptions across its restart: until then,
        #: what is published is not queued for this session).
        self.subscribed = False
        self.gone = threading.Event()  # set by paho's thread when a connection ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes

        if not self.url.name:
            raise mqtt_error("open", self.url, "the URL names no topic (mqtt://HOST:PORT/TOPIC)")
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=self.persistent,
                             reconnect_on_failure=self.reconnect)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.reconnect_delay_set(1, 5)
        if self.url.username:
            client.username_pw_set(self.url.username, self.url.password)
        if self.url.tls_context is not None:
            client.tls_set_context(self.url.tls_context)
        props = mqtt_properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = (int(number(self.url, "session_expiry", 604800))
                                       if self.persistent else 0)
        if self.persistent:  # flow control: the broker holds what does not fit
            receive_maximum = int(number(self.url, "receive_maximum", 1000))
            props.ReceiveMaximum = max(1, min(65535, receive_maximum))
        self.client = client
        self.hook(client)
        host, port = address(self.url, TLS_PORT if self.url.tls else DEFAULT_PORT)
        try:
            await asyncio.to_thread(client.connect, host, port, 30,
                                    clean_start=not self.persistent, properties=props)
        except ssl.SSLError as exc:  # the TLS handshake failed: the broker was reached
            self.client = None
            raise mqtt_error("connect", self.url, exc) from None
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
            raise mqtt_error("connect", self.url, exc.message if isinstance(exc, StreamError)
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
            self.connected = self.subscribed = False
            self.taken_over = getattr(rc, "value", None) == SESSION_TAKEN_OVER
        if self.taken_over:  # reconnecting would take it back: the owner decides
            _c.disconnect()
            self.lost = f"disconnected from the broker ({rc}); reconnecting"
        self.gone.set()
        # Hung up on before accepting the connection (a TLS listener reached without TLS):
        # say so now rather than after CONNECT_TIMEOUT. Once connected this settles nothing.
        self.signal_ready(f"the broker closed the connection before accepting it ({rc})")

    def leaving(self, client: Any, end: bool) -> None:
        """Runs before a clean disconnect (``end``: the session ends with it)."""

    async def close(self, end: bool = False) -> None:
        """Disconnect; ``end`` ends the session too (its expiry set to 0 on DISCONNECT)."""
        from paho.mqtt.packettypes import PacketTypes

        client, self.client = self.client, None
        if client is None:
            return
        with self.lock:
            was_connected, self.connected = self.connected, False
        if was_connected:
            self.ended = end
            self.leaving(client, end)
            if self.persistent:
                await asyncio.to_thread(self._settle_acks, client)
            props = None
            if end:
                props = mqtt_properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0
            # DISCONNECT goes out after every PUBACK queued before it; wait until it has
            # left, since stopping paho's loop first would drop what is still queued.
            self.gone.clear()
            client.disconnect(properties=props)
            await asyncio.to_thread(self.gone.wait, 5)
        await asyncio.to_thread(client.loop_stop)


class SourceSession(MqttSession):
    """A persistent session subscribed to the group's shared subscription, or, ``adopted``,
    the session of an engine that went away, taken over to drain what it still holds."""

    def __init__(self, url: StreamURL, client_id: str, inbox: Inbox[Any], share: str,
                 notices: str, on_notice: Callable[[str, bytes], None] | None = None,
                 adopted: bool = False) -> None:
        super().__init__(url, client_id, persistent=True, reconnect=not adopted)
        self.inbox = inbox
        self.share, self.notices, self.adopted = share, notices, adopted
        self.on_notice = on_notice
        #: Packet id -> state of each message handed out whose PUBACK was never sent:
        #: "held" (in the pipeline), "resent" (in the pipeline, and its copy came on a later
        #: connection and was dropped), "acked" (acknowledged while no PUBACK could go out:
        #: sent when its copy comes). The broker reuses no such id, so a DUP copy with it
        #: is that very message. Guarded by ``lock``.
        self.unacked: dict[int, str] = {}
        #: Messages of connections before this generation belong to a session the broker
        #: forgot (or to a closed source): nothing to acknowledge for them.
        self.session_since = 0
        #: Messages of this session in the inbox, and when the last one came (drain check).
        self.waiting = 0
        self.last_message = time.monotonic()
        self.present = False

    @property
    def notice_topic(self) -> str:
        return f"{self.notices}/{safe_name(self.client_id)}"

    def renew(self, session_present: bool) -> None:
        self.present, self.subscribed = session_present, False
        if not session_present:
            self.forget(self.generation)

    def forget(self, since: int) -> None:
        """Under the lock: messages of connections before ``since`` are not acknowledged."""
        self.unacked.clear()
        self.session_since = since

    def drained(self, quiet: float) -> bool:
        """Nothing of this session waits or is unacknowledged, and nothing came lately."""
        with self.lock:
            return (not self.waiting and not self.unacked
                    and time.monotonic() - self.last_message > quiet)

    def hook(self, client: Any) -> None:
        from paho.mqtt.packettypes import PacketTypes

        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = lambda *_args: self.signal_ready()
        client.on_message = self._on_message
        # The broker publishes the notice when the connection ends without DISCONNECT
        # (a killed engine) and no reconnect came within WILL_DELAY: another engine of the
        # group then adopts the session and drains it.
        props = mqtt_properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = WILL_DELAY
        client.will_set(self.notice_topic, self.client_id.encode(), qos=1, retain=True,
                        properties=props)

    def after_connect(self, client: Any, session_present: bool) -> bool:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        if session_present and self._loop is not None:
            # The session kept every unacknowledged message and sends them all again now:
            # drop the copies still waiting here, or each would be scored twice. (Without
            # the session they are nowhere else, so they stay.) Runs before any message of
            # this connection reaches the inbox: call_soon_threadsafe keeps the order.
            self._loop.call_soon_threadsafe(self._drop_stale, self.generation)
        if self.adopted:  # take no new messages: drain what the session holds, then end it
            client.unsubscribe([self.share, f"{self.notices}/+"])
            return False
        client.publish(self.notice_topic, b"", qos=1, retain=True)  # this session is back
        # Every connect: harmless when the session kept the subscription, and it repairs
        # a session the broker forgot (retained messages only for a new subscription).
        client.subscribe([(self.share, SubscribeOptions(qos=1, retainHandling=1)),
                          (f"{self.notices}/+", SubscribeOptions(qos=1))])
        return False  # ready once the SUBACK arrives

    def _drop_stale(self, generation: int) -> None:
        before = len(self.inbox)
        self.inbox.discard(lambda item: item[0] is self and item[1] < generation)
        with self.lock:
            self.waiting -= before - len(self.inbox)

    def leaving(self, client: Any, end: bool) -> None:
        if not end:  # what the session still holds is for whichever engine adopts it
            client.publish(self.notice_topic, self.client_id.encode(), qos=1, retain=True)

    def _on_subscribe(self, _c: Any, _ud: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        failed = [c for c in codes if c.is_failure]
        self.subscribed = not failed
        self.signal_ready(f"subscription to {self.url.name!r} refused: {failed[0]}"
                          if failed else None)

    def _on_message(self, client: Any, _ud: Any, msg: Any) -> None:
        if msg.topic.startswith(self.notices + "/"):
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            if self.on_notice is not None and not self.adopted and self._loop is not None:
                self._loop.call_soon_threadsafe(self.on_notice, msg.topic, bytes(msg.payload))
            return
        with self.lock:
            generation = self.generation
            state = self.unacked.get(msg.mid) if msg.dup else None
            if state == "acked":  # done already: the broker only missed its PUBACK
                del self.unacked[msg.mid]
                client.ack(msg.mid, msg.qos)
            elif state is not None:  # still in the pipeline: acknowledged from there
                self.unacked[msg.mid] = "resent"
            self.last_message = time.monotonic()
            if state is None:
                self.waiting += 1
        if state is None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.inbox.put, (self, generation, msg))
            except RuntimeError:  # closing: the broker sends it again to the next session
                pass


class NoticeReader(MqttSession):
    """A throw-away connection that reads the group's retained notices: the sessions that
    engines left behind, by notice topic -> client id."""

    def __init__(self, url: StreamURL, notices: str) -> None:
        super().__init__(url, "", persistent=False)
        self.notices = notices
        self.found: dict[str, str] = {}

    def hook(self, client: Any) -> None:
        client.on_message = self._on_message
        # The retained notices come right after the SUBACK: the UNSUBACK of a later
        # packet comes after them.
        client.on_subscribe = lambda *_args: client.unsubscribe("baton-sync/notices")
        client.on_unsubscribe = lambda *_args: self.signal_ready()

    def after_connect(self, client: Any, session_present: bool) -> bool:
        client.subscribe(f"{self.notices}/+", qos=1)
        return False

    def _on_message(self, _c: Any, _ud: Any, msg: Any) -> None:
        with self.lock:
            if msg.payload:
                self.found[msg.topic] = bytes(msg.payload).decode(errors="replace")
            else:  # claimed by an engine
                self.found.pop(msg.topic, None)


def mqtt_properties(packet_type: int) -> Properties:
    """MQTT v5 properties of one packet (paho's Properties, whose constructor is untyped)."""
    from paho.mqtt.properties import Properties

    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
