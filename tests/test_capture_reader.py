"""The project's one capture reader (labctl.sensor.pcap.CaptureFile) through
``labctl traffic report``: every container and byte order, files written by third-party
tools (tcpdump, editcap, scapy), wire lengths, and bad input with exact byte offsets."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from labctl.cli import run
from tests.helpers.traffic_pcaps import (
    T0,
    dns_response,
    pcapng_block,
    pcapng_section,
    tcp,
    udp,
    write_pcap,
    write_pcapng,
)

FEEDER, IRC = "172.16.1.10", "203.0.113.10"
CAM, CLOUD = "172.16.1.30", "198.51.100.7"
GW = "172.16.1.1"
FMAC, GMAC, CMAC = "b8:27:eb:00:00:0a", "02:00:00:00:00:01", "02:00:00:00:00:30"

TAGGED = 14 + 4 + 20 + 20  # a tagged TCP frame without payload
PLAIN_UDP = 14 + 20 + 8


def frames() -> list[tuple[float, bytes]]:
    """10 IRC exchanges (tagged TCP, 100-byte payloads out, bare ACKs back), 6 camera UDP
    datagrams of 300 bytes, one DNS answer; timestamps on exact binary fractions."""
    out: list[tuple[float, bytes]] = [
        (T0 + 0.25, udp(GW, FEEDER, 53, 33333, dns_response("irc.example.net", [IRC]),
                        smac=GMAC, dmac=FMAC, vlan=52))]
    out.append((T0 + 1, tcp(FEEDER, IRC, 41000, 6667, "S", smac=FMAC, dmac=GMAC, vlan=52)))
    for i in range(9):
        out.append((T0 + 2 + i, tcp(FEEDER, IRC, 41000, 6667, "PA", b"x" * 100, smac=FMAC,
                                    dmac=GMAC, vlan=52)))
    for i in range(10):
        out.append((T0 + 1.5 + i, tcp(IRC, FEEDER, 6667, 41000, "A", smac=GMAC, dmac=FMAC,
                                      vlan=52)))
    for i in range(6):
        out.append((T0 + 120 + 60 * i + 0.5, udp(CAM, CLOUD, 50000, 8443, b"c" * 300,
                                                 smac=CMAC, dmac=GMAC)))
    out.sort(key=lambda f: f[0])
    return out


DNS_LEN = TAGGED - 20 + 8 + len(dns_response("irc.example.net", [IRC]))
#: (a, b, packets a->b, packets b->a, bytes a->b, bytes b->a, first, last)
EXPECTED = sorted([
    (CAM, CLOUD, 6, 0, 6 * (PLAIN_UDP + 300), 0, "2023-11-15T00:02:00.500Z",
     "2023-11-15T00:07:00.500Z"),
    (FEEDER, IRC, 10, 10, TAGGED + 9 * (TAGGED + 100), 10 * TAGGED,
     "2023-11-15T00:00:01.000Z", "2023-11-15T00:00:10.500Z"),
    (GW, FEEDER, 1, 0, DNS_LEN, 0, "2023-11-15T00:00:00.250Z", "2023-11-15T00:00:00.250Z"),
])
N = 27


def report(*files: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict]:
    args = ["traffic", "report", "--json"]
    for f in files:
        args += ["--pcap", str(f)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = run(args + list(extra))
    return rc, (json.loads(buf.getvalue()) if rc == 0 else {})


def summary(doc: dict) -> list[tuple]:
    return sorted((c["a"], c["b"], c["packets_a_to_b"], c["packets_b_to_a"],
                   c["bytes_a_to_b"], c["bytes_b_to_a"], c["first_seen"], c["last_seen"])
                  for c in doc["conversations"])


def tool(*argv: str) -> None:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def scapy_packets(fr: list[tuple[float, bytes]]) -> list:
    from scapy.layers.l2 import Ether

    out = []
    for ts, raw in fr:
        p = Ether(raw)
        p.time = ts
        out.append(p)
    return out


def blocks(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every block of a little-endian pcapng (the test's own walk)."""
    out, off = [], 0
    while off + 8 <= len(data):
        n = struct.unpack_from("<I", data, off + 4)[0]
        out.append((off, n))
        off += n
    return out


