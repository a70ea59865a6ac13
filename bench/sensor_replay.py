"""Benchmark: build 1M-packet pcaps and replay them with `labctl sensor replay`, printing packets/s.

Goals (issue 12): >= 1M packets/s on every mix, >= 500k packets/s on the all-SYN worst case,
with the flow store on (it always is). The pcaps are written directly with struct (scapy
would need minutes for 1M packets). Mixes (``--mix``):

* ``default``: a busy IoT segment: mostly established TCP data between a few dozen devices,
  UDP (DNS/NTP/mDNS), new TCP sessions with SYN/SYN-ACK, ARP, ICMP echo, 10% of frames
  802.1Q-tagged (VLAN 52), and one nmap-like SYN port scan, so every engine runs;
* ``irc6667``: the reference lab's pet feeders: the default mix plus a tenth of the packets
  from 10 feeders to a WAN address on TCP 6667 (300 live flows, each one a match of the
  shipped user rule "Communication to port 6667", every match after the first alert a
  repeat inside the dedup window) and their replies;
* ``syn``: the worst case: every frame a SYN to a new port (a port scan of 5 hosts), so
  every frame is a new flow and a new connection attempt;
* ``all``: each of them.

Usage::

    python bench/sensor_replay.py [--mix default|irc6667|syn|all] [--packets N] [--runs 3]
                                  [--keep DIR] [--profile]

Each mix is replayed ``--runs`` times in a fresh ``labctl sensor replay`` process; the median
engine time is reported, with the 1-minute load average before and after (other work on the
machine slows it: compare only runs made at a low load). It also prints the ratio against
tcpdump reading the same file (`tcpdump -r FILE -w /dev/null`), a reference for "as fast as
a packet tool can read the file".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REC = struct.Struct("<IIII")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def eth(dst: bytes, src: bytes, etype: int, payload: bytes, vlan: int = 0) -> bytes:
    if vlan:
        return dst + src + struct.pack("!HHH", 0x8100, vlan, etype) + payload
    return dst + src + struct.pack("!H", etype) + payload


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + payload


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 64240, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def build(path: str, n: int, seed: int = 4, *, irc: bool = False) -> None:
    """Write an n-packet Ethernet pcap with a realistic mix; templates are pre-built.

    ``irc``: a tenth of the packets are pet feeders' TCP to 203.0.113.10:6667 (a rule's port)
    and a twentieth the WAN's replies, over 300 flows."""
    rnd = random.Random(seed)
    macs = [bytes([0xB8, 0x27, 0xEB, 0, 0, i]) for i in range(40)]
    ips = [bytes([172, 16, 1, 10 + i]) for i in range(40)]
    templates: list[bytes] = []
    # established TCP data flows (70%)
    for _ in range(70):
        a, b = rnd.sample(range(40), 2)
        sport = rnd.randint(32768, 60999)
        dport = rnd.choice([80, 443, 1883, 6668, 8009, 502])
        if rnd.random() < 0.5:
            templates.append(eth(macs[b], macs[a], 0x0800,
                                 ipv4(ips[a], ips[b], 6, tcp(sport, dport, 0x18, b"x" * 64))))
        else:
            templates.append(eth(macs[a], macs[b], 0x0800,
                                 ipv4(ips[b], ips[a], 6, tcp(dport, sport, 0x10))))
    # UDP (15%)
    for _ in range(15):
        a, b = rnd.sample(range(40), 2)
        templates.append(eth(macs[b], macs[a], 0x0800, ipv4(
            ips[a], ips[b], 17, udp(rnd.randint(32768, 60999),
                                    rnd.choice([53, 123, 5353, 1900]), b"q" * 32))))
    # VLAN-tagged TCP (10%)
    for _ in range(10):
        a, b = rnd.sample(range(40), 2)
        templates.append(eth(macs[b], macs[a], 0x0800, ipv4(
            ips[a], ips[b], 6, tcp(rnd.randint(32768, 60999), 443, 0x10)), vlan=52))
    # ARP and ICMP (5%)
    for _ in range(3):
        a, b = rnd.sample(range(40), 2)
        templates.append(eth(b"\xff" * 6, macs[a], 0x0806, struct.pack(
            "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, macs[a], ips[a], b"\0" * 6, ips[b])))
    for _ in range(2):
        a, b = rnd.sample(range(40), 2)
        icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"p" * 32
        templates.append(eth(macs[b], macs[a], 0x0800, ipv4(ips[a], ips[b], 1, icmp)))
    scanner_mac, scanner_ip = bytes.fromhex("00155d000032"), bytes([172, 16, 1, 50])
    t0 = 1_700_000_000
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    scan_every = max(1, n // 2000)  # 2000 scan SYNs spread over the file
    scan_port = 1
    ntemp = len(templates)
    pick = [rnd.randrange(ntemp) for _ in range(4096)]
    if irc:
        wan_mac, wan = bytes.fromhex("04d9f5000001"), bytes([203, 0, 113, 10])
        feeders = [(bytes([0x70, 0xB3, 0xD5, 0, 1, i]), bytes([172, 16, 1, 100 + i]))
                   for i in range(10)]
        outs, backs = [], []
        for i in range(300):
            fmac, fip = feeders[i % 10]
            sport = 40000 + i
            outs.append(len(templates))
            templates.append(eth(wan_mac, fmac, 0x0800, ipv4(
                fip, wan, 6, tcp(sport, 6667, 0x18, b"PRIVMSG #feed :ok\r\n"))))
            backs.append(len(templates))
            templates.append(eth(fmac, wan_mac, 0x0800, ipv4(wan, fip, 6, tcp(6667, sport, 0x10))))
        for j in range(4096):
            r = rnd.random()
            if r < 0.10:
                pick[j] = rnd.choice(outs)
            elif r < 0.15:
                pick[j] = rnd.choice(backs)
    with open(path, "wb") as f:
        for i in range(n):
            usec = i * 10  # 100k packets per second of capture time
            if i % scan_every == 0 and scan_port < 2000:
                frame = eth(macs[0], scanner_mac, 0x0800,
                            ipv4(scanner_ip, ips[0], 6, tcp(45000, scan_port, 0x02)))
                scan_port += 1
            elif i % 997 == 0:  # a new TCP session: SYN from a client to a server
                a, b = (i // 997) % 40, (i // 997 + 7) % 40
                frame = eth(macs[b], macs[a], 0x0800,
                            ipv4(ips[a], ips[b], 6, tcp(40000 + i % 20000, 80, 0x02)))
            elif i % 997 == 1:
                a, b = ((i - 1) // 997) % 40, ((i - 1) // 997 + 7) % 40
                frame = eth(macs[a], macs[b], 0x0800,
                            ipv4(ips[b], ips[a], 6, tcp(80, 40000 + (i - 1) % 20000, 0x12)))
            else:
                frame = templates[pick[i & 4095]]
            out += REC.pack(t0 + usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
            out += frame
            if len(out) > 8 << 20:
                f.write(out)
                out.clear()
        f.write(out)


def build_syn_scan(path: str, n: int) -> None:
    """Worst case for the engines: every frame a new connection attempt (a SYN port scan of
    5 hosts), so none takes the fast path."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    smac, sip = bytes.fromhex("00155d000032"), bytes([172, 16, 1, 50])
    dmac = bytes.fromhex("b827eb00000a")
    for i in range(n):
        f = eth(dmac, smac, 0x0800, ipv4(sip, bytes([172, 16, 1, 10 + i % 5]), 6,
                                         tcp(45000, 1 + (i // 5) % 65000, 0x02)))
        usec = i * 10
        out += REC.pack(1_700_000_000 + usec // 1_000_000, usec % 1_000_000, len(f), len(f))
        out += f
    with open(path, "wb") as fh:
        fh.write(out)


MIXES = ("default", "irc6667", "syn")
#: packets/s goals per mix (issue 12)
GOALS = {"default": 1_000_000, "irc6667": 1_000_000, "syn": 500_000}


def build_mix(mix: str, path: str, n: int) -> None:
    if mix == "syn":
        build_syn_scan(path, n)
    else:
        build(path, n, irc=mix == "irc6667")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def _bench_one(mix: str, path: str, runs: int) -> dict[str, object]:
    load_before = _load()
    times: list[float] = []
    doc: dict[str, object] = {}
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-m", "labctl", "sensor", "replay", "--pcap",
                            path, "--json"], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        doc = json.loads(r.stdout)
        times.append(float(doc["seconds"]))  # type: ignore[arg-type]
    med = statistics.median(times)
    pps = int(doc["packets"]) / med  # type: ignore[call-overload]
    return {"mix": mix, "pps": pps, "median_s": med, "runs": sorted(times),
            "load_before": load_before, "load_after": _load(), "doc": doc}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mix", choices=[*MIXES, "all"], default="all")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", help="write the pcaps into this folder and keep them")
    ap.add_argument("--profile", action="store_true", help="profile the replay in-process")
    ap.add_argument("--runs", type=int, default=3, help="replay runs; the median is reported")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="sensor-bench-")
    folder = args.keep or tmp
    os.makedirs(folder, exist_ok=True)
    mixes = list(MIXES) if args.mix == "all" else [args.mix]
    try:
        for mix in mixes:
            path = os.path.join(folder, f"{mix}.pcap")
            t = time.perf_counter()
            build_mix(mix, path, args.packets)
            print(f"[{mix}] built {args.packets} packets ({os.path.getsize(path) / 1e6:.1f} MB) "
                  f"in {time.perf_counter() - t:.1f}s: {path}")
            if args.profile:
                import cProfile
                import pstats

                from labctl.sensor.replay import replay
                cProfile.runctx("replay(path)", globals(), {"replay": replay, "path": path},
                                os.path.join(tmp, "prof"))
                pstats.Stats(os.path.join(tmp, "prof")).sort_stats("tottime").print_stats(15)
                continue
            res = _bench_one(mix, path, args.runs)
            doc = res["doc"]
            assert isinstance(doc, dict)
            pps = float(res["pps"])  # type: ignore[arg-type]
            goal = GOALS[mix]
            print(f"[{mix}] labctl sensor replay, flow store on: {doc['packets']} packets, "
                  f"median {res['median_s']:.3f}s of {args.runs} runs "
                  f"{[round(x, 3) for x in res['runs']]} = {pps:,.0f} packets/s; "  # type: ignore[attr-defined]
                  f"load average (1/5 min) {res['load_before']} before, {res['load_after']} after")
            print(f"[{mix}]   alerts: {sorted({a['title'] for a in doc['alerts']})}; "
                  f"devices: {len(doc['devices'])}; flows: {doc.get('flows')}; "
                  f"malformed: {doc['malformed']}; pcap loop: {doc.get('loop')}")
            print(f"[{mix}]   goal >= {goal:,} packets/s: {'MET' if pps >= goal else 'NOT MET'} "
                  f"({pps / goal:.2f}x of goal)")
            if mix == "default" and shutil.which("tcpdump"):
                t = time.perf_counter()
                subprocess.run(["tcpdump", "-r", path, "-w", "/dev/null"], capture_output=True,
                               check=False)
                td = time.perf_counter() - t
                print(f"[{mix}]   reference tcpdump -r FILE -w /dev/null: {td:.3f}s = "
                      f"{int(doc['packets']) / td:,.0f} packets/s; labctl/tcpdump ratio "
                      f"{td / float(res['median_s']):.2f}")  # type: ignore[arg-type]
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
