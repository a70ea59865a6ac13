"""Benchmark: no kernel drops while `nmap -T4 -p-` scans 5 hosts past the embedded sensor.

Builds an ``sn*`` namespace pair (tests/helpers/sensor_netns.py): the scanner namespace and a
target namespace holding 5 addresses, with `labctl sensor serve` capturing on the target's
veth. nmap scans all 65535 TCP ports of the 5 hosts (-T4 -p-, about 330k probes plus the
replies); then the sensor's PACKET_STATISTICS counters are read from its status file.
Prints the kernel drop count (goal: 0), packets captured and the nmap run time. Everything
stays inside the two namespaces, which are deleted at the end. Needs root and nmap.

    python bench/sensor_nmap_drops.py [--ports 1-65535]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.sensor_netns import LiveSensor, new_pair, sh  # noqa: E402

HOSTS = [f"172.31.250.{10 + i}" for i in range(5)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", default="1-65535", help="nmap -p value (default all: -p-)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, AF_PACKET)", file=sys.stderr)
        return 2
    pair = new_pair(extra_ips=HOSTS)
    tmp = Path(tempfile.mkdtemp(prefix="sensor-drops-"))
    sensor = LiveSensor(pair, tmp / "state", 8443)
    try:
        sensor.start("--no-learning")
        tcpdump = None
        if shutil.which("tcpdump"):
            tcpdump = subprocess.Popen(["ip", "netns", "exec", pair.b, "tcpdump", "-i", "b0",
                                        "-n", "-w", "/dev/null"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
            time.sleep(1.0)
        t = time.perf_counter()
        r = sh("ip", "netns", "exec", pair.a, "nmap", "-n", "-Pn", "-sS", "-T4", "-p",
               args.ports, *HOSTS, timeout=1800)
        nmap_s = time.perf_counter() - t
        time.sleep(2.5)  # let the sensor drain its socket and write status.json
        st = sensor.status()
        sensor.stop()
        td_line = "tcpdump not installed"
        if tcpdump is not None:
            tcpdump.send_signal(signal.SIGINT)
            _, err = tcpdump.communicate(timeout=30)
            got = re.search(r"(\d+) packets captured", err)
            drop = re.search(r"(\d+) packets dropped by kernel", err)
            td_line = (f"{got.group(1) if got else '?'} captured, "
                       f"{drop.group(1) if drop else '?'} dropped by kernel")
        summary = [ln for ln in r.stdout.splitlines() if "scanned" in ln]
        print(f"nmap -T4 -p {args.ports} of {len(HOSTS)} hosts: {nmap_s:.1f}s "
              f"({summary[-1] if summary else 'no summary'})")
        print(f"sensor captured {st['received']} frames ({st['received'] / nmap_s:,.0f}/s avg); "
              f"kernel saw {st['kernel_packets']}; PACKET_STATISTICS drops: {st['kernel_drops']}")
        print(f"reference tcpdump on the same interface: {td_line}")
        print(f"alerts raised: {st['alerts']}; devices: {st['devices']}")
        print(f"goal 0 kernel drops: {'MET' if st['kernel_drops'] == 0 else 'NOT MET'}")
        return 0 if st["kernel_drops"] == 0 else 1
    finally:
        sensor.kill()
        pair.down()


if __name__ == "__main__":
    raise SystemExit(main())