def records(data: bytes) -> list[int]:
    """The offset of every record of a little-endian classic pcap."""
    out, off = [], 24
    while off + 16 <= len(data):
        out.append(off)
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    return out


# ---- every container, byte order and writer ----------------------------------------------

def test_every_container_byte_order_and_writer_gives_the_same_conversations(tmp_path):
    fr = frames()
    ref = write_pcap(tmp_path / "ref.pcap", fr)
    files = {
        "be.pcap": write_pcap(tmp_path / "be.pcap", fr, endian=">"),
        "ns-be.pcap": write_pcap(tmp_path / "ns-be.pcap", fr, endian=">", nanos=True),
        "le.pcapng": write_pcapng(tmp_path / "le.pcapng", fr),
        "be.pcapng": write_pcapng(tmp_path / "be.pcapng", fr, endian=">"),
        "gz.pcap.gz": write_pcap(tmp_path / "gz.pcap.gz", fr),
    }
    # two sections, the first little-endian, the second big-endian with nanosecond ticks
    mixed = tmp_path / "mixed.pcapng"
    mixed.write_bytes(pcapng_section(fr[:12]) + pcapng_section(fr[12:], endian=">",
                                                                tsresol=9))
    files["mixed.pcapng"] = mixed
    # if_tsresol as a power of two (2^-20 s ticks; the timestamps are exact in binary)
    p2 = tmp_path / "pow2.pcapng"
    p2.write_bytes(pcapng_section(fr, endian=">", tsresol=0x80 | 20))
    files["pow2.pcapng"] = p2
    # a gzip stream of several members (as `cat a.gz b.gz` makes)
    raw = ref.read_bytes()
    multi = tmp_path / "multi.pcap.gz"
    multi.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:3000])
                      + gzip.compress(raw[3000:]))
    files["multi.pcap.gz"] = multi
    ngz = tmp_path / "be.pcapng.gz"
    ngz.write_bytes(gzip.compress((tmp_path / "be.pcapng").read_bytes()))
    files["be.pcapng.gz"] = ngz
    # third-party writers
    from scapy.utils import PcapNgWriter, wrpcap

    wrpcap(str(tmp_path / "scapy.pcap"), scapy_packets(fr))
    files["scapy.pcap"] = tmp_path / "scapy.pcap"
    w = PcapNgWriter(str(tmp_path / "scapy.pcapng"))
    for p in scapy_packets(fr):
        w.write(p)
    w.close()
    files["scapy.pcapng"] = tmp_path / "scapy.pcapng"
    tool("editcap", "-F", "pcapng", str(ref), str(tmp_path / "editcap.pcapng"))
    files["editcap.pcapng"] = tmp_path / "editcap.pcapng"
    tool("editcap", "-F", "nsecpcap", str(ref), str(tmp_path / "editcap-ns.pcap"))
    files["editcap-ns.pcap"] = tmp_path / "editcap-ns.pcap"
    tool("tcpdump", "-r", str(ref), "-w", str(tmp_path / "tcpdump.pcap"))
    files["tcpdump.pcap"] = tmp_path / "tcpdump.pcap"
    tool("tcpdump", "--time-stamp-precision=nano", "-r", str(tmp_path / "editcap.pcapng"),
         "-w", str(tmp_path / "tcpdump-ns.pcap"))
    files["tcpdump-ns.pcap"] = tmp_path / "tcpdump-ns.pcap"
    # the tools' files really are what they are named
    assert (tmp_path / "editcap.pcapng").read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    assert (tmp_path / "tcpdump-ns.pcap").read_bytes()[:4] == \
        struct.pack("<I", 0xA1B23C4D)
    assert (tmp_path / "be.pcapng").read_bytes()[8:12] == b"\x1a\x2b\x3c\x4d"

    rc, doc = report(ref, extra=("--lab", "ref"))
    assert rc == 0 and summary(doc) == EXPECTED and doc["sources"]["packets"] == N
    for i, (name, f) in enumerate(files.items()):
        rc, doc = report(f, extra=("--lab", f"w{i}"))
        assert rc == 0, name
        assert summary(doc) == EXPECTED, name
        assert doc["sources"]["packets"] == N and doc["sources"]["partial"] is False, name


