"""Test helpers: a router twin on 127.0.0.1 (HTTP or HTTPS) and a playbook pointing at it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from labctl.router.asus.twin import RouterTwin, TwinServer, ensure_certificate

ROOT = Path(__file__).resolve().parents[2]
ROUTER_PASSWORD = "Canary-Router-Pw-7731"
IOT_PASSPHRASE = "Canary-Wifi-Psk-4412"
APP_UA = "asusrouter-Linux-DUTUtil-test"


class TwinLab:
    def __init__(self, twin: RouterTwin, server: TwinServer, playbook: Path) -> None:
        self.twin = twin
        self.server = server
        self.playbook = str(playbook)

    @property
    def url(self) -> str:
        return self.server.url

    def paths(self) -> list[str]:
        with self.twin.lock:
            return [e["path"] for e in self.twin.log]

    def count(self, path: str) -> int:
        return self.paths().count(path)

    def env(self, **extra: str) -> dict[str, str]:
        env = {"LABCTL_ROUTER_PASSWORD": ROUTER_PASSWORD, "LABCTL_IOT_PASSPHRASE": IOT_PASSPHRASE}
        env.update(extra)
        return env


def write_playbook(tmp: Path, url: str, *, allow_http: bool, **iot: object) -> Path:
    doc = yaml.safe_load((ROOT / "playbooks" / "home-lab.yaml").read_text())
    doc["router"]["url"] = url
    doc["router"]["allow_http"] = allow_http
    doc["router"]["iot_network"].update(iot)
    p = tmp / "lab.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@contextmanager
def twin_lab(tmp: Path, *, https: bool = False, login: str = "both",
             **iot: object) -> Iterator[TwinLab]:
    twin = RouterTwin(password=ROUTER_PASSWORD, login_mode=login, slow_seconds=2.0)
    cert = key = None
    if https:
        cert, key = ensure_certificate(tmp / "twin-cert")
    server = TwinServer(twin, "127.0.0.1", 0, https=https, certfile=cert, keyfile=key)
    with server:
        pb = write_playbook(tmp, server.url, allow_http=not https, **iot)
        yield TwinLab(twin, server, pb)
