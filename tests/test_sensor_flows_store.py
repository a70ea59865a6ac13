"""The embedded sensor's flow store: exact counters, the opener, per-minute counts, bounds,
persistence with a monotonic seq, restart, and identical flows on every packet path."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest

from labctl.core.errors import ConfigError
from labctl.sensor.config import load_config
from labctl.sensor.engine import Sensor
from labctl.sensor.fastpath import replay_generic
from labctl.sensor.pcap import CaptureFile
from labctl.sensor.store import SensorStore
from tests.helpers.sensor_pcaps import T0, engines_file, write, write_raw

A, B, WAN = "172.16.1.20", "172.16.1.30", "203.0.113.10"
MA, MB = "70:b3:d5:00:01:01", "b8:27:eb:00:00:0b"


def _bench():
    spec = importlib.util.spec_from_file_location(
        "sensor_bench", Path(__file__).resolve().parent.parent / "bench" / "sensor_replay.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _pkt(src, dst, sport, dport, flags, t, *, proto="tcp", vlan=None, payload=b"",
         smac=MA, dmac=MB):
    from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether

    e = Ether(src=smac, dst=dmac)
    if vlan:
        e = e / Dot1Q(vlan=vlan)
    if proto == "tcp":
        p = e / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload
    elif proto == "udp":
        p = e / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload
    else:
        p = e / IP(src=src, dst=dst) / ICMP(type=sport) / payload
    p.time = t
    return p


def _conversation():
    """A handshake and data both ways over two minutes, a VLAN-tagged UDP exchange, ICMP
    echo, and a flow first seen at its SYN-ACK."""
    m0 = (int(T0) // 60) * 60 + 60.0  # a minute boundary
    pk = [
        _pkt(A, B, 51000, 80, "S", m0 + 1),
        _pkt(B, A, 80, 51000, "SA", m0 + 1.1, smac=MB, dmac=MA),
        _pkt(A, B, 51000, 80, "A", m0 + 1.2),
        _pkt(A, B, 51000, 80, "PA", m0 + 2, payload=b"GET / HTTP/1.0\r\n\r\n"),
        _pkt(B, A, 80, 51000, "PA", m0 + 61, smac=MB, dmac=MA, payload=b"x" * 300),
        _pkt(B, A, 80, 51000, "PA", m0 + 62, smac=MB, dmac=MA, payload=b"y" * 300),
        _pkt(A, B, 51000, 80, "A", m0 + 63),
        _pkt(A, WAN, 53001, 53, "", m0 + 3, proto="udp", vlan=52, payload=b"q" * 30),
        _pkt(WAN, A, 53, 53001, "", m0 + 3.5, proto="udp", vlan=52, payload=b"r" * 90,
             smac=MB, dmac=MA),
        _pkt(A, B, 8, 0, "", m0 + 4, proto="icmp", payload=b"p" * 32),
        _pkt(B, A, 0, 0, "", m0 + 4.1, proto="icmp", payload=b"p" * 32, smac=MB, dmac=MA),
        _pkt(B, A, 22, 52000, "SA", m0 + 5, smac=MB, dmac=MA),
        _pkt(A, B, 52000, 22, "A", m0 + 5.1),
    ]
    return m0, pk


def _replay(path: Path, cfg=None, *, fused: bool = True) -> Sensor:
    s = Sensor(cfg or load_config())
    cap = CaptureFile(path)
    if fused:
        s.replay(cap, cap.data)
    else:
        replay_generic(s, cap, cap.data)
    return s


def _by_ends(s: Sensor) -> dict[tuple, dict]:
    return {(r["proto"], r["src"], r["sport"], r["dst"], r["dport"], r["vlan"]): r
            for r in s.flow_rows()}


def _through(s: Sensor, way: str, cap: CaptureFile, monkeypatch, batch: int = 1000) -> None:
    """Feed ``cap`` to ``s`` by one packet path: the fused loop compiled ("native") or in
    Python ("python"), the generic path, live ``feed_batch`` or per-frame ``feed``."""
    from labctl.sensor import native

    if way == "native":
        assert native.walk() is not None, native.status()  # .ci/install brings gcc
        s.replay(cap, cap.data)
    elif way == "python":
        with monkeypatch.context() as m:
            m.setattr(native, "walk", lambda: None)
            s.replay(cap, cap.data)
    elif way == "generic":
        replay_generic(s, cap, cap.data)
    else:
        frames = [(cap.data[off:off + n], ts) for ts, off, n in cap]  # the stored stamps
        if way == "batch":
            for i in range(0, len(frames), batch):
                s.feed_batch(frames[i:i + batch])
        else:
            for f, ts in frames:
                s.feed(f, 0, len(f), ts)
        s.fold(s.last_ts)


def test_counters_opener_and_minutes_are_exact(tmp_path):
    pytest.importorskip("scapy")
    m0, pk = _conversation()
    n = {i: len(bytes(p)) for i, p in enumerate(pk)}
    path = write(tmp_path / "conv.pcap", pk)
    for fused in (True, False):
        flows = _by_ends(_replay(path, fused=fused))
        assert len(flows) == 4
        http = flows[(6, A, 51000, B, 80, 0)]
        assert (http["packets_out"], http["packets_in"]) == (4, 3)
        assert http["bytes_out"] == n[0] + n[2] + n[3] + n[6]
        assert http["bytes_in"] == n[1] + n[4] + n[5]
        assert http["first"] == int((m0 + 1) * 1000)
        assert http["last"] == int((m0 + 63) * 1000)
        minute = int(m0 // 60)
        assert http["minutes"] == {str(minute): 4, str(minute + 1): 3}
        dns = flows[(17, A, 53001, WAN, 53, 52)]  # the VLAN is part of the flow
        assert (dns["packets_out"], dns["bytes_out"], dns["packets_in"], dns["bytes_in"]) == \
            (1, n[7], 1, n[8])
        icmp = flows[(1, A, -1, B, -1, 0)]  # no ports: request and reply are one flow
        assert (icmp["packets_out"], icmp["packets_in"]) == (1, 1)
        # first seen at its SYN-ACK: the SYN-ACK's receiver opened it
        ssh = flows[(6, A, 52000, B, 22, 0)]
        assert (ssh["packets_out"], ssh["packets_in"]) == (1, 1)
        assert ssh["first"] == int((m0 + 5) * 1000)


def test_every_path_gives_identical_flows(tmp_path, monkeypatch):
    """The fused pcap loop, the generic path, live feed_batch and feed: the same flows,
    alerts, devices and connections, on the bench's default and irc6667 mixes."""
    from labctl.sensor.api import alert_to_api, connections_api, device_to_api

    bench = _bench()
    cfg = load_config()
    for irc in (False, True):
        path = tmp_path / f"mix-{irc}.pcap"
        bench.build(str(path), 40_000, irc=irc)
        cap = CaptureFile(path)
        frames = [(cap.data[off:off + n], ts) for ts, off, n in cap]
        results = []
        for way in ("native", "python", "generic", "batch", "feed"):
            s = Sensor(cfg)
            _through(s, way, cap, monkeypatch)
            results.append((s.packets, s.flow_rows(), [alert_to_api(a) for a in s.alerts],
                            [device_to_api(d) for d in s.devices.values()],
                            connections_api(s)))
        for other in results[1:]:
            assert other == results[0]
        flows = results[0][1]
        assert results[0][0] == 40_000
        assert sum(f["packets_out"] + f["packets_in"] for f in flows) == \
            40_000 - sum(1 for f, _ in frames if f[12:14] == b"\x08\x06")  # all but ARP
        if irc:
            (rule,) = [a for a in results[0][2] if a["title"] == "Communication to port 6667"
                       and a["sourceDeviceAddress"] == "172.16.1.100"]
            wan = [f for f in flows if f["dport"] == 6667 and f["src"] == "172.16.1.100"]
            assert len(wan) >= 10  # of its 30 flows, those the 4096 picks chose
            # every packet to 6667 after the first alert counted as a repeat of it
            assert rule["sourceDeviceAddress"] == "172.16.1.100"
            s = Sensor(cfg)
            s.replay(cap, cap.data)
            (a,) = [x for x in s.alerts if x.title == "Communication to port 6667"
                    and x.source_address == "172.16.1.100"]
            # a flow whose first packet seen was a reply was opened by the WAN side
            back = [f for f in flows if f["sport"] == 6667 and f["dst"] == "172.16.1.100"]
            assert a.count == sum(f["packets_out"] for f in wan) + \
                sum(f["packets_in"] for f in back)