def test_wire_length_counts_when_the_capture_was_snapped(tmp_path):
    """Bytes are wire (original) lengths: a 60-byte snap length changes no byte count."""
    fr = frames()
    ref = write_pcap(tmp_path / "ref.pcap", fr)
    snapped = [write_pcap(tmp_path / "s.pcap", fr, snaplen=60),
               write_pcap(tmp_path / "s-be.pcap", fr, snaplen=60, endian=">"),
               write_pcapng(tmp_path / "s.pcapng", fr, snaplen=60),
               write_pcapng(tmp_path / "s-be.pcapng", fr, snaplen=60, endian=">")]
    tool("editcap", "-s", "60", "-F", "pcapng", str(ref), str(tmp_path / "e.pcapng"))
    snapped.append(tmp_path / "e.pcapng")
    from labctl.sensor.pcap import CaptureFile

    for i, f in enumerate(snapped):
        with CaptureFile(f) as cap:
            recs = list(cap.records())
        assert [r[2] for r in recs] == [min(60, len(b)) for _, b in fr], f
        assert [r[3] for r in recs] == [len(b) for _, b in fr], f
        rc, doc = report(f, extra=("--lab", f"s{i}"))
        assert rc == 0 and summary(doc) == EXPECTED, f


# ---- the reader's API ----------------------------------------------------------------------

def test_capture_file_api_gzip_temp_file_close_and_released_pages(tmp_path, monkeypatch):
    import mmap

    import labctl.sensor.pcap as pcap_mod
    from labctl.sensor.pcap import CaptureFile

    fr = frames()
    gz = write_pcap(tmp_path / "x.pcap.gz", fr)
    plain = write_pcap(tmp_path / "x.pcap", fr)
    with CaptureFile(plain) as cap:
        triples = list(cap)
        quads = list(cap.records())
    assert [q[:3] for q in quads] == triples and len(triples) == N
    assert [q[3] for q in quads] == [len(b) for _, b in fr]
    assert [q[0] for q in quads] == [t for t, _ in fr]
    # gzip, mapped: the decompressed copy is private (0600), has no name, and goes on close
    with CaptureFile(gz, mmap_threshold=0) as cap:
        assert cap.compressed and isinstance(cap.data, mmap.mmap)
        assert cap._tmp is not None
        st = os.fstat(cap._tmp.fileno())
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 0
        assert list(cap.records()) == quads
        assert cap.damage() is None and cap.stop is None
        fd = cap._tmp.fileno()
    assert cap._tmp is None and cap.data.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    # the walk gives back the pages behind it
    monkeypatch.setattr(pcap_mod, "RELEASE_EVERY", 4096)
    big = write_pcap(tmp_path / "big.pcap", fr * 200)
    with CaptureFile(big, mmap_threshold=0) as cap:
        assert sum(1 for _ in cap) == N * 200
        assert cap._released >= len(cap.data) - 2 * 4096 - mmap.PAGESIZE


def test_sensor_replay_reads_gzip_through_the_same_reader(tmp_path, cli_run):
    fr = frames()
    a = cli_run("sensor", "replay", "--pcap", str(write_pcap(tmp_path / "a.pcap", fr)),
                "--json").json()
    b = cli_run("sensor", "replay", "--pcap", str(write_pcap(tmp_path / "a.pcap.gz", fr)),
                "--json").json()
    assert a["packets"] == b["packets"] == N
    assert a["devices"] == b["devices"] and a["alerts"] == b["alerts"]


