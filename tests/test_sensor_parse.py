"""The hot-path parser and the pcap/pcapng reader: field extraction, malformed and truncated
input (counted, never raised), bad files (clear error), and the fused replay fast path giving
exactly the same results as the generic path."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.sensor.parse import K_ARP, K_IPV4, K_IPV6, K_OTHER, ip_str, parse_frame
from tests.helpers.sensor_pcaps import (
    SCANNER_IP,
    T0,
    TARGET_IP,
    address_scan,
    arp_scan,
    icmp_echo,
    syn_scan,
    tcp_packet,
    udp_packet,
    write,
)

scapy = pytest.importorskip("scapy.all")


def raw(p) -> bytes:
    return bytes(p)


def test_ipv4_tcp_fields():
    from scapy.all import IP, TCP, Ether

    f = raw(Ether(src="00:11:22:33:44:55", dst="66:77:88:99:aa:bb") /
            IP(src="172.16.1.5", dst="172.16.1.6") / TCP(sport=1234, dport=6667, flags="SA"))
    vlan, smac, dmac, kind, sip, dip, proto, sport, dport, flags = parse_frame(f)
    assert (vlan, kind, proto, sport, dport) == (0, K_IPV4, 6, 1234, 6667)
    assert smac.hex(":") == "00:11:22:33:44:55" and dmac.hex(":") == "66:77:88:99:aa:bb"
    assert (ip_str(sip), ip_str(dip)) == ("172.16.1.5", "172.16.1.6")
    assert flags == 0x12


def test_ipv4_options_udp_icmp_and_fragments():
    from scapy.all import ICMP, IP, UDP, Ether, IPOption_RR

    f = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR()]) /
            UDP(sport=5353, dport=53))
    assert parse_frame(f)[6:9] == (17, 5353, 53)
    f = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, code=0))
    assert parse_frame(f)[6:9] == (1, 8, 0)
    f = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", frag=100, proto=6) / (b"x" * 20))
    assert parse_frame(f)[6:9] == (6, -1, -1)  # non-first fragment: no transport header


def test_ipv6_with_extension_headers_and_icmpv6():
    from scapy.all import TCP, Ether, ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop

    f = raw(Ether() / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() /
            TCP(sport=1, dport=22, flags="S"))
    p = parse_frame(f)
    assert p[3] == K_IPV6 and ip_str(p[4]) == "fd00::1" and p[6:9] == (6, 1, 22)
    p = parse_frame(raw(Ether() / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest()))
    assert p[6:8] == (58, 128)


def test_vlan_8021q_and_qinq_and_arp():
    from scapy.all import ARP, IP, UDP, Dot1AD, Dot1Q, Ether

    assert parse_frame(raw(Ether() / Dot1Q(vlan=52) / IP() / UDP()))[0] == 52
    assert parse_frame(raw(Ether() / Dot1AD(vlan=7) / Dot1Q(vlan=52) / IP() / UDP()))[0] == 52
    p = parse_frame(raw(Ether() / Dot1Q(vlan=52) / ARP(op=2, psrc="172.16.1.1",
                                                       pdst="172.16.1.2")))
    assert p[3] == K_ARP and p[0] == 52 and p[6] == 2 and ip_str(p[4]) == "172.16.1.1"


def test_other_ethertypes_are_not_errors():
    from scapy.all import Ether

    assert parse_frame(raw(Ether(type=0x88CC) / (b"\0" * 40)))[3] == K_OTHER


def test_truncated_and_malformed_frames_return_none():
    from scapy.all import IP, TCP, Dot1Q, Ether

    full = raw(Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / TCP())
    for cut in (0, 5, 13, 14, 20, 33, 34 + 13):
        assert parse_frame(full[:cut]) is None, cut
    bad_ihl = bytearray(full)
    bad_ihl[14] = 0x43  # IHL 3 (< 5)
    assert parse_frame(bytes(bad_ihl)) is None
    bad_ver = bytearray(full)
    bad_ver[14] = 0x65
    assert parse_frame(bytes(bad_ver)) is None
    assert parse_frame(raw(Ether() / Dot1Q() / Dot1Q() / Dot1Q() / IP())) is None  # 3 tags
    assert parse_frame(full, 0, len(full) + 10) is None  # length past the buffer


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_parser_never_raises_on_random_bytes(data):
    parse_frame(data)
    parse_frame(b"\x00" * 12 + b"\x08\x00" + data)
    parse_frame(b"\x00" * 12 + b"\x81\x00\x00\x34\x86\xdd" + data)


def test_replay_counts_malformed_and_truncated(tmp_path, cli_run):
    from scapy.all import Ether

    good = tcp_packet(SCANNER_IP, TARGET_IP, 80)
    short = Ether(raw(good)[:20])
    short.time = T0 + 1
    pcap = write(tmp_path / "m.pcap", [good, short])
    with open(pcap, "ab") as f:  # a record header promising more bytes than the file has
        f.write(struct.pack("<IIII", int(T0) + 2, 0, 500, 500) + b"\x00" * 10)
    r = cli_run("sensor", "replay", "--pcap", str(pcap), "--json")
    assert r.exit_code == 0, r
    doc = r.json()
    assert doc["packets"] == 2 and doc["malformed"] == 1 and doc["truncated"] == 1
    assert [d["ipAddresses"] for d in doc["devices"]] == [[SCANNER_IP]]


@pytest.mark.parametrize("content,needle", [
    (b"", "too short"),
    (b"hello, this is not a capture file at all", "unknown magic"),
])
def test_bad_pcap_is_a_usage_error(tmp_path, cli_run, content, needle):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    r = cli_run("sensor", "replay", "--pcap", str(bad))
    assert r.exit_code == 2
    assert str(bad) in r.stderr and needle in r.stderr


def test_missing_pcap(tmp_path, cli_run):
    r = cli_run("sensor", "replay", "--pcap", str(tmp_path / "nope.pcap"))
    assert r.exit_code == 2 and "not found" in r.stderr


def test_pcapng_gives_the_same_result_as_pcap(tmp_path, cli_run):
    pk = syn_scan(30, vlan=52) + address_scan(55, t0=T0 + 1)
    a = cli_run("sensor", "replay", "--pcap", str(write(tmp_path / "a.pcap", pk)), "--json")
    b = cli_run("sensor", "replay", "--pcap",
                str(write(tmp_path / "a.pcapng", pk, pcapng=True)), "--json")
    da, db = a.json(), b.json()
    assert da["packets"] == db["packets"] == 85
    assert da["alerts"] == db["alerts"]
    assert da["devices"] == db["devices"]


def test_fused_fast_path_matches_generic_path(tmp_path, monkeypatch):
    """The bench-style mixed pcap through the fused loop (compiled and Python) and through
    parse+process."""
    import importlib.util
    from pathlib import Path

    from labctl.sensor import native
    from labctl.sensor.api import alert_to_api, connections_api, device_to_api
    from labctl.sensor.config import load_config
    from labctl.sensor.engine import Sensor
    from labctl.sensor.fastpath import replay_generic
    from labctl.sensor.pcap import CaptureFile

    spec = importlib.util.spec_from_file_location(
        "sensor_bench", Path(__file__).resolve().parent.parent / "bench" / "sensor_replay.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "mix.pcap"
    bench.build(str(path), 60_000)
    cfg = load_config()
    results = []
    assert native.walk() is not None, native.status()
    for way in ("native", "python", "generic"):
        s = Sensor(cfg)
        cap = CaptureFile(path)
        if way == "generic":
            n = replay_generic(s, cap, cap.data)
        else:
            with monkeypatch.context() as m:
                if way == "python":  # the fused loop in Python
                    m.setattr(native, "walk", lambda: None)
                n = s.replay(cap, cap.data)
        results.append((n, s.packets, s.malformed, [alert_to_api(a) for a in s.alerts],
                        [device_to_api(d) for d in s.devices.values()], connections_api(s),
                        s.flow_rows()))
    assert results[0] == results[1] == results[2]
    assert results[0][6], "the flow store saw the mix"
    assert results[0][0] == 60_000 and results[0][1] == 60_000
    assert results[0][3], "the mix contains a port scan"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 200), st.integers(0, 255)),
                max_size=6),
       st.integers(0, 120))
def test_engine_survives_mutated_frames(mutations, cut):
    """Bit-flipped and truncated real frames through both live paths: counted, never raised."""
    from labctl.sensor.config import load_config
    from labctl.sensor.engine import Sensor

    global _TEMPLATES, _CFG
    if "_TEMPLATES" not in globals():
        _TEMPLATES = [bytes(p) for p in
                      syn_scan(2, vlan=52) + arp_scan(1) + icmp_echo(1) +
                      [udp_packet("172.16.1.9", "8.8.8.8", 53),
                       tcp_packet("172.16.1.9", "172.16.1.10", 6667, flags="PA")]]
        _CFG = load_config()
    s = Sensor(_CFG)
    frames = []
    for i, t in enumerate(_TEMPLATES):
        b = bytearray(t)
        for which, pos, val in mutations:
            if which == i % 4 and pos < len(b):
                b[pos] = val
        frames.append((bytes(b[:cut] if cut < 14 else b), T0 + i))
    s.feed_batch(frames)
    for f, ts in frames:
        s.feed(f, 0, len(f), ts)
    assert s.packets == 2 * len(frames)


def _swap_pcap(data: bytes, *, big: bool, nanos: bool) -> bytes:
    """Re-encode a little-endian microsecond pcap as big-endian and/or nanosecond."""
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    _, vmaj, vmin, tz, sig, snap, link = struct.unpack_from("<IHHiIII", data, 0)
    out = bytearray(struct.pack(e + "IHHiIII", magic, vmaj, vmin, tz, sig, snap, link))
    off = 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        out += struct.pack(e + "IIII", sec, usec * 1000 if nanos else usec, incl, orig)
        out += data[off + 16:off + 16 + incl]
        off += 16 + incl
    return bytes(out)


@pytest.mark.parametrize("big,nanos", [(True, False), (False, True), (True, True)])
def test_pcap_byte_orders_and_nanoseconds(tmp_path, cli_run, big, nanos):
    pk = syn_scan(26, vlan=52) + [tcp_packet("172.16.1.20", "172.16.1.30", 6667, t=T0 + 9)]
    le = write(tmp_path / "le.pcap", pk)
    other = tmp_path / "other.pcap"
    other.write_bytes(_swap_pcap(le.read_bytes(), big=big, nanos=nanos))
    a = cli_run("sensor", "replay", "--pcap", str(le), "--json").json()
    b = cli_run("sensor", "replay", "--pcap", str(other), "--json").json()
    assert b["packets"] == 27
    assert a["alerts"] == b["alerts"] and a["devices"] == b["devices"]


def test_large_captures_are_memory_mapped_with_the_same_result(tmp_path, cli_run, monkeypatch):
    import mmap

    import labctl.sensor.pcap as pcap_mod

    pk = syn_scan(30, vlan=52) + address_scan(50, t0=T0 + 1)
    path = write(tmp_path / "m.pcap", pk)
    small = cli_run("sensor", "replay", "--pcap", str(path), "--json").json()
    monkeypatch.setattr(pcap_mod, "MMAP_THRESHOLD", 0)
    assert isinstance(pcap_mod.CaptureFile(path).data, mmap.mmap)
    mapped = cli_run("sensor", "replay", "--pcap", str(path), "--json").json()
    assert mapped["packets"] == 80
    assert mapped["alerts"] == small["alerts"] and mapped["devices"] == small["devices"]