def test_bounds_count_age_and_minute_window(tmp_path):
    cfg = load_config(engines_file(tmp_path, flows={"max_flows": 50, "max_age_days": 1,
                                                    "minute_window": 3}))
    bench = _bench()
    frames = []
    for i in range(200):  # 200 flows, one after another
        frames.append((T0 + i, bench.eth(b"\x02" * 6, b"\x04" * 6, 0x0800, bench.ipv4(
            bytes([172, 16, 1, 20]), bytes([172, 16, 1, 30]), 17,
            bench.udp(30000 + i, 9999, b"z")))))
    # one long-lived flow, a packet every minute for 10 minutes
    for m in range(10):
        frames.append((T0 + 200 + m * 60, bench.eth(b"\x02" * 6, b"\x04" * 6, 0x0800,
                       bench.ipv4(bytes([172, 16, 1, 21]), bytes([172, 16, 1, 30]), 17,
                                  bench.udp(40000, 9999, b"z")))))
    # a day later: everything else is too old
    frames.append((T0 + 200 + 86400 * 1.5, bench.eth(b"\x02" * 6, b"\x04" * 6, 0x0800,
                   bench.ipv4(bytes([172, 16, 1, 22]), bytes([172, 16, 1, 30]), 17,
                              bench.udp(40001, 9999, b"z")))))
    s = Sensor(cfg)
    for ts, f in frames[:-1]:
        s.feed(f, 0, len(f), ts)
    assert len(s.flows) == 50  # the count bound
    ports = sorted(r["sport"] for r in s.flow_rows())
    assert 40000 in ports and ports[0] == 30000 + 200 - 49  # the least recently seen went
    (long,) = [r for r in s.flow_rows() if r["sport"] == 40000]
    assert long["packets_out"] == 10
    assert len(long["minutes"]) <= 3  # the minute window
    ts, f = frames[-1]
    s.feed(f, 0, len(f), ts)
    assert [r["sport"] for r in s.flow_rows()] == [40001]  # the age bound
    # memory follows flows: 20x the packets of the same flows add no flow
    s2 = Sensor(cfg)
    for _ in range(20):
        for ts, f in frames[:40]:
            s2.feed(f, 0, len(f), ts)
    assert len(s2.flows) == 40 and len(s2.flow_dirs) == 40


