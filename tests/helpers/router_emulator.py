"""Test helpers: the ASUS router emulator on 127.0.0.1 (HTTP or HTTPS) and a playbook
pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from labctl.router.asus.emulator import EmulatorServer, RouterEmulator, ensure_certificate

ROOT = Path(__file__).resolve().parents[2]
ROUTER_PASSWORD = "Canary-Router-Pw-7731"
IOT_PASSPHRASE = "Canary-Wifi-Psk-4412"
APP_UA = "asusrouter-Linux-DUTUtil-test"


class EmulatorLab:
    def __init__(self, emulator: RouterEmulator, server: EmulatorServer, playbook: Path) -> None:
        self.emulator = emulator
        self.server = server
        self.playbook = str(playbook)

    @property
    def url(self) -> str:
        return self.server.url

    def paths(self) -> list[str]:
        with self.emulator.lock:
            return [e["path"] for e in self.emulator.log]

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
def emulator_lab(tmp: Path, *, https: bool = False, login: str = "both",
                 **iot: object) -> Iterator[EmulatorLab]:
    emulator = RouterEmulator(password=ROUTER_PASSWORD, login_mode=login, slow_seconds=2.0)
    cert = key = None
    if https:
        cert, key = ensure_certificate(tmp / "emulator-cert")
    server = EmulatorServer(emulator, "127.0.0.1", 0, https=https, certfile=cert, keyfile=key)
    with server:
        pb = write_playbook(tmp, server.url, allow_http=not https, **iot)
        yield EmulatorLab(emulator, server, pb)
