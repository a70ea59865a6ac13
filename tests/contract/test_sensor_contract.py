"""The sensor driver contract: every (driver, emulator) pair passes the same suite.

Today one pair: the D4IoT REST client's driver against the embedded sensor, served over real
HTTPS in-process (its own self-signed certificate, pinned by fingerprint as labctl pins a
real sensor's). The suite checks the driver's signatures against the protocols, then the
shared behaviour: first sign-in (and a second, which changes nothing), status, alerts since
a time after a replayed port scan, devices and connections, all as normalised records. A new
sensor driver adds a pair here and nothing else.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl.core.emulator import EmulatorProcess, EmulatorRequest
from labctl.core.secrets import Secret
from labctl.sensor.base import (
    Alert,
    AlertSource,
    Connection,
    Device,
    Flow,
    FlowSource,
    PrepareResult,
    SensorDriver,
    SensorStatus,
    SensorTarget,
)
from labctl.sensor.pcap import CaptureFile
from labctl.sensor.registry import get_sensor_driver
from labctl.transport.certs import fingerprint
from tests.helpers.sensor_api import running_api
from tests.helpers.sensor_pcaps import (
    SCANNER_IP,
    T0,
    TARGET_IP,
    TARGET_MAC,
    syn_scan,
    tcp_packet,
    write,
)

NEW_PASSWORD = "Contract-Passw0rd!"
KNOWN_ALERT = "Port Scan Detected"


@dataclass
class Emulated:
    """A running emulator: where it is, and how to make it see traffic."""

    target: SensorTarget
    replay: Callable[[Path], None]


@contextlib.contextmanager
def embedded_sensor(tmp: Path) -> Iterator[Emulated]:
    with running_api(tmp / "sensor-state") as api:
        def replay(pcap: Path) -> None:
            cap = CaptureFile(pcap)
            with api.sensor.lock:
                api.sensor.replay(cap, cap.data)
                rows = api.sensor.take_dirty()
            api.store.write_batch(*rows)  # what serve's one-second flush does

        target = SensorTarget(base_url=api.url, token=Secret(api.token),
                              fingerprint=fingerprint(api.cert))
        yield Emulated(target, replay)


PAIRS = [
    pytest.param("d4iot", embedded_sensor, id="d4iot-client-vs-embedded-sensor"),
    pytest.param("embedded", embedded_sensor, id="embedded-kind-vs-embedded-sensor"),
]


def _public(proto: type) -> list[str]:
    return [n for n in dir(proto) if not n.startswith("_")]


@pytest.mark.parametrize("kind", ["d4iot", "embedded"])
def test_signatures_match_the_protocols(kind):
    cls = get_sensor_driver(kind)
    for proto in (SensorDriver, AlertSource, FlowSource):
        for name in _public(proto):
            want = inspect.getattr_static(proto, name)
            have = inspect.getattr_static(cls, name, None)
            assert have is not None, f"{cls.__name__} lacks {name}"
            if isinstance(want, property):
                assert isinstance(have, property), f"{cls.__name__}.{name} is not a property"
                continue
            assert isinstance(have, classmethod) == isinstance(want, classmethod), name
            got = inspect.signature(getattr(cls, name))
            exp = inspect.signature(getattr(proto, name))
            assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == \
                [(p.name, p.kind, p.default) for p in exp.parameters.values()], name


@pytest.mark.parametrize("kind", ["d4iot", "embedded"])
def test_emulator_process_is_the_sensor_serve_command(kind, tmp_path):
    from labctl.cli.sensor import serve

    cls = get_sensor_driver(kind)
    req = EmulatorRequest(listen_ip="192.168.0.101", port=443, https=True,
                          state_path=tmp_path / "sensor", capture_interface="mon0")
    proc = cls.emulator_process(req)
    assert isinstance(proc, EmulatorProcess)
    assert proc.args == ("sensor", "serve", "--interface", "mon0",
                         "--listen", "192.168.0.101:443", "--state", str(tmp_path / "sensor"))
    assert proc.ready == ("192.168.0.101", 443)
    parsed = serve.make_context("serve", list(proc.args[2:])).params  # the real CLI takes it
    assert (parsed["interface"], parsed["listen"]) == ("mon0", "192.168.0.101:443")


@pytest.mark.parametrize(("kind", "emulator"), PAIRS)
def test_shared_behaviour(kind, emulator, tmp_path):
    pytest.importorskip("scapy")
    with emulator(tmp_path) as emu:
        driver = get_sensor_driver(kind)(emu.target)
        assert isinstance(driver, SensorDriver) and isinstance(driver, AlertSource)
        assert driver.base_url == emu.target.base_url and driver.name

        # first sign-in: the factory default is replaced; a second run changes nothing
        slept: list[float] = []
        first = driver.prepare("admin", Secret(NEW_PASSWORD), wait_seconds=5,
                               sleep=slept.append)
        assert isinstance(first, PrepareResult)
        assert (first.action, first.applied) == ("set-password", True)
        again = driver.prepare("admin", Secret(NEW_PASSWORD), wait_seconds=5)
        assert (again.action, again.applied) == ("noop", False)
        dry = driver.prepare("admin", Secret(NEW_PASSWORD), wait_seconds=5, dry_run=True)
        assert dry.action == "noop"

        status = driver.status()
        assert isinstance(status, SensorStatus) and status.reachable
        assert status.url == emu.target.base_url
        before = status.packets or 0

        # a SYN scan of 40 ports, and the target answering on port 22
        answer = tcp_packet(TARGET_IP, SCANNER_IP, 40000, sport=22, flags="SA", t=T0 + 11,
                            smac=TARGET_MAC)
        pcap = write(tmp_path / "scan.pcap", [*syn_scan(40, t0=T0 + 10), answer])
        emu.replay(pcap)
        assert (driver.status().packets or 0) >= before + 41

        alerts = driver.alerts(since=int(T0 * 1000))
        assert alerts and all(isinstance(a, Alert) for a in alerts)
        scan = [a for a in alerts if a.title == KNOWN_ALERT]
        assert len(scan) == 1
        a = scan[0]
        assert (a.source_address, a.destination_address) == (SCANNER_IP, TARGET_IP)
        assert a.engine and a.severity and a.message and a.id > 0 and not a.handled
        assert a.time >= int((T0 + 10) * 1000)
        assert driver.alerts(since=a.time + 3_600_000) == []  # since filters

        devices = driver.devices()
        assert devices and all(isinstance(d, Device) for d in devices)
        ips = {ip for d in devices for ip in d.ip_addresses}
        assert {SCANNER_IP, TARGET_IP} <= ips
        assert all(isinstance(d.ip_addresses, tuple) for d in devices)

        conns = driver.connections()
        assert conns and all(isinstance(c, Connection) for c in conns)
        ids = {d.ip_addresses[0]: d.id for d in devices}
        (c,) = [c for c in conns if 22 in c.ports]
        assert {c.first_device_id, c.second_device_id} == {ids[SCANNER_IP], ids[TARGET_IP]}
        assert isinstance(c.ports, tuple) and "SSH" in c.protocols
        assert c.discovered is not None and c.last_seen is not None

        # flows (a FlowSource): the scan's SYN to 22 and the answer are one flow, opened by
        # the scanner; the cursor returns each change once
        assert isinstance(driver, FlowSource)
        flows = driver.flows()
        assert len(flows) == 40 and all(isinstance(f, Flow) for f in flows)
        assert [f.seq for f in flows] == sorted(f.seq for f in flows)
        (ssh,) = [f for f in flows if f.dport == 22]
        assert (ssh.src, ssh.sport, ssh.dst, ssh.proto, ssh.vlan) == \
            (SCANNER_IP, 40000, TARGET_IP, 6, 0)
        assert (ssh.packets_out, ssh.packets_in) == (1, 1)
        assert ssh.bytes_out > 0 and ssh.bytes_in > 0
        assert abs(ssh.first - (T0 + 10 + 21 * 0.01) * 1000) <= 1  # the SYN to port 22
        assert ssh.last == int((T0 + 11) * 1000)
        assert driver.flows(after_seq=flows[-1].seq) == []
        assert [f.id for f in driver.flows(after_seq=flows[9].seq, limit=5)] == \
            [f.id for f in flows[10:15]]