def _tcp(bench, src: int, dst: int, sport: int, dport: int, flags: int) -> bytes:
    return bench.eth(bytes([2, 0, 172, 16, 1, dst]), bytes([2, 0, 172, 16, 1, src]), 0x0800,
                     bench.ipv4(bytes([172, 16, 1, src]), bytes([172, 16, 1, dst]), 6,
                                bench.tcp(sport, dport, flags)))


def test_a_flow_first_seen_at_its_syn_ack_is_found_by_its_key_until_evicted(tmp_path,
                                                                           monkeypatch):
    """A flow whose opener's direction has no packet yet (first seen at its SYN-ACK) is kept
    in unseen_flows: its late SYN joins it (no second flow), on the compiled loop, the
    Python loop and feed, and evicting it leaves no key behind."""

    bench = _bench()
    cfg = load_config(engines_file(tmp_path, flows={"max_flows": 3, "max_age_days": 1,
                                                    "minute_window": 60}))
    frames = [(T0, _tcp(bench, 30, 20, 22, 52000, 0x12)),      # SYN-ACK first
              (T0 + 0.1, _tcp(bench, 20, 30, 52000, 22, 0x02)),  # then its (late) SYN
              (T0 + 0.2, _tcp(bench, 30, 20, 22, 52001, 0x12)),  # a second one, SYN-ACK only
              (T0 + 1, _tcp(bench, 21, 30, 40000, 80, 0x02)),   # three new flows: the
              (T0 + 2, _tcp(bench, 21, 30, 40001, 80, 0x02)),   # first two are evicted
              (T0 + 2.5, _tcp(bench, 21, 30, 40002, 80, 0x02)),
              (T0 + 3, _tcp(bench, 20, 30, 52001, 22, 0x10))]   # the evicted one's opener
    cap = CaptureFile(write_raw(tmp_path / "synack.pcap", frames[:3]))
    results = []
    for way in ("native", "python", "feed"):
        s = Sensor(cfg)
        _through(s, way, cap, monkeypatch)
        (ssh, other) = sorted(s.flows.values(), key=lambda f: f.id)
        assert ssh.key[2:4] == (52000 >> 8 | (52000 & 0xFF) << 8, 22 << 8)  # the SYN side
        assert (ssh.out[0], ssh.inn[0]) == (1, 1) and len(s.flows) == 2
        assert list(s.unseen_flows) == [other.key]  # the SYN-ACK-only flow
        for ts, f in frames[3:]:
            s.feed(f, 0, len(f), ts)
        rows = s.flow_rows()
        assert [(r["sport"], r["dport"]) for r in rows] == \
            [(40001, 80), (40002, 80), (52001, 22)]
        assert rows[-1]["packets_out"] == 1 and rows[-1]["packets_in"] == 0  # a new flow
        assert not s.unseen_flows and len(s.flow_dirs) == 3  # nothing of the evicted left
        results.append(rows)
    assert results[0] == results[1] == results[2]
    # the evictions made by the fused loops themselves (their SYN branch)
    whole = CaptureFile(write_raw(tmp_path / "whole.pcap", frames))
    for way in ("native", "python"):
        s = Sensor(cfg)
        _through(s, way, whole, monkeypatch)
        assert s.flow_rows() == results[0], way
        assert not s.unseen_flows and len(s.flow_dirs) == 3


