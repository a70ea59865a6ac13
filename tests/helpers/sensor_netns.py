"""A namespace pair for live sensor tests (prefix ``sn``); nothing leaves these namespaces.

Layout::

    <p>-a  scanner: veth a0 172.31.250.1/24; route 10.250.0.0/16 via 172.31.250.2
    <p>-b  target + sensor: veth b0 172.31.250.2/24 (+ extra target IPs 172.31.250.10..),
           the embedded sensor captures on b0 and serves its API on 127.0.0.1 inside <p>-b

Packets to 10.250.0.0/16 go to <p>-b's MAC (so the sensor sees them) and die there (no route
onwards). ``LiveSensor.stop()`` sends SIGTERM; ``kill()`` SIGKILLs (an unclean stop).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.core.waiting import WaitTimeout, wait_until

SCANNER_IP = "172.31.250.1"
TARGET_IP = "172.31.250.2"
ROUTED = "10.250.0.0/16"
ROOT = Path(__file__).resolve().parent.parent.parent


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check,
                          timeout=timeout)


@dataclass
class NsPair:
    prefix: str
    extra_ips: list[str] = field(default_factory=list)

    @property
    def a(self) -> str:
        return f"{self.prefix}-a"

    @property
    def b(self) -> str:
        return f"{self.prefix}-b"

    def up(self) -> None:
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh("ip", "link", "add", f"{self.prefix}a0", "netns", self.a, "type", "veth", "peer",
           "name", f"{self.prefix}b0", "netns", self.b)
        sh("ip", "-n", self.a, "link", "set", f"{self.prefix}a0", "name", "a0")
        sh("ip", "-n", self.b, "link", "set", f"{self.prefix}b0", "name", "b0")
        for ns, dev, ip in ((self.a, "a0", SCANNER_IP), (self.b, "b0", TARGET_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ip in self.extra_ips:
            sh("ip", "-n", self.b, "addr", "add", f"{ip}/24", "dev", "b0")
        sh("ip", "-n", self.a, "route", "add", ROUTED, "via", TARGET_IP)

    def down(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)


def new_pair(extra_ips: list[str] | None = None) -> NsPair:
    pair = NsPair(f"sn{secrets.token_hex(3)}", list(extra_ips or []))
    try:
        pair.up()
    except BaseException:
        pair.down()
        raise
    return pair


@dataclass
class LiveSensor:
    pair: NsPair
    state: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    log: Path | None = None
    #: labctl's own options before the command, e.g. ("-vv",)
    global_args: tuple[str, ...] = ()

    def start(self, *extra: str, timeout: float = 20) -> None:
        self.log = self.state.parent / f"{self.state.name}-serve.log"
        status = self.state / "status.json"
        if status.exists():
            status.unlink()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        fh = open(self.log, "a")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.pair.b, sys.executable, "-m", "labctl",
             *self.global_args, "sensor", "serve", "--interface", "b0",
             "--listen", f"127.0.0.1:{self.port}",
             "--state", str(self.state), *extra],
            stdout=fh, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        fh.close()
        proc = self.proc

        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"sensor exited {proc.returncode}: {self.log.read_text()}")
            return status.exists()

        try:
            wait_until(started, timeout=timeout, interval=0.1)
        except WaitTimeout:
            raise RuntimeError(f"sensor did not start: {self.log.read_text()}") from None

    def status(self) -> dict[str, Any]:
        return json.loads((self.state / "status.json").read_text())

    def stop(self, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def token(self) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-m", "labctl", "sensor", "token", "create",
                            "--state", str(self.state), "--json"], capture_output=True,
                           text=True, check=True, env=env, timeout=30)
        return json.loads(r.stdout)["token"]

    def get(self, path: str, token: str, **params: Any) -> Any:
        """GET an API path from inside the sensor's namespace (verified against its cert)."""
        import requests

        from labctl.transport.netns import netns_context

        s = requests.Session()
        s.trust_env = False
        with netns_context(self.pair.b):
            r = s.get(f"https://127.0.0.1:{self.port}{path}", params=params,
                      headers={"Authorization": token}, verify=str(self.state / "tls" / "cert.pem"),
                      timeout=10)
        r.raise_for_status()
        return r.json()
