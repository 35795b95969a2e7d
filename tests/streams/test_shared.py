"""One input shared by many engines, the broker being the distributed engine (docs/streams.md,
"Many engines on one input"): three `baton serve` processes consume one input in one group,
each taking a share; one is SIGKILLed mid-stream and never restarted. Every record must end
with an output or a dead letter, the survivors take over the dead engine's share, and
duplicates stay within the dead engine's in-flight window.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.streams.brokers import Tansu
from tests.streams.conftest import Aio, make_kit
from tests.streams.engines import (
    WINDOW,
    Engines,
    Outcome,
    Tidy,
    check_complete,
    make_inputs,
    sigkill,
    stream_stats,
    urls,
    wait_until,
)
from tests.streams.kits import RedisKit, suffix

#: Brokers whose consumers share one input; each scheme's connector documents how.
SHARED = ["redis", "nats", "amqp", "kafka", "mqtt"]
#: Extra options on the input URL of the shared test, per scheme. Redis: a short idle time
#: before a dead engine's entries are claimed, so that the test need not wait a minute.
#: Kafka: six partitions, so that each of the three engines (then each survivor) has some.
#: MQTT: the shared subscription, opt-in (see the connector).
INPUT_OPTIONS = {"redis": "claim_idle=2", "kafka": "partitions=6", "mqtt": "shared=true"}


def consumed(server: Server) -> int:
    return int(stream_stats(server)["consumed"])


@pytest.mark.parametrize("scheme", SHARED)
def test_three_engines_share_one_input_and_the_survivors_finish_a_dead_ones_share(
        scheme: str, tmp_path: Path, tansu: Tansu, aio: Aio, engines: Engines,
        tidy: Tidy) -> None:
    kit = make_kit(scheme, tmp_path, tansu)
    tidy(kit.cleanup)
    n = 1500
    streams = (kit.fresh(), kit.fresh(), kit.fresh())
    group = f"shared-{suffix()}"
    inp, out, dead = urls(kit, streams)
    if scheme in INPUT_OPTIONS:
        inp += ("&" if "?" in inp else "?") + INPUT_OPTIONS[scheme]
    aio.run(kit.prepare(inp, group))
    outcome = Outcome(aio, kit, streams[1], streams[2]).start()
    tidy(outcome.close)
    items, bad = make_inputs(n)

    # A fifth of a second per micro-batch of 20: slow enough for the kill to land early.
    three = [engines(inp, out, dead, group, sleep=0.2) for _ in range(3)]
    aio.run(kit.publish(streams[0], items))
    # Each engine takes a share before one of them dies.
    wait_until(lambda: all(consumed(s) >= 40 for s in three), "every engine consuming",
               three[0], patience=120)
    victim, survivors = three[0], three[1:]
    victim_share = consumed(victim)
    sigkill(victim)
    shares_at_kill = [consumed(s) for s in survivors]
    done_at_kill = len(outcome.seen())
    wait_until(lambda: len(outcome.seen()) == n, "every record done", survivors[0],
               patience=180)
    shares = [consumed(s) for s in survivors]
    digest = survivors[0].client.get("/v1/models").json()["models"][0]["digest"]
    for server in survivors:
        assert server.stop() == 0

    dups, summary = check_complete(outcome, items, bad, digest)
    print(f"{scheme}: the survivors consumed {shares_at_kill} when the third was killed "
          f"with {victim_share} consumed "
          f"({done_at_kill} of {n} done), {shares} in the end; {summary} (window: {WINDOW})")
    assert done_at_kill < n, "the kill did not land mid-stream"
    # What the dead one held was taken over (a partitioned broker may hand all of it to one
    # survivor): every record done above, and the survivors consumed more after the kill.
    assert sum(shares) > sum(shares_at_kill), "the survivors took nothing after the kill"
    assert dups <= WINDOW, f"{dups} duplicates: more than the dead engine's window {WINDOW}"


def test_a_redis_engine_restarted_on_its_host_takes_over_what_it_held_at_once(
        tmp_path: Path, tansu: Tansu, aio: Aio, engines: Engines,
        tidy: Tidy) -> None:
    """Each engine is its own consumer (GROUP-HOST-PID); one restarted on the same host
    takes its dead predecessor's pending entries over on open (not after ?claim_idle=, a
    minute by default) and removes that consumer from the group."""
    kit = make_kit("redis", tmp_path, tansu)
    assert isinstance(kit, RedisKit)
    tidy(kit.cleanup)
    streams = (kit.fresh(), kit.fresh(), kit.fresh())
    group = f"restart-{suffix()}"
    inp, out, dead = urls(kit, streams)
    aio.run(kit.prepare(inp, group))
    outcome = Outcome(aio, kit, streams[1], streams[2]).start()
    tidy(outcome.close)
    items, bad = make_inputs(600)
    aio.run(kit.publish(streams[0], items))
    first = engines(inp, out, dead, group, sleep=0.05)
    wait_until(lambda: consumed(first) >= 100, "100 records consumed", first)
    sigkill(first)
    assert aio.run(kit.pending(streams[0], group)) > 0  # it died holding entries
    second = engines(inp, out, dead, group, sleep=0.0)
    wait_until(lambda: len(outcome.seen()) == len(items), "every record done", second)

    async def consumers() -> list[str]:
        client = kit.client()
        try:
            return [c["name"].decode()
                    for c in await client.xinfo_consumers(streams[0], group)]
        finally:
            await client.aclose()

    assert aio.run(consumers()) == [f"{group}-{socket.gethostname()}-{second.proc.pid}"]
    digest = second.client.get("/v1/models").json()["models"][0]["digest"]
    assert second.stop() == 0
    check_complete(outcome, items, bad, digest)
