"""traffic report --interface --duration: a bounded live capture in a namespace pair the
test creates (nothing leaves it; the pair is removed in finally)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.helpers.sensor_netns import ROOT, SCANNER_IP, TARGET_IP, new_pair, sh

pytestmark = [pytest.mark.netns]

LAUNCH = ("import sys; from labctl.cli import run; "
          "sys.exit(run(sys.argv[1:]))")
SEND = ("import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('{src}', 40001))\n"
        "for i in range(10):\n"
        "    s.sendto(b'x' * 100, ('{dst}', 6667)); time.sleep(0.05)\n")


def test_live_capture_counts_the_packets(tmp_path) -> None:
    pair = new_pair()
    proc = None
    try:
        env_state = str(tmp_path / "state")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", pair.b, "env", f"LABCTL_STATE_DIR={env_state}",
             sys.executable, "-c", LAUNCH, "traffic", "report", "--interface", "b0",
             "--duration", "4s", "--json", "--lab", "live"],
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # the capture socket is open by then
        sh("ip", "netns", "exec", pair.a, sys.executable, "-c",
           SEND.format(src=SCANNER_IP, dst=TARGET_IP))
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert time.monotonic() - t0 < 10  # bounded by --duration
        doc = json.loads(out)
        assert doc["sources"]["kind"] == "interface" and doc["sources"]["interface"] == "b0"
        devs = {d["ip"]: d for d in doc["devices"]}
        a = devs[SCANNER_IP]
        (port,) = [p for p in a["ports"] if p["port"] == 6667]
        assert (port["direction"], port["proto"], port["packets"]) == ("out", "UDP", 10)
        assert port["bytes"] == 10 * (14 + 20 + 8 + 100)
        # IRC's ports are listed for TCP: UDP to 6667 is a port outside the list
        assert {f["flag"] for f in a["flags"] if f.get("port") == 6667} == {"non-standard-port"}
        convs = {(c["a"], c["b"]): c for c in doc["conversations"]}
        c = convs[(SCANNER_IP, TARGET_IP)]
        assert c["packets_a_to_b"] >= 10  # the datagrams (+ ICMP unreachable back, if any)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        pair.down()


def test_interface_needs_a_duration(capsys) -> None:
    from labctl.cli import run

    assert run(["traffic", "report", "--interface", "lo"]) == 2
    assert "--duration" in capsys.readouterr().err
    assert run(["traffic", "report", "--interface", "lo", "--duration", "25h"]) == 2
