"""Concurrent router runs: the router lock and the compare-and-swap lose no update."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from labctl.app import router as app
from labctl.core.secrets import Secret
from labctl.router.asus import sdn
from labctl.router.base import DesiredNetwork, RouterTarget
from labctl.router.lock import RouterBusy, lock_path, router_lock
from tests.helpers.router_emulator import IOT_PASSPHRASE, ROUTER_PASSWORD, emulator_lab

ROUNDS = 15


def _desired(ssid: str, vlan: int) -> DesiredNetwork:
    return DesiredNetwork(name=ssid, ssid=ssid, passphrase=Secret(IOT_PASSPHRASE),
                          subnet=ipaddress.IPv4Network(f"172.16.{vlan}.0/24"), vlan=vlan)


def _round(lab: Any, rnd: int) -> dict[str, Any]:
    """Two iot-net runs for different networks, started together against one emulator."""
    results: dict[str, Any] = {}
    start = threading.Barrier(2)

    def run(ssid: str, vlan: int) -> None:
        target = RouterTarget(url=lab.url, user="admin", password=Secret(ROUTER_PASSWORD),
                              allow_http=True, lab=f"conc-{rnd}-{ssid}")
        start.wait(timeout=10)
        try:
            results[ssid] = app.iot_net(target, _desired(ssid, vlan), confirm=lambda _r: True)
        except Exception as e:  # noqa: BLE001 - reported by the assertions of the caller
            results[ssid] = e

    threads = [threading.Thread(target=run, args=("IoT-A", 60)),
               threading.Thread(target=run, args=("IoT-B", 61))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_two_concurrent_iot_net_runs_for_different_networks_lose_no_update(tmp_path):
    for rnd in range(ROUNDS):  # bounded: 15 rounds, two runs each
        (tmp_path / f"r{rnd}").mkdir()
        with emulator_lab(tmp_path / f"r{rnd}") as lab:
            results = _round(lab, rnd)
            for ssid in ("IoT-A", "IoT-B"):
                rep = results[ssid]
                assert not isinstance(rep, Exception), f"round {rnd}: {ssid}: {rep!r}"
                assert rep.applied and rep.verified, (rnd, ssid)
            with lab.emulator.lock:
                state = dict(lab.emulator.nvram)
            names = {n["name"] for n in sdn.decode_networks(state)}
            assert {"IoT-A", "IoT-B"} <= names, f"round {rnd}: lost update, {names}"


def test_the_lock_is_per_router_and_waits_then_fails_clearly(tmp_path):
    url = "https://192.168.50.1:8443"
    assert lock_path(url) != lock_path("https://192.168.51.1:8443")
    with router_lock(url):
        with router_lock("https://192.168.51.1:8443"):  # another router: no wait
            pass
        try:
            with router_lock(url, timeout=0.2):
                raise AssertionError("the lock was taken twice")
        except RouterBusy as e:
            assert str(lock_path(url)) in e.message
    with router_lock(url, timeout=0.2):  # released
        pass
    assert (lock_path(url).stat().st_mode & 0o777) == 0o600
