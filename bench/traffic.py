"""Benchmark: `labctl traffic report --json` against `tshark -q -z conv,ip`, side by side.

Builds a pcap of mixed IoT traffic (written with struct: scapy would need minutes), runs
both tools on it, and prints:

* both wall times and their ratio (goal: labctl at least 10x faster than tshark);
* whether the IPv4 conversation count and every pair's packet total agree with tshark's;
* labctl's peak RSS at N and 4N packets (goal: memory grows with flows, not packets: the
  mix has the same set of flows at both sizes, and by default the same simulated span,
  50 000 s, so the same active minutes per flow: only the packet count changes. With
  ``--same-rate`` every capture keeps 20 packets/s, so the 4N file spans four times as
  long and its flows have four times as many active minutes, which the report keeps).

The mix: 300 long-lived TCP and UDP flows between 40 devices and 12 external hosts (data
both ways, 10 % 802.1Q-tagged on VLAN 52), 6667 IRC-like traffic from pet feeders, 5000
short TCP sessions (SYN, SYN-ACK, data), DNS answers, ICMP echo and ARP. Usage::

    python bench/traffic.py [--packets 1000000] [--keep FILE] [--no-4x] [--skip-tshark]
                            [--same-rate]

Needs tshark (Debian package ``tshark``) unless ``--skip-tshark`` (an RSS-only run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

REC = struct.Struct("<IIII")
T0 = 1_700_006_400


def _ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def frame(src: str, dst: str, proto: int, sport: int, dport: int, *, flags: int = 0x18,
          payload: bytes = b"", vlan: int = 0) -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, flags, 64240, 0, 0) + payload
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    else:  # ICMP echo
        l4 = struct.pack("!BBHHH", sport, 0, 0, 1, 1) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
                     _ip(src), _ip(dst))
    mac_s = b"\x02\x00" + _ip(src)
    mac_d = b"\x02\x00" + _ip(dst)
    eth = mac_d + mac_s + (struct.pack("!HH", 0x8100, vlan) if vlan else b"") + b"\x08\x00"
    return eth + ip + l4


def dns_answer(name: str, addr: str) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return (struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + q + b"\0\x01\0\x01"
            + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + _ip(addr))


#: the simulated span of every capture (the 1M-packet file at 20 packets/s)
SPAN = 50_000.0


def build(path: str, n: int, seed: int = 12, *, step: float | None = None) -> None:
    """``n`` packets of the mix, ``step`` seconds apart (default: ``SPAN / n``)."""
    dt = SPAN / n if step is None else step
    rnd = random.Random(seed)
    devices = [f"172.16.1.{10 + i}" for i in range(40)]
    external = [f"203.0.113.{10 + i}" for i in range(6)] + \
        [f"198.51.100.{10 + i}" for i in range(6)]
    templates: list[bytes] = []
    for i in range(300):
        d = devices[i % 40]
        peer = external[i % 12] if i % 3 else devices[(i * 7 + 1) % 40]
        vlan = 52 if i % 10 == 0 else 0
        if i % 25 == 0:
            proto, port = 6, 6667
        elif i % 4 == 0:
            proto, port = 17, rnd.choice((123, 5353, 8883, 1900))
        else:
            proto, port = 6, rnd.choice((443, 80, 8883, 1883, 8009))
        sp = 40000 + i
        size = rnd.randrange(0, 400)
        templates.append(frame(d, peer, proto, sp, port, payload=b"x" * size, vlan=vlan))
        templates.append(frame(peer, d, proto, port, sp, payload=b"y" * (size // 3), vlan=vlan))
    extras: list[bytes] = []
    for i in range(5000):  # short sessions: SYN, SYN-ACK, one data packet
        d = devices[i % 40]
        peer = external[i % 12]
        sp = 20000 + i
        extras += [frame(d, peer, 6, sp, 443, flags=0x02),
                   frame(peer, d, 6, 443, sp, flags=0x12),
                   frame(d, peer, 6, sp, 443, payload=b"z" * 200)]
    for i, e in enumerate(external):
        extras.append(frame("172.16.1.1", devices[i], 17, 53, 33000 + i,
                            payload=dns_answer(f"host{i}.example.net", e)))
    for i in range(40):
        extras.append(frame(devices[i], external[i % 12], 1, 8, 0, payload=b"p" * 32))
    arp = (b"\xff" * 6 + b"\x02\x00" + _ip(devices[0]) + b"\x08\x06"
           + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02\x00" + _ip(devices[0]),
                         _ip(devices[0]), b"\0" * 6, _ip(devices[1])))
    step = max(1, n // len(extras)) if n > 2 * len(extras) else 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        out = []
        k = 0
        for i in range(n):
            if step and i % step == 0 and k < len(extras):
                fr = extras[k]
                k += 1
            elif i % 997 == 0:
                fr = arp
            else:
                fr = templates[rnd.randrange(len(templates))]
            ts = T0 + i * dt
            sec = int(ts)
            out.append(REC.pack(sec, int((ts - sec) * 1e6), len(fr), len(fr)) + fr)
            if len(out) == 65536:
                f.write(b"".join(out))
                out.clear()
        f.write(b"".join(out))


def run_measured(argv: list[str], env: dict[str, str] | None = None
                 ) -> tuple[float, int, bytes]:
    """(wall seconds, peak RSS in kB, stdout) of one child process."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read() if p.stderr else b""
        if p.returncode != 0:
            sys.exit(f"{argv[0]} failed ({p.returncode}): {err.decode(errors='replace')}")
        out.seek(0)
        return wall, ru.ru_maxrss, out.read()