def test_sensor_replay_fused_loop_names_damage_and_releases_pages(tmp_path, cli_run,
                                                                  monkeypatch):
    """The sensor's own fused pcap loop stops at a corrupt length or a cut record like the
    reader does (the packets before it counted, the byte offset named), and gives back the
    mapped pages behind it."""
    import mmap

    import labctl.sensor.fastpath as fastpath
    from labctl.sensor.config import load_config
    from labctl.sensor.engine import Sensor
    from labctl.sensor.pcap import CaptureFile

    fr = frames() * 200  # long enough that the fused loop, not the tail walk, meets it
    good = write_pcap(tmp_path / "good.pcap", fr).read_bytes()
    offs, off = [], 24
    for _, b in fr:
        offs.append(off)
        off += 16 + len(b)
    k = 700
    assert offs[k] + 300_000 < len(good)  # a length the file could hold, but no frame has
    bad = bytearray(good)
    struct.pack_into("<I", bad, offs[k] + 8, 300_000)
    (tmp_path / "corrupt.pcap").write_bytes(bytes(bad))
    doc = cli_run("sensor", "replay", "--pcap", str(tmp_path / "corrupt.pcap"),
                  "--json").json()
    assert doc["packets"] == k and doc["truncated"] == 1
    assert doc["damage"] == {"offset": offs[k], "what": "corrupt record (length 300000)",
                             "compressed": False}
    r = cli_run("sensor", "replay", "--pcap", str(tmp_path / "corrupt.pcap"))
    assert r.exit_code == 0
    assert f"corrupt record (length 300000) at byte {offs[k]}" in r.stderr
    # a record cut by the end of the file, and a clean file
    (tmp_path / "cut.pcap").write_bytes(good[:offs[-1] + 30])
    doc = cli_run("sensor", "replay", "--pcap", str(tmp_path / "cut.pcap"), "--json").json()
    assert doc["packets"] == len(fr) - 1
    assert doc["damage"]["offset"] == offs[-1] and doc["damage"]["what"] == "truncated record"
    doc = cli_run("sensor", "replay", "--pcap", str(tmp_path / "good.pcap"), "--json").json()
    assert doc["packets"] == len(fr) and doc["damage"] is None and doc["truncated"] == 0
    # the same counters whichever way the records go, and the pages behind are released
    monkeypatch.setattr(fastpath, "RELEASE_EVERY", 4096)
    cfg = load_config()
    with CaptureFile(tmp_path / "good.pcap", mmap_threshold=0) as cap:
        s = Sensor(cfg)
        assert s.replay(cap, cap.data) == len(fr)
        assert isinstance(cap.data, mmap.mmap)
        assert cap._released >= len(good) - 2 * 4096 - mmap.PAGESIZE
    with CaptureFile(tmp_path / "good.pcap") as cap:
        g = Sensor(cfg)
        fastpath.replay_generic(g, cap, cap.data)
    assert (s.packets, s.malformed, s.flow_rows()) == (g.packets, g.malformed, g.flow_rows())


# ---- bad input -------------------------------------------------------------------------------

def test_not_a_capture_exits_2_naming_the_file(tmp_path, capsys):
    cases = {
        "notes.txt": b"hello, this is not a capture at all\n",
        "empty.pcap": b"",
        "garbage.gz": b"\x1f\x8b" + b"\xff" * 40,
        "shb-no-bom.pcapng": b"\x0a\x0d\x0d\x0a" + b"\x1c\0\0\0" + b"\0" * 20,
    }
    for name, content in cases.items():
        f = tmp_path / name
        f.write_bytes(content)
        rc, _ = report(f)
        err = capsys.readouterr().err
        assert rc == 2, name
        assert str(f) in err, (name, err)
    assert "not a pcap or pcapng file" in (report(tmp_path / "notes.txt"),
                                          capsys.readouterr().err)[1]


def test_unknown_link_types_exit_2_or_are_skipped(tmp_path, capsys):
    fr = frames()
    raw = write_pcap(tmp_path / "raw.pcap", [(T0, b"\x45" + b"\0" * 40)], linktype=101)
    rc, _ = report(raw)
    assert rc == 2 and f"{raw}: link type 101 is not Ethernet" in capsys.readouterr().err
    # written by editcap: the same capture relabelled as raw IP
    tool("editcap", "-F", "pcap", "-T", "rawip", str(write_pcap(tmp_path / "e.pcap", fr)),
         str(tmp_path / "rawip.pcap"))
    rc, _ = report(tmp_path / "rawip.pcap")
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'rawip.pcap'}: link type 101 is not Ethernet" in err
    # the same relabelled to pcapng: no interface is Ethernet
    tool("editcap", "-F", "pcapng", str(tmp_path / "rawip.pcap"),
         str(tmp_path / "rawip.pcapng"))
    rc, _ = report(tmp_path / "rawip.pcapng")
    assert rc == 2 and f"{tmp_path / 'rawip.pcapng'}: no Ethernet records" in \
        capsys.readouterr().err
    ng = write_pcapng(tmp_path / "raw.pcapng", fr, linktype=113)
    rc, _ = report(ng)
    assert rc == 2
    assert f"{ng}: no Ethernet records ({N} records of other link types)" in \
        capsys.readouterr().err
    # one Ethernet interface and one of another link type: those records are skipped
    both = tmp_path / "both.pcapng"
    both.write_bytes(pcapng_section(fr, other=[(T0 + 5, b"\x45" + b"\0" * 40)] * 3))
    rc, doc = report(both)
    assert rc == 0 and summary(doc) == EXPECTED and doc["sources"]["packets"] == N
    from labctl.sensor.pcap import CaptureFile

    with CaptureFile(both) as cap:
        assert sum(1 for _ in cap) == N and cap.skipped == 3