def test_udp_directions_dropped_from_flow_dirs_still_find_their_flow(tmp_path):
    """When the UDP cache overflows, every UDP direction leaves flow_dirs (to pass through
    process once more); its flow is still found by either direction, not made again."""
    bench = _bench()
    cfg = load_config(engines_file(tmp_path, flows={"max_flows": 10, "max_age_days": 1,
                                                    "minute_window": 60}))
    s = Sensor(cfg)
    out = _frame(bench, 30000)
    back = bench.eth(b"\x04" * 6, b"\x02" * 6, 0x0800, bench.ipv4(
        bytes([172, 16, 1, 30]), bytes([172, 16, 1, 20]), 17, bench.udp(9999, 30000, b"zz")))
    s.feed(out, 0, len(out), T0)
    s.feed(back, 0, len(back), T0 + 1)
    s.udp_flows.update({(bytes(4), bytes(4), i): T0 for i in range(200_001)})
    s.fold(T0 + 2)
    assert not s.flow_dirs and len(s.unseen_flows) == 1
    s.feed(back, 0, len(back), T0 + 3)  # the in direction first
    s.feed(out, 0, len(out), T0 + 4)
    (row,) = s.flow_rows()
    assert (row["packets_out"], row["packets_in"], row["sport"]) == (2, 2, 30000)
    assert not s.unseen_flows and len(s.flow_dirs) == 2


@pytest.mark.parametrize(("flows", "needle"), [
    ({"max_flows": 0}, "max_flows"), ({"max_age_days": -1}, "max_age_days"),
    ({"minute_window": "a day"}, "minute_window"), ({"max_flow": 5}, "max_flow"),
])
def test_bad_flow_settings_name_the_key(tmp_path, flows, needle):
    path = engines_file(tmp_path, flows=flows)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = f"{e.value} {getattr(e.value, 'file', '')} {getattr(e.value, 'key', '')}"
    assert needle in text and "engines.yaml" in text


def _flush(s: Sensor, store: SensorStore) -> None:
    with s.lock:
        rows = s.take_dirty()
    store.write_batch(*rows)


def _frame(bench, sport: int, payload: bytes = b"z", src: int = 20):
    return bench.eth(b"\x02" * 6, b"\x04" * 6, 0x0800, bench.ipv4(
        bytes([172, 16, 1, src]), bytes([172, 16, 1, 30]), 17, bench.udp(sport, 9999, payload)))


