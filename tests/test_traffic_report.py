"""labctl traffic report on crafted captures: every number asserted exactly."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

from labctl.cli import run
from tests.helpers.traffic_pcaps import (
    DAY,
    T0,
    dns_response,
    tcp,
    udp,
    write_pcap,
    write_pcapng,
)

FEEDER = "172.16.1.10"
FEEDER_MAC = "b8:27:eb:00:00:0a"  # Raspberry Pi Foundation OUI (sensor/oui.txt)
VACUUM = "172.16.1.20"
VACUUM_MAC = "00:15:5d:00:00:20"  # Microsoft OUI
GW = "172.16.1.1"
GW_MAC = "02:00:00:00:00:01"
IRC = "203.0.113.10"
CLOUD = "198.51.100.10"

SYN_LEN = 14 + 4 + 20 + 20  # tagged Ethernet, IPv4, TCP
DATA_LEN = SYN_LEN + 100


def frames() -> list[tuple[float, bytes]]:
    """Three days of a pet feeder's IRC sessions at 01:00, 09:00 and 18:00 (VLAN 52),
    a vacuum's beacon to a cloud host every 300 s for two hours (untagged), and one DNS
    answer naming the IRC host."""
    out: list[tuple[float, bytes]] = []
    k = 0
    for day in range(3):
        for hour in (1, 9, 18):
            t = T0 + day * DAY + hour * 3600 + 120 + day * 30  # 01:02, 01:02:30, 01:03
            sp = 41000 + k
            k += 1
            out.append((t, tcp(FEEDER, IRC, sp, 6667, "S", smac=FEEDER_MAC, dmac=GW_MAC,
                               vlan=52)))
            out.append((t + 0.05, tcp(IRC, FEEDER, 6667, sp, "SA", smac=GW_MAC,
                                      dmac=FEEDER_MAC, vlan=52)))
            for i in range(5):
                out.append((t + 1 + i, tcp(FEEDER, IRC, sp, 6667, "PA", b"x" * 100,
                                           smac=FEEDER_MAC, dmac=GW_MAC, vlan=52)))
                out.append((t + 1.5 + i, tcp(IRC, FEEDER, 6667, sp, "A", smac=GW_MAC,
                                             dmac=FEEDER_MAC, vlan=52)))
    for i in range(24):  # every 300 s from 00:10 on day 0, ~10 s jitter-free, UDP 8443
        t = T0 + 600 + i * 300
        out.append((t, udp(VACUUM, CLOUD, 50000, 8443, b"b" * 50, smac=VACUUM_MAC,
                           dmac=GW_MAC)))
    out.append((T0 + 100, udp(GW, FEEDER, 53, 33333, dns_response("irc.example.net", [IRC]),
                              smac=GW_MAC, dmac=FEEDER_MAC, vlan=52)))
    out.sort(key=lambda f: f[0])
    return out


def report(tmp_path: Path, *files: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    out = tmp_path / "out.json"
    args = ["traffic", "report", "--json"]
    for f in files:
        args += ["--pcap", str(f)]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run(args + list(extra))
    out.write_text(buf.getvalue())
    return rc, (json.loads(buf.getvalue()) if rc == 0 else {})


def test_report_numbers(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    rc, doc = report(tmp_path, pcap)
    assert rc == 0
    src = doc["sources"]
    assert src["packets"] == 9 * 12 + 24 + 1 and src["partial"] is False
    devs = {d["ip"]: d for d in doc["devices"]}
    assert set(devs) == {FEEDER, VACUUM, GW}
    f = devs[FEEDER]
    assert f["mac"] == FEEDER_MAC and f["vendor"] == "Raspberry Pi Foundation"
    assert f["packets_out"] == 9 * 6 and f["bytes_out"] == 9 * (SYN_LEN + 5 * DATA_LEN)
    dns_len = 14 + 4 + 20 + 8 + len(dns_response("irc.example.net", [IRC]))
    assert f["packets_in"] == 9 * 6 + 1
    assert f["bytes_in"] == 9 * 6 * SYN_LEN + dns_len
    assert f["first_seen"] == "2023-11-15T00:01:40.000Z"  # the DNS answer
    assert f["last_seen"] == "2023-11-17T18:03:05.500Z"
    peers = {p["ip"]: p for p in f["peers"]}
    irc = peers[IRC]
    assert irc["scope"] == "external" and irc["outbound"] is True
    assert irc["name"] == "irc.example.net"  # from the DNS answer in the capture
    assert irc["ports"] == ["tcp/6667"]
    assert (irc["packets_out"], irc["packets_in"]) == (54, 54)
    assert f["outbound"] == [IRC, GW]  # DNS: the higher port (33333) is the client
    hours = f["hours"]
    assert [h for h in range(24) if hours[h]] == [0, 1, 9, 18]
    assert hours[1] == hours[9] == hours[18] == 3 * 12 and hours[0] == 1
    assert len(f["sparkline"]) == 24 and f["sparkline"][1] == "█"
    assert f["sparkline"][2] == " "
    (per,) = f["periodicity"]
    assert per["text"] == f"to {IRC}:6667 daily at about 01:00, 09:00 and 18:00"
    flags = {(x["flag"], x.get("port")) for x in f["flags"]}
    assert flags == {("irc-like", 6667), ("cleartext", 6667), ("internet", None)}

    v = devs[VACUUM]
    assert v["packets_out"] == 24 and v["bytes_out"] == 24 * (14 + 20 + 8 + 50)
    (vp,) = v["periodicity"]
    assert vp["kind"] == "interval" and vp["interval"] == 300
    assert vp["text"] == f"to {CLOUD}:8443 every 300 s"
    # 8443 is listed for TCP only: UDP 8443 is not a known service
    assert {x["flag"] for x in v["flags"]} == {"internet", "non-standard-port"}

    convs = {(c["a"], c["b"]): c for c in doc["conversations"]}
    assert set(convs) == {(FEEDER, IRC), (VACUUM, CLOUD), (GW, FEEDER)}
    c = convs[(FEEDER, IRC)]
    assert (c["packets_a_to_b"], c["packets_b_to_a"]) == (54, 54)
    assert (c["bytes_a_to_b"], c["bytes_b_to_a"]) == (9 * (SYN_LEN + 5 * DATA_LEN),
                                                       54 * SYN_LEN)
    assert c["first_seen"] == "2023-11-15T01:02:00.000Z"
    c = convs[(GW, FEEDER)]
    assert (c["packets_a_to_b"], c["bytes_a_to_b"], c["packets_b_to_a"]) == (1, dns_len, 0)

    fleet = doc["fleet"]
    assert [t["ip"] for t in fleet["top_talkers"]] == [FEEDER, VACUUM, GW]
    assert [(e["ip"], e["devices"], e["ports"]) for e in fleet["top_external"]] == [
        (IRC, [FEEDER], ["tcp/6667"]), (CLOUD, [VACUUM], ["udp/8443"])]
    assert {(u["proto"], u["port"]): u["packets"] for u in fleet["ports"]} == {
        ("TCP", 6667): 108, ("UDP", 8443): 24, ("UDP", 53): 1}
    rows = {r["ip"]: r["hours"] for r in fleet["matrix"]["rows"]}
    assert rows[FEEDER] == hours and len(fleet["matrix"]["hours"]) == 24


def test_every_container_gives_the_same_report(tmp_path: Path) -> None:
    """The fused little-endian loop and the generic CaptureFile path agree."""
    fr = frames()
    files = [write_pcap(tmp_path / "le.pcap", fr),
             write_pcap(tmp_path / "be.pcap", fr, endian=">"),
             write_pcap(tmp_path / "ns.pcap", fr, nanos=True),
             write_pcap(tmp_path / "le.pcap.gz", fr),
             write_pcapng(tmp_path / "x.pcapng", fr)]
    docs = []
    for f in files:
        rc, doc = report(tmp_path, f, extra=("--lab", f.name.replace(".", "")[:8]))
        assert rc == 0, f
        doc.pop("sources")
        docs.append(doc)
    for d in docs[1:]:
        assert d == docs[0]


def test_vlan_tags_and_jsonl_export(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    out = tmp_path / "flows.jsonl"
    assert run(["traffic", "export", "--pcap", str(pcap), "--jsonl", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # 9 feeder connections x 2 directions, 1 vacuum flow, 1 DNS answer
    assert len(rows) == 20
    feeder = [r for r in rows if r["SrcIp"] == FEEDER]
    assert {r["Vlan"] for r in feeder} == {52} and len(feeder) == 9
    assert all(r["Packets"] == 6 and r["Bytes"] == SYN_LEN + 5 * DATA_LEN for r in feeder)
    assert all(r["DstName"] == "irc.example.net" for r in feeder)
    vac = [r for r in rows if r["SrcIp"] == VACUUM]
    assert vac == [{**vac[0], "Vlan": 0, "Packets": 24, "DstPort": 8443, "SrcPort": 50000,
                    "Protocol": "UDP", "FirstSeen": "2023-11-15T00:10:00.000Z",
                    "LastSeen": "2023-11-15T02:05:00.000Z"}]


def test_new_peers_and_ports_since_previous_report(tmp_path: Path) -> None:
    first = write_pcap(tmp_path / "a.pcap", frames())
    rc, doc = report(tmp_path, first, extra=("--lab", "home"))
    assert rc == 0 and doc["sources"]["previous_report"] is False
    assert not any(x["flag"].startswith("new-") for d in doc["devices"] for x in d["flags"])
    more = frames() + [
        (T0 + 5000, tcp(FEEDER, "198.51.100.99", 42000, 23, "S", smac=FEEDER_MAC,
                        dmac=GW_MAC, vlan=52)),
        (T0 + 5001, udp("172.16.1.30", GW, 5353, 53, b"q" * 10, smac="02:00:00:00:00:30",
                        dmac=GW_MAC))]
    second = write_pcap(tmp_path / "b.pcap", sorted(more, key=lambda f: f[0]))
    rc, doc = report(tmp_path, second, extra=("--lab", "home"))
    assert rc == 0 and doc["sources"]["previous_report"] is True
    devs = {d["ip"]: d for d in doc["devices"]}
    flags = {x["flag"]: x for x in devs[FEEDER]["flags"]}
    assert flags["new-peer"]["peers"] == ["198.51.100.99"]
    assert flags["new-port"]["ports"] == ["out:tcp/23"]
    assert "cleartext" in {x["flag"] for x in devs[FEEDER]["flags"]
                           if x.get("port") == 23}
    assert [x["flag"] for x in devs["172.16.1.30"]["flags"]] == ["new-device"]
    assert not any(x["flag"].startswith("new-") for x in devs[VACUUM]["flags"])
    # the same capture again: nothing is new any more
    rc, doc = report(tmp_path, second, extra=("--lab", "home"))
    assert not any(x["flag"].startswith("new-") for d in doc["devices"] for x in d["flags"])


def test_since_and_device(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    rc, doc = report(tmp_path, pcap, extra=("--since", "1d", "--lab", "since"))
    assert rc == 0
    # newest packet 2023-11-17T18:03:05.5Z; one day back keeps day 2's sessions only
    f = {d["ip"]: d for d in doc["devices"]}[FEEDER]
    assert f["packets_out"] == 3 * 6 and f["first_seen"] == "2023-11-17T01:03:00.000Z"
    rc, doc = report(tmp_path, pcap, extra=("--device", VACUUM_MAC, "--lab", "dev"))
    assert rc == 0 and [d["ip"] for d in doc["devices"]] == [VACUUM]
    assert [(c["a"], c["b"]) for c in doc["conversations"]] == [(VACUUM, CLOUD)]
    rc, _ = report(tmp_path, pcap, extra=("--device", "nosuch"))
    assert rc == 2
    rc, _ = report(tmp_path, pcap, extra=("--since", "soon"))
    assert rc == 2


def test_truncated_capture_names_file_and_offset(tmp_path: Path, capsys) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    data = pcap.read_bytes()
    # the offset of record 11 (records before it are whole)
    off = 24
    for _ in range(10):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:off + 16 + 5])
    rc, _ = report(tmp_path, cut)
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{cut}: truncated record at byte {off}" in err and "--partial" in err
    rc, doc = report(tmp_path, cut, extra=("--partial",))
    assert rc == 0
    assert doc["sources"]["partial"] is True and doc["sources"]["packets"] == 10
    assert doc["sources"]["partial_reasons"] == [
        {"file": str(cut), "offset": off, "what": "truncated record"}]
    # a corrupt length field in the middle is named the same way
    bad = bytearray(data)
    struct.pack_into("<I", bad, off + 8, 0x7FFFFFF0)
    corrupt = tmp_path / "corrupt.pcap"
    corrupt.write_bytes(bytes(bad))
    rc, _ = report(tmp_path, corrupt)
    assert rc == 2
    assert f"{corrupt}: corrupt record (length {0x7FFFFFF0}) at byte {off}" \
        in capsys.readouterr().err
    # the same in pcapng and gzip
    ng = write_pcapng(tmp_path / "x.pcapng", frames())
    raw = ng.read_bytes()
    ngcut = tmp_path / "cut.pcapng"
    ngcut.write_bytes(raw[:-7])
    rc, _ = report(tmp_path, ngcut)
    assert rc == 2 and "truncated or corrupt block at byte" in capsys.readouterr().err
    gz = tmp_path / "cut.pcap.gz"
    gz.write_bytes(gzip.compress(data)[:-30])
    rc, _ = report(tmp_path, gz)
    err = capsys.readouterr().err
    assert rc == 2 and f"{gz}: compressed stream ends early at byte" in err
    assert "of the decompressed stream" in err
    rc, doc = report(tmp_path, gz, extra=("--partial",))
    assert rc == 0 and doc["sources"]["partial"] is True


def test_not_a_capture_and_unknown_link_type_exit_2(tmp_path: Path, capsys) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a capture at all\n")
    assert report(tmp_path, text)[0] == 2
    assert "not a pcap or pcapng file" in capsys.readouterr().err
    raw = write_pcap(tmp_path / "raw.pcap", [(T0, b"\x45" + b"\0" * 40)], linktype=101)
    assert report(tmp_path, raw)[0] == 2
    assert "link type 101 is not Ethernet" in capsys.readouterr().err
    ng = write_pcapng(tmp_path / "raw.pcapng", [(T0, b"\x45" + b"\0" * 40)], linktype=101)
    assert report(tmp_path, ng)[0] == 2
    assert "no Ethernet records" in capsys.readouterr().err
    assert report(tmp_path, tmp_path / "missing.pcap")[0] == 2


def test_terminal_tables(tmp_path: Path, capsys) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    assert run(["traffic", "report", "--pcap", str(pcap)]) == 0
    out = capsys.readouterr().out
    assert f"to {IRC}:6667 daily at about 01:00, 09:00 and 18:00" in out
    assert "irc.example.net" in out and "Top external destinations" in out