def _partial(f: Path, offset: int, what: str, packets: int) -> None:
    rc, doc = report(f, extra=("--partial", "--lab", "partial"))
    assert rc == 0
    src = doc["sources"]
    assert src["partial"] is True and src["packets"] == packets
    assert src["partial_reasons"] == [{"file": str(f), "offset": offset, "what": what}]


def test_truncated_and_corrupt_pcap_name_file_and_exact_offset(tmp_path, capsys):
    data = write_pcap(tmp_path / "ok.pcap", frames()).read_bytes()
    offs = records(data)
    assert len(offs) == N
    cases = [
        # (name, bytes, what, offset, whole records before it)
        ("cut-data.pcap", data[:offs[20] + 16 + 7], "truncated record", offs[20], 20),
        ("cut-header.pcap", data[:offs[15] + 9], "truncated record header", offs[15], 15),
    ]
    bad = bytearray(data)
    struct.pack_into("<I", bad, offs[9] + 8, 262_145)
    cases.append(("corrupt.pcap", bytes(bad), "corrupt record (length 262145)", offs[9], 9))
    big = bytearray(write_pcap(tmp_path / "be.pcap", frames(), endian=">").read_bytes())
    struct.pack_into(">I", big, offs[3] + 8, 0x7FFFFFF0)
    cases.append(("corrupt-be.pcap", bytes(big), f"corrupt record (length {0x7FFFFFF0})",
                  offs[3], 3))
    # a file written by tcpdump, cut by a failing disk
    tool("tcpdump", "-r", str(tmp_path / "ok.pcap"), "-w", str(tmp_path / "td.pcap"))
    td = (tmp_path / "td.pcap").read_bytes()
    tdo = records(td)
    cases.append(("tcpdump-cut.pcap", td[:tdo[25] + 30], "truncated record", tdo[25], 25))
    for name, content, what, offset, whole in cases:
        f = tmp_path / name
        f.write_bytes(content)
        rc, _ = report(f)
        err = capsys.readouterr().err
        assert rc == 2, name
        assert f"{f}: {what} at byte {offset}" in err, (name, err)
        assert "--partial" in err
        _partial(f, offset, what, whole)


def test_truncated_and_corrupt_pcapng_name_file_and_exact_offset(tmp_path, capsys):
    fr = frames()
    data = write_pcapng(tmp_path / "ok.pcapng", fr).read_bytes()
    blk = blocks(data)
    assert len(blk) == 2 + N
    (o20, n20), (o7, n7), (o5, _n5) = blk[2 + 20], blk[2 + 7], blk[2 + 5]
    cases = [("cut.pcapng", data[:o20 + n20 - 3], "truncated or corrupt block", o20, 20)]
    bad = bytearray(data)
    struct.pack_into("<I", bad, o7 + n7 - 4, n7 + 4)
    cases.append(("trailer.pcapng", bytes(bad),
                  f"corrupt block (trailing length {n7 + 4}, leading {n7})", o7, 7))
    bad = bytearray(data)
    struct.pack_into("<I", bad, o5 + 20, 5000)  # captured length beyond its block
    cases.append(("caplen.pcapng", bytes(bad), f"corrupt block (captured length 5000 in a "
                  f"{blk[2 + 5][1]}-byte block)", o5, 5))
    bad = bytearray(data)
    struct.pack_into("<I", bad, o5 + 4, 30)  # a block length that is not a multiple of 4
    cases.append(("blen.pcapng", bytes(bad), "corrupt block (length 30)", o5, 5))
    # big-endian, cut
    be = write_pcapng(tmp_path / "be.pcapng", fr, endian=">").read_bytes()
    cases.append(("be-cut.pcapng", be[:o20 + 10], "truncated or corrupt block", o20, 20))
    # written by editcap, cut
    tool("editcap", "-F", "pcapng", str(write_pcap(tmp_path / "r.pcap", fr)),
         str(tmp_path / "e.pcapng"))
    ed = (tmp_path / "e.pcapng").read_bytes()
    eb = blocks(ed)
    pkt = [o for o, _n in eb if struct.unpack_from("<I", ed, o)[0] == 6]
    assert len(pkt) == N
    cases.append(("editcap-cut.pcapng", ed[:pkt[24] + 40], "truncated or corrupt block",
                  pkt[24], 24))
    for name, content, what, offset, whole in cases:
        f = tmp_path / name
        f.write_bytes(content)
        rc, _ = report(f)
        err = capsys.readouterr().err
        assert rc == 2, name
        assert f"{f}: {what} at byte {offset}" in err, (name, err)
        _partial(f, offset, what, whole)


