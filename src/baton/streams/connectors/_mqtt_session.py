"""The paho sessions behind the MQTT connector (:mod:`baton.streams.connectors.mqtt`): one
client each, connected without blocking the event loop; the source's also keeps the packet
ids of messages not yet acknowledged across reconnects."""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import TYPE_CHECKING, Any

from baton.streams.base import StreamError, StreamURL
from baton.streams.connectors._support import (
    Inbox,
    address,
    explain,
    number,
    reason,
    stream_error,
)

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

DEFAULT_PORT = 1883
TLS_PORT = 8883
CONNECT_TIMEOUT = 10.0


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
            raise mqtt_error("open", self.url, "the URL names no topic (mqtt://HOST:PORT/TOPIC)")
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
        props = mqtt_properties(PacketTypes.CONNECT)
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


class SourceSession(MqttSession):
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


def mqtt_properties(packet_type: int) -> Properties:
    """MQTT v5 properties of one packet (paho's Properties, whose constructor is untyped)."""
    from paho.mqtt.properties import Properties

    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