def test_seq_cursor_persistence_and_restart(tmp_path):
    bench = _bench()
    store = SensorStore(tmp_path / "state")
    cfg = load_config(engines_file(tmp_path, flows={"max_flows": 3}))
    s = Sensor(cfg)
    s.restore(*store.load_all(), *store.load_flows())
    f1, f2 = _frame(bench, 1000), _frame(bench, 2000, b"zz")
    s.feed(f1, 0, len(f1), T0)
    s.feed(f2, 0, len(f2), T0 + 1)
    _flush(s, store)
    first = store.flows()
    assert [r["seq"] for r in first] == [1, 2]
    assert store.flows(after_seq=1) == first[1:]
    assert store.flows(after_seq=0, limit=1) == first[:1]
    _flush(s, store)
    assert store.flows(after_seq=2) == []  # nothing changed, nothing new
    s.feed(f1, 0, len(f1), T0 + 2)  # f1 changes: a new seq, once
    _flush(s, store)
    (again,) = store.flows(after_seq=2)
    assert (again["id"], again["seq"], again["packets_out"]) == (first[0]["id"], 3, 2)
    store.close()

    # restart: counters continue, seq and ids stay monotonic
    store = SensorStore(tmp_path / "state")
    s = Sensor(cfg)
    s.restore(*store.load_all(), *store.load_flows())
    assert len(s.flows) == 2
    s.feed(f1, 0, len(f1), T0 + 3)
    f3 = _frame(bench, 3000)
    s.feed(f3, 0, len(f3), T0 + 4)
    _flush(s, store)
    rows = {r["sport"]: r for r in store.flows(after_seq=3)}
    assert rows[1000]["packets_out"] == 3 and rows[1000]["seq"] > 3
    assert rows[1000]["bytes_out"] == 3 * len(f1)
    assert rows[3000]["id"] == 3
    # the count bound (3): a fourth flow evicts the least recently seen (2000), in the
    # store too; the seq and the ids never go back, even after the newest flow is gone
    f4 = _frame(bench, 4000)
    s.feed(f4, 0, len(f4), T0 + 5)
    _flush(s, store)
    assert sorted(r["sport"] for r in store.flows()) == [1000, 3000, 4000]
    top = max(r["seq"] for r in store.flows())
    store.close()
    db = sqlite3.connect(tmp_path / "state" / "sensor.db")
    db.execute("DELETE FROM flows WHERE seq = ?", (top,))
    db.commit()
    db.close()
    store = SensorStore(tmp_path / "state")
    s = Sensor(cfg)
    s.restore(*store.load_all(), *store.load_flows())
    f5 = _frame(bench, 5000)
    s.feed(f5, 0, len(f5), T0 + 6)
    _flush(s, store)
    (r5,) = [r for r in store.flows() if r["sport"] == 5000]
    assert r5["seq"] == top + 1 and r5["id"] == 5
    # restored directions take the fast path at once (no new device, same flow)
    n = len(s.devices)
    s.feed_batch([(f1, T0 + 7)])
    assert len(s.devices) == n
    assert next(f for f in s.flows.values() if f.key[2] == 0xE803).out[0] == 4
    store.close()


def test_service_restart_keeps_flows(tmp_path):
    """The serve loop's own flush and restore (SensorService over a real store)."""
    from labctl.sensor.service import SensorService

    bench = _bench()
    state = tmp_path / "svc"
    svc = SensorService(interface="lo", listen="127.0.0.1:0", state_dir=state)
    f = _frame(bench, 1234, b"hello")
    svc.sensor.feed_batch([(f, T0), (f, T0 + 1)])
    svc.flush()
    svc.store.close()
    import os
    os.close(svc._lock_fd)
    svc2 = SensorService(interface="lo", listen="127.0.0.1:0", state_dir=state)
    try:
        svc2.sensor.feed_batch([(f, T0 + 2)])
        svc2.flush()
        (row,) = svc2.store.flows()
        assert (row["packets_out"], row["bytes_out"]) == (3, 3 * len(f))
        assert row["first"] == int(T0 * 1000) and row["last"] == int((T0 + 2) * 1000)
    finally:
        svc2.store.close()
        os.close(svc2._lock_fd)


def test_raw_pcap_wire_length_not_caplen(tmp_path):
    """Bytes are wire lengths: a snapped record counts its original length."""
    import struct

    bench = _bench()
    f = _frame(bench, 777, b"w" * 400)
    path = tmp_path / "snap.pcap"
    write_raw(path, [])
    with open(path, "ab") as fh:
        for i in range(2):
            fh.write(struct.pack("<IIII", int(T0) + i, 0, 60, len(f)) + f[:60])
    for fused in (True, False):
        (row,) = _replay(path, fused=fused).flow_rows()
        assert (row["packets_out"], row["bytes_out"]) == (2, 2 * len(f))


def test_pcapng_gives_the_same_flows_as_pcap(tmp_path):
    pytest.importorskip("scapy")
    _m0, pk = _conversation()
    a = _replay(write(tmp_path / "c.pcap", pk)).flow_rows()
    b = _replay(write(tmp_path / "c.pcapng", pk, pcapng=True)).flow_rows()
    assert a == b and len(a) == 4