def test_damaged_gzip_names_the_decompressed_offset(tmp_path, capsys):
    data = write_pcap(tmp_path / "ok.pcap", frames()).read_bytes()
    offs = records(data)
    z = gzip.compress(data)
    # cut: everything the stream still holds is decompressed, and the offset is its length
    cut = z[:len(z) // 2]
    got = zlib.decompressobj(wbits=31).decompress(cut)
    assert 0 < len(got) < len(data)
    whole = sum(1 for o in offs if o + 16 + struct.unpack_from("<I", data, o + 8)[0]
                <= len(got))
    f = tmp_path / "cut.pcap.gz"
    f.write_bytes(cut)
    rc, _ = report(f)
    err = capsys.readouterr().err
    assert rc == 2
    assert (f"{f}: compressed stream ends early at byte {len(got)} of the decompressed "
            "stream") in err
    _partial(f, len(got), "compressed stream ends early", whole)
    # a second member that is damaged: the first member's bytes are all kept
    f2 = tmp_path / "member.pcap.gz"
    second = bytearray(gzip.compress(data[offs[13]:]))
    second[20:30] = b"\xff" * 10
    f2.write_bytes(gzip.compress(data[:offs[13]]) + bytes(second))
    rc, _ = report(f2)
    err = capsys.readouterr().err
    assert rc == 2 and f"{f2}: compressed stream damaged" in err
    assert "of the decompressed stream" in err
    rc, doc = report(f2, extra=("--partial", "--lab", "m"))
    assert rc == 0 and doc["sources"]["partial"] is True
    (reason,) = doc["sources"]["partial_reasons"]
    assert reason["offset"] >= offs[13] and reason["what"].startswith(
        "compressed stream damaged")
    assert doc["sources"]["packets"] >= 13
    # a corrupt record inside an intact gzip stream is named at its own offset
    bad = bytearray(data)
    struct.pack_into("<I", bad, offs[4] + 8, 300_000)
    f3 = tmp_path / "rec.pcap.gz"
    f3.write_bytes(gzip.compress(bytes(bad)))
    rc, _ = report(f3)
    assert rc == 2 and (f"{f3}: corrupt record (length 300000) at byte {offs[4]} of the "
                        "decompressed stream") in capsys.readouterr().err


def test_pcapng_block_helper_is_what_the_reader_reads():
    """The helper's big-endian block has the reader's expected shape (a sanity check of
    the crafted files above)."""
    b = pcapng_block(6, b"abc", ">")
    assert len(b) == 16 and b[:8] == struct.pack(">II", 6, 16) and b[-4:] == \
        struct.pack(">I", 16)


def test_udp_payload_is_never_read_as_a_tcp_syn(tmp_path):
    """A UDP payload byte where a TCP header keeps its flags (0x02) does not mark the
    flow as opened by a SYN, in the fused pcap loop and in the pcapng path alike."""
    from labctl.traffic.flows import read_captures

    pay = b"\0\0\0\0\0\x02" + b"\0" * 20
    fr = [(T0 + i, udp(CLOUD, CAM, 5353, 40128, pay, smac=GMAC, dmac=CMAC))
          for i in range(3)]
    for f in (write_pcap(tmp_path / "u.pcap", fr), write_pcapng(tmp_path / "u.pcapng", fr)):
        (r,) = read_captures([f]).records()
        assert r.packets == 3 and r.syn is False, f