_PAIR = re.compile(r"^(\d+\.\d+\.\d+\.\d+)\s+<->\s+(\d+\.\d+\.\d+\.\d+)\s+(.*)$")
_COUNT = re.compile(r"(\d[\d,]*)\s+(?:\d[\d,.]*\s*(?:bytes|kB|MB|GB|B)\b)")


def tshark_pairs(text: str) -> dict[tuple[str, str], int]:
    """Pair -> total frames from `tshark -z conv,ip` (the third frames column)."""
    out = {}
    for line in text.splitlines():
        m = _PAIR.match(line.strip())
        if not m:
            continue
        counts = [int(c.replace(",", "")) for c in _COUNT.findall(m.group(3))]
        if len(counts) < 3:
            raise SystemExit(f"cannot read tshark's line: {line!r}")
        out[tuple(sorted((m.group(1), m.group(2))))] = counts[2]
    return out


def labctl_pairs(doc: dict) -> dict[tuple[str, str], int]:
    return {tuple(sorted((c["a"], c["b"]))): c["packets"] for c in doc["conversations"]
            if ":" not in c["a"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", metavar="FILE")
    ap.add_argument("--no-4x", action="store_true", help="skip the 4x memory run")
    ap.add_argument("--skip-tshark", action="store_true",
                    help="do not run tshark (an RSS-only run, for large sizes)")
    ap.add_argument("--same-rate", action="store_true",
                    help="20 packets/s in every file (the 4x file spans 4x as long) instead "
                         f"of the same {SPAN:.0f} s span")
    a = ap.parse_args()
    tshark = shutil.which("tshark")
    if not tshark and not a.skip_tshark:
        sys.exit("tshark is not installed (apt-get install tshark), or pass --skip-tshark")
    step = 0.05 if a.same_rate else None
    work = tempfile.mkdtemp(prefix="labctl-bench-traffic-")
    env = {**os.environ, "LABCTL_STATE_DIR": work}
    # labctl's CLI, in this checkout
    launcher = ("import sys; from labctl.cli import run; "
                "sys.exit(run(sys.argv[1:]))")
    labctl = [sys.executable, "-c", launcher, "traffic", "report", "--json", "--lab", "bench",
              "--pcap"]
    try:
        path = a.keep or os.path.join(work, "mix.pcap")
        t = time.perf_counter()
        build(path, a.packets, step=step)
        span = (0.05 * a.packets) if a.same_rate else SPAN
        print(f"built {a.packets} packets ({os.path.getsize(path) / 1e6:.0f} MB, "
              f"{span:.0f} s simulated) in {time.perf_counter() - t:.1f} s")
        print("load average before the runs: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        lw, lrss, lout = run_measured(labctl + [path], env)
        doc = json.loads(lout)
        print(f"labctl traffic report: {lw:.2f} s ({a.packets / lw / 1e3:.0f}k packets/s), "
              f"peak RSS {lrss / 1024:.0f} MB")
        ok = True
        if not a.skip_tshark:
            assert tshark
            tw, trss, tout = run_measured([tshark, "-n", "-q", "-z", "conv,ip", "-r", path])
            mine, theirs = labctl_pairs(doc), tshark_pairs(tout.decode())
            print(f"tshark -z conv,ip:     {tw:.2f} s, peak RSS {trss / 1024:.0f} MB")
            print(f"ratio tshark/labctl:   {tw / lw:.1f}x (goal >= 10x)")
            same_pairs = set(mine) == set(theirs)
            diff = [(k, mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs)
                    if mine.get(k) != theirs.get(k)]
            print(f"IPv4 conversations: labctl {len(mine)}, tshark {len(theirs)}; "
                  f"same pairs: {same_pairs}; per-pair packet totals agree: {not diff}")
            for k, m, th in sorted(diff)[:10]:
                print(f"  {k[0]} <-> {k[1]}: labctl {m}, tshark {th}")
            ok = same_pairs and not diff
        if not a.no_4x:
            big = os.path.join(work, "mix4.pcap")
            build(big, 4 * a.packets, step=step)
            if not a.keep:
                os.unlink(path)
            bw, brss, _ = run_measured(labctl + [big], env)
            print(f"labctl at {4 * a.packets} packets: {bw:.2f} s, peak RSS "
                  f"{brss / 1024:.0f} MB (x{brss / lrss:.2f} of the {a.packets}-packet run; "
                  f"{'4x' if a.same_rate else 'the same'} simulated span)")
        print("load average after the runs: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
