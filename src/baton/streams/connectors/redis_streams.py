"""``redis://USER:PASSWORD@HOST:PORT/STREAM``: Redis Streams with consumer groups.

Credentials: an ACL user and its password (``redis://USER:PASSWORD@...``), or a password
alone for ``requirepass`` (``redis://:PASSWORD@...``); the password may come from
``?password_env=``/``?password_file=`` instead. TLS: ``rediss://`` with ``?ca=``, and
``?cert=``/``?key=`` when the server asks for client certificates
(``tls-auth-clients``); the server's certificate and host name are always verified.

Source: ``XREADGROUP`` in group ``?group=`` (default: the binding's), as a consumer of its
own: ``?consumer=``, default ``GROUP-HOST-PID``, so that engines on one group share the
entries (Redis hands each new entry to one consumer). On start it first reads its own
pending entries (delivered before a crash, never acknowledged) once, page by page from the
last one read, then only new ones; ``XACK`` acknowledges. After a failed read (the reply
may be lost after Redis assigned the entries) it looks through its pending entries once
more, handing out only those it does not hold already, so each entry comes again at most
once. Entries another consumer has held unacknowledged for ``?claim_idle=`` seconds
(default 60: well above a micro-batch's time, so that only a dead or stuck engine's
entries move) are taken over with ``XAUTOCLAIM``, checked every ``claim_idle / 2``
seconds; a consumer so taken over that holds nothing and has been idle ten times that
long is removed from the group (``XGROUP DELCONSUMER``), so dead engines do not pile up.
An engine restarted on the same host does not wait that long for what it held before: on
open it takes over at once the entries of the group's consumers named for this host whose
process is gone (``XCLAIM``), and removes them.
The group is created at ``?start=`` (default ``0``: the whole stream). A record is the
entry's ``value`` field; its key is the ``key`` field, or the entry id.
Sink: ``XADD`` with ``key`` and ``value`` fields, every record of a batch in one command: a
small Lua script (``EVALSHA``, loaded again by the client after a server restart) that runs
the XADDs in order and answers once all are appended. One command instead of a pipeline of
one per record takes most of the client's work away (1.1 ms instead of 4.2 ms for 256
records, bench/streams).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import psutil

from baton.streams.base import Message, OptionKind, OutRecord, StreamError, StreamURL
from baton.streams.connectors._support import explain, probe
from baton.streams.security import PASSWORD_FROM, TLS_FILES

#: The client library (module, package) and the ``?options`` this connector reads.
CLIENT: tuple[str, str] | None = ("redis", "redis")
OPTIONS: dict[str, OptionKind] = {"db": "count", "group": "text", "consumer": "text",
                                   "start": "text", "claim_idle": "number",
                                   **PASSWORD_FROM, **TLS_FILES}
#: Seconds an entry may stay unacknowledged with a consumer before another one takes it.
CLAIM_IDLE = 60.0


def _client(url: StreamURL) -> Any:
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # One immediate retry (a connection gone stale while idle); beyond that the pipeline
    # retries with its own backoff, and reports the error meanwhile.
    tls: dict[str, Any] = {}
    if url.tls:  # files, not url.tls_context: redis-py builds its own context from them
        tls = {"ssl": True, "ssl_ca_certs": url.options.get("ca"),
               "ssl_certfile": url.options.get("cert"), "ssl_keyfile": url.options.get("key"),
               "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    return redis.Redis(host=url.host or "127.0.0.1", port=url.port or 6379,
                       username=url.username, password=url.password,
                       db=int(url.option("db", "0")), socket_connect_timeout=5,
                       retry=Retry(NoBackoff(), 1), **tls)


def _error(what: str, url: StreamURL, exc: Exception) -> StreamError:
    return StreamError(f"redis {what} on {url.redacted} failed: {explain(str(exc), url)}",
                       details={"url": url.redacted})


class RedisSource:
    def __init__(self, url: StreamURL, group: str) -> None:
        self.url = url
        self.stream = url.name
        self.group = url.option("group", group)
        self.consumer = url.option("consumer",
                                   f"{self.group}-{socket.gethostname()}-{os.getpid()}")
        self.claim_idle = float(url.option("claim_idle", str(CLAIM_IDLE)))
        if self.claim_idle <= 0:  # every entry in flight would be taken from its engine
            raise StreamError(f"redis: ?claim_idle= must be a number of seconds > 0 on "
                              f"{url.redacted}", code="BAD_STREAM_URL",
                              details={"url": url.redacted, "option": "claim_idle"})
        #: When to look for entries a dead consumer left (monotonic seconds).
        self._next_claim = 0.0
        self.redis: Any = None
        #: Where the next read of our own pending entries starts ("0": all of them), or
        #: None once every one was read: then only new entries (">").
        self._pending_from: bytes | str | None = "0"
        #: Entry ids handed out and not acknowledged yet: they are in the pipeline, so a
        #: second look through the pending entries must not hand them out again.
        self._held: set[bytes] = set()

    async def open(self) -> None:
        from redis.exceptions import RedisError, ResponseError

        await self.close()  # a retried open must not leak the client of the failed one
        await probe(self.url, 6379, "redis")  # the client would retry a refusal for seconds
        self.redis = _client(self.url)
        self._pending_from = "0"  # (re)opened: what we were given before comes first
        try:
            await self.redis.xgroup_create(self.stream, self.group,
                                           id=self.url.option("start", "0"), mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise _error("XGROUP CREATE", self.url, exc) from None
        except (RedisError, OSError) as exc:
            raise _error("connect", self.url, exc) from None
        try:
            await self._adopt_predecessors()
        except (RedisError, OSError) as exc:
            raise _error("XCLAIM", self.url, exc) from None

    async def _adopt_predecessors(self) -> None:
        """Take over the pending entries of this host's consumers whose process is gone
        (this engine before a restart); they are then read as our own pending entries."""
        prefix = f"{self.group}-{socket.gethostname()}-"
        for info in await self.redis.xinfo_consumers(self.stream, self.group):
            name = info.get("name")
            name = name.decode() if isinstance(name, bytes) else str(name)
            pid = name.removeprefix(prefix)
            if name == self.consumer or not name.startswith(prefix) or not pid.isdigit() \
                    or psutil.pid_exists(int(pid)):
                continue
            while True:
                page = await self.redis.xpending_range(self.stream, self.group, min="-",
                                                       max="+", count=500, consumername=name)
                if not page:
                    break
                await self.redis.xclaim(self.stream, self.group, self.consumer, 0,
                                        [p["message_id"] for p in page], justid=True)
            await self.redis.xgroup_delconsumer(self.stream, self.group, name)

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        from redis.exceptions import RedisError

        try:
            if self._pending_from is not None:
                pending = await self._read_pending(max_records)
                if pending:
                    return pending
            if time.monotonic() >= self._next_claim:
                claimed = await self._claim(max_records)
                if claimed:
                    return claimed
            got = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                              count=max_records,
                                              block=max(1, int(timeout * 1000)))
        except (RedisError, OSError) as exc:
            self._pending_from = "0"  # the reply may be lost: look at our pending entries
            raise _error("XREADGROUP", self.url, exc) from None
        return self._hand_out(got[0][1] if got else [])

    async def _read_pending(self, max_records: int) -> list[Message]:
        """The next page of our pending entries not held already; [] once all were read.

        Each read starts after the last entry of the previous page (``XREADGROUP`` with an
        id): reading from "0" every time would hand out again every entry still in flight.
        """
        while self._pending_from is not None:
            got = await self.redis.xreadgroup(self.group, self.consumer,
                                              {self.stream: self._pending_from},
                                              count=max_records)
            entries = got[0][1] if got else []
            if not entries:
                self._pending_from = None
                return []
            self._pending_from = entries[-1][0]
            fresh = [(i, f) for i, f in entries if i not in self._held]
            if fresh:
                return self._hand_out(fresh)
        return []

    async def _claim(self, max_records: int) -> list[Message]:
        """Entries other consumers have held past ``claim_idle`` (their engine died or is
        stuck), taken over; then consumers left with nothing and long idle are removed."""
        idle_ms = int(self.claim_idle * 1000)
        start: bytes | str = "0-0"
        while True:
            reply = await self.redis.xautoclaim(self.stream, self.group, self.consumer,
                                                min_idle_time=idle_ms, start_id=start,
                                                count=max_records)
            start, entries = reply[0], [e for e in reply[1] if e[1] is not None]
            fresh = [(i, f) for i, f in entries if i not in self._held]
            if fresh or start in (b"0-0", "0-0"):
                break
        if not fresh:  # nothing to take over until the next look
            self._next_claim = time.monotonic() + self.claim_idle / 2
            await self._forget_dead_consumers()
        return self._hand_out(fresh)

    async def _forget_dead_consumers(self) -> None:
        for info in await self.redis.xinfo_consumers(self.stream, self.group):
            name = info.get("name")
            name = name.decode() if isinstance(name, bytes) else name
            if (name != self.consumer and not info.get("pending")
                    and int(info.get("idle", 0)) > 10 * self.claim_idle * 1000):
                await self.redis.xgroup_delconsumer(self.stream, self.group, name)

    def _hand_out(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Message]:
        self._held.update(i for i, _ in entries)
        return [self._message(i, f) for i, f in entries]

    def _message(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
        key = fields.get(b"key")
        return Message(key.decode() if key else entry_id.decode(), fields.get(b"value", b""),
                       entry_id)

    async def ack(self, messages: Sequence[Message]) -> None:
        from redis.exceptions import RedisError

        if not messages:
            return
        try:
            await self.redis.xack(self.stream, self.group, *[m.position for m in messages])
        except (RedisError, OSError) as exc:
            raise _error("XACK", self.url, exc) from None
        self._held.difference_update(m.position for m in messages)

    async def lag(self) -> int | None:
        """Entries not yet delivered to the group (``XINFO GROUPS``: ``lag``, Redis 7+)."""
        if self.redis is None:
            return None
        for group in await self.redis.xinfo_groups(self.stream):
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                lag = group.get("lag")
                return None if lag is None else int(lag)
        return None

    async def close(self) -> None:
        client, self.redis = self.redis, None
        self._held.clear()  # what was handed out is abandoned: pending, for the next open
        if client is not None:
            await client.aclose()


#: XADD every (key, value) pair of ARGV to KEYS[1], in order; answers the count.
_XADD_ALL = """
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'key', ARGV[i], 'value', ARGV[i + 1])
end
return #ARGV / 2
"""


class RedisSink:
    def __init__(self, url: StreamURL) -> None:
        self.url = url
        self.stream = url.name
        self.redis: Any = None
        self._xadd_all: Any = None

    async def open(self) -> None:
        from redis.exceptions import RedisError

        await self.close()
        await probe(self.url, 6379, "redis")
        self.redis = _client(self.url)
        self._xadd_all = self.redis.register_script(_XADD_ALL)
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise _error("connect", self.url, exc) from None

    async def write(self, records: Sequence[OutRecord]) -> None:
        from redis.exceptions import RedisError

        if not records:
            return
        args: list[Any] = []
        for r in records:
            args.append(r.key or "")
            args.append(r.value)
        try:
            await self._xadd_all(keys=[self.stream], args=args)
        except (RedisError, OSError) as exc:
            raise _error("XADD", self.url, exc) from None

    async def close(self) -> None:
        client, self.redis = self.redis, None
        if client is not None:
            await client.aclose()


def open_source(url: StreamURL, *, group: str) -> RedisSource:
    return RedisSource(url, group)


def open_sink(url: StreamURL) -> RedisSink:
    return RedisSink(url)