def _scan_frames(seed: int, n: int) -> list[tuple[float, bytes]]:
    """SYN scans that cross every window's threshold, mixed with what the fused loop's SYN
    branch must leave to the slow path: new sources, port 0, internet peers both ways,
    SYN-ACK replies, retransmitted SYNs, a SYN on the reverse of a known flow, VLAN tags,
    and other traffic between them."""
    import random

    bench = _bench()
    rnd = random.Random(seed)
    scanners = [bytes([172, 16, 1, 50]), bytes([172, 16, 1, 51]), bytes([93, 184, 216, 34])]
    targets = [bytes([172, 16, 1, 10 + i]) for i in range(5)] + \
        [bytes([172, 16, 2, i]) for i in range(1, 40)] + [bytes([1, 1, 1, 1])]
    mac = {ip: bytes([2, 0]) + ip for ip in scanners + targets}
    frames: list[tuple[float, bytes]] = []
    sent: list[tuple[bytes, bytes, int, int, int]] = []
    ts = T0
    for _ in range(n):
        ts += rnd.choices((0.0004, 0.002, 0.01, 0.2), (4, 3, 2, 1))[0]
        r = rnd.random()
        vlan = 52 if rnd.random() < 0.2 else 0
        if r < 0.7 or not sent:
            t = rnd.random()
            src = rnd.choice(scanners)
            dst = rnd.choice(targets[:5] if t < 0.6 else targets[5:-1] if t < 0.95
                             else targets[-1:])
            sport, dport = rnd.choice((40000, 40001, rnd.randrange(1024, 65535))), \
                rnd.choice((0, 22, 80, rnd.randrange(1, 2000)))
            flags = 0x02
            sent.append((src, dst, sport, dport, vlan))
        else:
            src, dst, sport, dport, vlan = rnd.choice(sent[-300:])
            if r < 0.8:  # the target answers
                src, dst, sport, dport, flags = dst, src, dport, sport, 0x12
            elif r < 0.85:  # the target opens the reverse direction itself
                src, dst, sport, dport, flags = dst, src, dport, sport, 0x02
            elif r < 0.92:  # a retransmitted SYN
                flags = 0x02
            else:  # data of the conversation, either way
                flags = 0x18
                if rnd.random() < 0.5:
                    src, dst, sport, dport = dst, src, dport, sport
        frames.append((ts, bench.eth(mac[dst], mac[src], 0x0800, bench.ipv4(
            src, dst, 6, bench.tcp(sport, dport, flags, b"d" * rnd.choice((0, 0, 40)))),
            vlan)))
    return frames


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fused_syn_branch_matches_every_path(tmp_path, seed, monkeypatch):
    """The fused loop settles a SYN itself when every window is below its threshold: the
    same flows, alerts, events, devices and connections as every other path, with
    thresholds crossed often and the flow store full (evictions). The fused loop runs twice:
    compiled (labctl/sensor/_walk.c) and in Python."""
    import yaml

    from labctl.sensor.api import connections_api, device_to_api

    path = engines_file(tmp_path, learning=False, flows={"max_flows": 400, "max_age_days": 7,
                                         "minute_window": 1440})
    doc = yaml.safe_load(path.read_text())
    doc["detections"]["dos"]["threshold"] = 40
    doc["detections"]["address_scan"]["threshold"] = 12
    doc["detections"]["address_scan"]["prefix"] = 24
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = load_config(path)
    frames = _scan_frames(seed, 6000)
    pcap = write_raw(tmp_path / "scan.pcap", frames)
    cap = CaptureFile(pcap)
    results = []
    for way in ("native", "python", "generic", "batch", "feed"):
        s = Sensor(cfg)
        _through(s, way, cap, monkeypatch, batch=500)
        # the alert rows carry the repeat counts and last times
        results.append((s.packets, s.flow_rows(), [a.to_row() for a in s.alerts],
                        [(e.type, e.content) for e in s.events],
                        [device_to_api(d) for d in s.devices.values()], connections_api(s),
                        s._next_flow))
    for other in results[1:]:
        assert other == results[0]
    titles = {a["title"] for a in results[0][2]}
    assert {"Port Scan Detected", "Address Scan Detected", "Excessive Number of Sessions",
            "Suspicion of Denial Of Service Attack", "Illegal Connection Attempt on Port 0",
            "Unauthorized Internet Connectivity Detected"} <= titles
    assert len(results[0][1]) == 400 and results[0][6] > 1000  # full, and evicting
