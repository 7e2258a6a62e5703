"""Soak tool: exact loss accounting, the transport's drop callback, and a short real run with a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cae_edge import wire
from cae_edge.benchmark import soak
from cae_edge.device.transport import PushSender, SenderOptions
from cae_edge.errors import ConfigError

REC = np.dtype([("seq", "<u4"), ("t", "<f8")])


def recs(seqs, t0: float = 100.0) -> np.ndarray:
    out = np.zeros(len(seqs), REC)
    out["seq"] = seqs
    out["t"] = t0 + np.arange(len(seqs)) * 0.001
    return out


def drops(seqs, reason: str) -> np.ndarray:
    out = np.zeros(len(seqs), soak.DRP_DTYPE)
    out["seq"] = seqs
    out["reason"] = soak.RX_REASONS.index(reason)
    return out


def packet(seq: int) -> bytes:
    return wire.pack(wire.Packet(b"\x00" * 4, wire.sender_id("n"), seq, 0, b"x"))


# ------------------------------------------------------------------------------------- transport on_drop


@pytest.mark.parametrize(
    ("policy", "queue_drops"), [("drop-oldest", [0, 1, 2, 3, 4, 5]), ("drop-newest", [4, 5, 6, 7, 8, 9])]
)
def test_on_drop_names_every_discarded_packet(policy: str, queue_drops: list[int]) -> None:
    got: dict[str, list[int]] = {"queue": [], "close": []}
    opts = SenderOptions(
        queue_size=4, policy=policy, on_drop=lambda data, why: got[why].append(wire.unpack(data).seq)
    )
    # nobody listens on this port: IMMEDIATE keeps every frame in our queue
    link = PushSender("tcp://127.0.0.1:1", opts)
    for seq in range(10):
        link.send(packet(seq))
    assert got["queue"] == queue_drops
    assert link.stats.dropped == 6
    link.close(flush_s=0)
    kept = sorted(set(range(10)) - set(queue_drops))
    assert sorted(got["close"]) == kept
    assert link.stats.lost_at_close == 4


def test_mqtt_on_drop_names_every_discarded_packet() -> None:
    from cae_edge.benchmark.local_broker import free_port
    from cae_edge.device.mqtt import MqttSender, MqttSenderOptions

    got: dict[str, list[int]] = {"queue": [], "close": []}
    opts = MqttSenderOptions(
        insecure=True,
        queue_size=4,
        on_drop=lambda data, why: got[why].append(wire.unpack(data).seq),
        reconnect_min_s=5,
    )
    # no broker listens there: every frame waits in the node's queue
    link = MqttSender(f"mqtt://127.0.0.1:{free_port()}", "n", opts)
    for seq in range(10):
        link.send(packet(seq))
    assert got["queue"] == [0, 1, 2, 3, 4, 5] and link.stats.dropped == 6
    link.close(flush_s=0)
    assert sorted(got["close"]) == [6, 7, 8, 9] and link.stats.lost_at_close == 4


def test_mqtt_ack_check_survives_a_publish_made_while_the_connection_went_down() -> None:
    from cae_edge.device.mqtt import _acked

    class Info:  # paho's MQTTMessageInfo for a publish that returned NO_CONN (kept, resent on reconnect)
        def __init__(self, published: bool) -> None:
            self._published = published

        def is_published(self) -> bool:
            raise RuntimeError("Message publish failed: The client is not currently connected.")

    assert _acked(Info(False)) is False
    assert _acked(Info(True)) is True  # acknowledged after the resend


# ------------------------------------------------------------------------------------------- accounting


def test_accounting_puts_every_frame_in_one_bucket() -> None:
    # 0..99 produced; rx1 decoded 0..39 except 10-14 (queue drops); killed; 40..49 in flight;
    # rx2 decoded 50..94 except 60-61 (queue drops); 95..97 dropped at close; 98..99 lost at the end
    rx1 = recs([s for s in range(40) if not 10 <= s < 15])
    rx2 = recs([s for s in range(50, 95) if s not in (60, 61)], t0=200.0)
    acc = soak.SenderAccount(name="n", produced=100, transport_dropped=7)
    soak.account_sender(acc, [rx1, rx2], [10, 11, 12, 13, 14, 60, 61], [95, 96, 97], restart_ready=199.5)
    assert (acc.delivered, acc.dropped_queue, acc.dropped_close) == (78, 7, 3)
    assert (acc.lost_restart, acc.lost_at_end, acc.unexplained, acc.duplicates) == (10, 2, 0, 0)
    assert acc.accounted
    assert acc.resume_s == pytest.approx(0.5)
    assert acc.outage_s == pytest.approx(200.0 - (100.0 + 34 * 0.001))


def test_accounting_measures_what_was_in_flight_at_the_kill() -> None:
    # 0..59 produced. rx1 took in 0..29, decoded 0..24 (20-21 stale), had 25..29 queued when killed;
    # 30..34 were in the sockets; rx2 took in 35..59: decoded 35..57 (40 backlog), 58-59 still queued at stop
    rx1 = recs([s for s in range(25) if s not in (20, 21)])
    rx2 = recs([s for s in range(35, 58) if s != 40], t0=200.0)
    acc = soak.SenderAccount(name="n", produced=60)
    rx2_drops = np.concatenate([drops([40], "backlog"), drops([58, 59], "shutdown")])
    soak.account_sender(
        acc, [rx1, rx2], [], [],
        arrivals=[np.arange(0, 30), np.arange(35, 60)],
        rx_drops=[drops([20, 21], "stale"), rx2_drops],
        restart_ready=199.0,
    )  # fmt: skip
    assert acc.delivered == 23 + 22
    assert acc.rx_dropped == {"stale": 2, "backlog": 1, "shutdown": 2}
    assert (acc.lost_restart, acc.lost_restart_queued, acc.lost_at_end) == (10, 5, 0)
    assert acc.unexplained == 0 and acc.accounted


def test_accounting_flags_what_the_last_receiver_took_in_but_never_accounted() -> None:
    acc = soak.SenderAccount(name="n", produced=10)
    soak.account_sender(acc, [recs(range(8))], [], [], arrivals=[np.arange(10)])  # 8, 9: arrived, then?
    assert acc.unexplained == 2 and acc.lost_at_end == 0 and not acc.accounted
    acc = soak.SenderAccount(name="n", produced=10)  # a frame both decoded and dropped by the receiver
    soak.account_sender(acc, [recs(range(10))], [], [], rx_drops=[drops([3], "stale")])
    assert acc.unexplained == 1 and not acc.accounted


def test_accounting_flags_losses_outside_the_restart_gap() -> None:
    rx1 = recs([s for s in range(40) if s != 7])  # 7 vanished mid-stream: not dropped, not at the restart
    rx2 = recs(range(45, 60), t0=200.0)
    acc = soak.SenderAccount(name="n", produced=60)
    soak.account_sender(acc, [rx1, rx2], [], [], restart_ready=199.0)
    assert acc.lost_restart == 5 and acc.unexplained == 1
    assert not acc.accounted


def test_accounting_flags_duplicates_and_counter_mismatch() -> None:
    acc = soak.SenderAccount(name="n", produced=5, transport_dropped=0)
    soak.account_sender(acc, [recs([0, 1, 2, 2, 3, 4])], [], [])
    assert acc.duplicates == 1 and not acc.accounted
    acc = soak.SenderAccount(name="n", produced=5, transport_dropped=2)  # transport says 2, callback said 1
    soak.account_sender(acc, [recs([0, 1, 2, 3])], [4], [])
    assert acc.unexplained == 0 and not acc.accounted
    acc = soak.SenderAccount(name="n", produced=5, transport_dropped=1)
    soak.account_sender(acc, [recs([0, 1, 2, 3, 4])], [4], [])  # delivered and reported dropped
    assert acc.unexplained == 1 and not acc.accounted


def test_no_restart_means_no_restart_bucket() -> None:
    acc = soak.SenderAccount(name="n", produced=10)
    soak.account_sender(acc, [recs([0, 1, 2, 5, 6])], [3, 4], [])
    assert acc.lost_restart == 0 and acc.lost_at_end == 3 and acc.unexplained == 0
    assert acc.resume_s is None


def test_accounting_measures_the_broker_restart_window() -> None:
    # 0..99 produced, one receiver. Before the broker came back (t < 150) 0..49 arrived; 50..54 were inside
    # the old broker; 55..57 were dropped by the node's queue while it was away; 58..59 were published before
    # the receiver subscribed again; from 60 on everything arrived (decoded), 75 a second time (QoS 1 resend)
    seqs = np.array([*range(50), *range(60, 100), 75])
    times = np.where(seqs < 50, 140.0, 151.0) + np.arange(len(seqs)) * 1e-4
    delivered = np.zeros(len(seqs), REC)
    delivered["seq"], delivered["t"] = seqs, times + 0.01
    acc = soak.SenderAccount(name="n", produced=100, transport_dropped=3, at_least_once=True)
    soak.account_sender(
        acc, [delivered], [55, 56, 57], [], arrivals=[seqs], arrival_times=[times], broker_up=150.0
    )
    assert (acc.delivered, acc.dropped_queue, acc.lost_broker, acc.duplicates) == (90, 3, 7, 1)
    assert acc.unexplained == 0 and acc.lost_at_end == 0 and acc.accounted
    assert acc.broker_resume_s == pytest.approx(1.0 + 50 * 1e-4 + 0.01)
    # the same on ZeroMQ (no at-least-once): the duplicate fails the account
    acc = soak.SenderAccount(name="n", produced=100, transport_dropped=3)
    soak.account_sender(
        acc, [delivered], [55, 56, 57], [], arrivals=[seqs], arrival_times=[times], broker_up=150.0
    )
    assert acc.duplicates == 1 and not acc.accounted


def test_accounting_flags_a_gap_after_the_broker_restart() -> None:
    # 70..72 vanished after frames had arrived through the new broker: not the restart's window
    seqs = np.array([s for s in range(100) if s not in (50, 51, 70, 71, 72)])
    times = np.where(seqs < 50, 140.0, 151.0)
    acc = soak.SenderAccount(name="n", produced=100, at_least_once=True)
    soak.account_sender(acc, [recs(seqs)], [], [], arrivals=[seqs], arrival_times=[times], broker_up=150.0)
    assert acc.lost_broker == 2 and acc.unexplained == 3 and not acc.accounted


def test_at_least_once_copies_dropped_by_the_receiver_are_duplicates() -> None:
    # 5 decoded, then its resent copy arrived too late (stale): a duplicate, not a second fate
    acc = soak.SenderAccount(name="n", produced=10, at_least_once=True)
    soak.account_sender(acc, [recs(range(10))], [], [], rx_drops=[drops([5], "stale")])
    assert acc.duplicates == 1 and acc.rx_dropped == {} and acc.unexplained == 0 and acc.accounted


def test_fleet_node_names_have_distinct_wire_ids() -> None:
    for n in (1, 50, 100, 101, soak.MAX_SENDERS):
        names = soak._node_names(n)
        assert len(names) == n and len({wire.sender_id(x) for x in names}) == n


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"senders": 0}, "senders 0"),
        ({"senders": 257}, "senders 257"),
        ({"senders": 4, "procs": 5}, "procs 5"),
        ({"transport": "amqp"}, "transport 'amqp'"),
        ({"broker_restart_at": 5}, "only the MQTT transport has a broker"),
        (
            {"transport": "mqtt", "seconds": 10, "restart_at": 5, "broker_restart_at": 12},
            "broker restart at 12",
        ),
        ({"transport": "mqtt", "secure": False}, "always uses TLS"),
        ({"seconds": 601}, "seconds 601"),
        ({"seconds": 10, "restart_at": 10}, "restart at 10"),
        ({"down_s": -1}, "down time"),
        ({"fps": -1}, "fps -1"),
    ],
)
def test_options_are_bounded(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        soak.SoakOptions(**kwargs).check()


# ------------------------------------------------------------------------------------------- real run


@pytest.mark.slow
def test_short_soak_with_receiver_restart_accounts_for_every_frame(tmp_path: Path) -> None:
    """3 CURVE senders x 5 s at full rate, receiver SIGKILLed at 2 s and restarted: nothing unexplained."""
    lines: list[str] = []
    opts = soak.SoakOptions(senders=3, seconds=5, restart_at=2, workdir=tmp_path / "soak", after_restart_s=4)
    result = soak.run_soak(opts, progress=lines.append)
    d = json.loads(json.dumps(result.to_dict()))
    _check_run(d, names=["soak-00", "soak-01", "soak-02"])
    assert all(s["connects"] >= 2 for s in d["senders"])  # each reconnected to the new receiver
    assert any("killed" in line for line in lines)
    status = json.loads((tmp_path / "soak" / "rx-2.status.json").read_text())
    assert status["secured"] is True and set(status["senders"]) == {"soak-00", "soak-01", "soak-02"}
    assert status["auth"]["denied"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["zmq", "mqtt"])
def test_small_fleet_through_each_transport_accounts_for_every_frame(transport: str, tmp_path: Path) -> None:
    """6 nodes in 2 sender processes x 30 fps, receiver SIGKILLed and restarted, and for MQTT the broker
    restarted too (a real mosquitto with TLS, passwords and ACLs): every frame in one bucket, by node."""
    mqtt = transport == "mqtt"
    if mqtt:
        from mqtt_broker import find_mosquitto, need_openssl

        find_mosquitto()  # skips, saying why, only where no broker can be had
        need_openssl()
    lines: list[str] = []
    opts = soak.SoakOptions(
        senders=6,
        procs=2,
        transport=transport,
        fps=30,
        seconds=4,
        restart_at=1.5,
        broker_restart_at=3.0 if mqtt else None,
        after_restart_s=2,
        workdir=tmp_path / "soak",
    )
    result = soak.run_soak(opts, progress=lines.append)
    d = json.loads(json.dumps(result.to_dict()))
    names = [f"soak-{i:02d}" for i in range(6)]
    _check_run(d, names=names)
    assert sorted({s["proc"] for s in d["senders"]}) == [0, 1]  # 3 nodes per process, each its own account
    assert d["options"]["procs"] == 2 and d["options"]["transport"] == transport
    for s in d["senders"]:
        assert s["latency_p50_ms"] is not None and s["latency_p99_ms"] >= s["latency_p50_ms"]
        assert s["sent"] + s["dropped_queue"] + s["dropped_close"] <= s["produced"]
    if mqtt:
        assert d["broker_down_at_s"] is not None and d["broker_up_s"] is not None
        assert "all_resumed_after_broker_restart" in d["verdict"]
        for s in d["senders"]:
            assert s["at_least_once"] is True
            assert s["broker_resume_s"] is not None  # decoded again after the broker restart (not timed)
            assert s["connects"] >= 2  # it reconnected to the restarted broker
        assert any("broker stopped" in line for line in lines)
        log = (tmp_path / "soak" / "broker" / "mosquitto.log").read_text()
        assert "soak-rx" in log  # the receiver logged in with its own account
        status = json.loads((tmp_path / "soak" / "rx-2.status.json").read_text())
        assert set(status["senders"]) == set(names)  # identities from the topics (ACL-bound)
        assert status["link"]["broker_connects"] >= 2  # the receiver reconnected too
    else:
        assert all(s["connects"] >= 2 for s in d["senders"])  # each reconnected to the new receiver
        assert d["broker_down_at_s"] is None
        assert all(s["lost_broker"] == 0 and s["broker_resume_s"] is None for s in d["senders"])


def _check_run(d: dict, names: list[str]) -> None:
    """What every real soak run must show: no hang, both receivers, every frame of every node in exactly
    one bucket, receiver totals that agree with the nodes'."""
    assert d["hangs"] == [], d["hangs"]
    assert d["verdict"]["no_hang"] and d["verdict"]["all_accounted"], d
    assert [r["ended"] for r in d["receivers"]] == ["killed", "stopped"]
    assert [s["name"] for s in d["senders"]] == names
    buckets = ("delivered", "dropped_queue", "dropped_close", "lost_restart", "lost_broker", "lost_at_end",
               "unexplained")  # fmt: skip
    for s in d["senders"]:
        assert s["produced"] == sum(s[k] for k in buckets) + sum(s["rx_dropped"].values()), s
        assert set(s["rx_dropped"]) <= {"stale", "backlog", "shutdown"}
        assert 0 <= s["lost_restart_queued"] <= s["lost_restart"]
        assert s["unexplained"] == 0
        assert s["duplicates"] == 0 or s["at_least_once"]
        assert s["transport_dropped"] == s["dropped_queue"]
        assert s["produced"] > 0 and s["delivered"] > 0
        assert s["connects"] >= 1
        assert s["resume_s"] is not None  # reported, not asserted as a timing
    # both receivers decoded frames, and the totals add up across nodes
    assert all(r["frames"] > 0 for r in d["receivers"])
    frames = sum(r["frames"] for r in d["receivers"])
    assert d["totals"]["delivered"] <= frames  # a frame decoded twice (MQTT QoS 1) is one delivered
    if d["totals"]["duplicates"] == 0:
        assert d["totals"]["delivered"] == frames
    for r in d["receivers"]:  # every packet that arrived was decoded or dropped (or in flight at the kill)
        accounted = r["frames"] + sum(r["dropped"].values())
        assert accounted == r["received"] if r["ended"] == "stopped" else accounted <= r["received"]
    rx_drops = {k: sum(r["dropped"].get(k, 0) for r in d["receivers"]) for k in ("stale", "backlog")}
    if d["totals"]["duplicates"] == 0:
        assert rx_drops == {k: d["totals"][f"rx_{k}"] for k in ("stale", "backlog")}
    assert d["totals"]["rejected"] == 0
