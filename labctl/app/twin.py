"""Twin use cases that are not plain up/down: the process list and the end-to-end demo."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.core.errors import LabctlError, PreflightError, TransportError
from labctl.core.state import state_home


def list_processes(playbook: str | None = None) -> list[dict[str, Any]]:
    """Supervised processes of one lab (``playbook``) or of every lab in the state home."""
    from labctl.netns import supervisor

    if playbook:
        from labctl.core.playbook import load_playbook
        from labctl.core.state import lab_state_dir

        lab = load_playbook(playbook).model.lab
        labs = [(lab, lab_state_dir(lab, create=False))]
    else:
        base = state_home() / "labs"
        labs = [(p.name, p) for p in sorted(base.iterdir())] if base.is_dir() else []
    rows: list[dict[str, Any]] = []
    for lab, d in labs:
        for info in supervisor.read_all(d).values():
            rows.append({"lab": lab, **info.to_dict()})
    return rows


# ---------------------------------------------------------------------------- the demo

Progress = Callable[[str], None]


@dataclass
class DemoReport:
    lab: str
    playbook: str
    target: str
    scanner_netns: str
    up_seconds: float
    scan_seconds: float = 0.0
    hosts: list[dict[str, Any]] = field(default_factory=list)
    devices_expected: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    alert_count: int = 0
    devices: list[dict[str, Any]] = field(default_factory=list)
    kept: bool = False
    down_seconds: float = 0.0
    sensor_url: str = ""
    stages: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab, "playbook": self.playbook, "target": self.target,
            "scanner_netns": self.scanner_netns, "up_seconds": round(self.up_seconds, 3),
            "stages": self.stages,
            "scan_seconds": round(self.scan_seconds, 3), "hosts": self.hosts,
            "hosts_found": len(self.hosts),
            "devices_expected": self.devices_expected,
            "devices_found": sorted(set(self.devices_expected)
                                    & {h["ip"] for h in self.hosts}),
            "alerts": self.alerts,
            "alerts_fired": self.alert_count, "sensor_devices": self.devices,
            "sensor_url": self.sensor_url,
            "kept": self.kept, "down_seconds": round(self.down_seconds, 3),
        }


def default_twin_playbook() -> str:
    from labctl.core.assets import asset_path

    return str(asset_path("playbooks", "twin.yaml"))


def _sensor_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((state_dir / "sensor" / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def wait_for_sensor(lab_state: Path, timeout: float) -> dict[str, Any]:
    """Wait until the embedded sensor wrote its status (URL, certificate fingerprint)."""
    from labctl.netns import supervisor

    deadline = time.monotonic() + timeout
    while True:
        info = supervisor.read(lab_state, "sensor")
        st = _sensor_status(lab_state)
        try:
            fresh = info is not None and \
                (lab_state / "sensor" / "status.json").stat().st_mtime >= info.started
        except OSError:
            fresh = False
        if fresh and st and st.get("url") and st.get("fingerprint"):
            return st
        if info is None or not info.alive:
            tail = "; ".join(info.log_tail(3)) if info else "never started"
            raise PreflightError(f"the embedded sensor is not running ({tail})",
                                 hint=f"see {lab_state / 'logs' / 'sensor.log'}")
        if time.monotonic() > deadline:
            raise TransportError(f"the embedded sensor did not come up within {timeout:g} s",
                                 hint=f"see {lab_state / 'logs' / 'sensor.log'}")
        time.sleep(0.2)


def create_sensor_token(lab_state: Path) -> str:
    """``labctl sensor token create --state <lab state>/sensor --json`` (the sensor's CLI)."""
    from labctl.netns.topology import labctl_env

    argv = [sys.executable, "-m", "labctl", "sensor", "token", "create", "--state",
            str(lab_state / "sensor"), "--description", "twin demo", "--json"]
    cp = subprocess.run(argv, capture_output=True, text=True, env=labctl_env(), timeout=60)
    if cp.returncode != 0:
        raise LabctlError(f"could not create a sensor token: {cp.stderr.strip()[-300:]}")
    return str(json.loads(cp.stdout)["token"])


def _alert_line(a: dict[str, Any]) -> str:
    title = a.get("title") or a.get("name") or a.get("type") or "alert"
    sev = a.get("severity") or ""
    src = a.get("sourceDeviceAddress") or a.get("source_device_address") or ""
    dst = a.get("destinationDeviceAddress") or a.get("destination_device_address") or ""
    where = f" {src} -> {dst}" if src and dst else (f" {src or dst}" if src or dst else "")
    return f"[{sev}] {title}{where}".strip()


def run_demo(playbook: str | None = None, *, keep: bool = False, sensor_timeout: float = 60.0,
             alert_wait: float = 15.0, progress: Progress | None = None) -> DemoReport:
    """up -> wait for the sensor API -> scan the IoT subnet from the scanner namespace ->
    fetch the sensor's alerts -> down (unless ``keep``). Returns the summary."""
    from labctl.app import lab as labapp
    from labctl.app import scan as scan_app
    from labctl.app.stages import up_stages
    from labctl.core.playbook import load_playbook
    from labctl.core.secrets import Secret
    from labctl.core.state import lab_state_dir
    from labctl.netns.provider import check_platform
    from labctl.sensor import client as client_mod
    from labctl.transport import http
    from labctl.transport.netns import lab_host_netns

    say = progress or (lambda msg: None)
    check_platform()
    path = playbook or default_twin_playbook()
    loaded = load_playbook(path)
    pb = loaded.model
    if pb.provider != "netns":
        raise LabctlError(f"{path} is not a twin playbook (provider: {pb.provider})",
                          hint="use playbooks/twin.yaml or a playbook with provider: netns")
    if pb.sensor is None or pb.sensor.kind != "embedded":
        raise LabctlError("the demo needs an embedded sensor (sensor: kind: embedded)")
    iot = pb.router.iot_network if pb.router else None
    target = str(iot.subnet) if iot else None
    if target is None:
        raise LabctlError("the demo needs router.iot_network (the subnet to scan)")
    ctx = labapp.LabContext(loaded)
    state = lab_state_dir(pb.lab)
    report = DemoReport(lab=pb.lab, playbook=str(path), target=target,
                        scanner_netns=scan_app.default_scanner_spec(loaded), up_seconds=0.0,
                        kept=keep)
    from labctl.netns import supervisor

    running = supervisor.read(state, "sensor")
    if running is None or not running.alive:
        # a fresh embedded sensor, so the alerts counted are this run's (the sensor
        # deduplicates repeats of an earlier demo's alerts)
        import shutil

        shutil.rmtree(state / "sensor", ignore_errors=True)
    report.devices_expected = [str(d.ip.ip) for d in pb.twin.devices] if pb.twin else []
    say(f"bringing up twin lab {pb.lab} from {path}")
    t0 = time.monotonic()
    # the same stages as `labctl up`: the twin, the IoT network through the router's API,
    # then the sensor's first sign-in
    stages = up_stages(ctx, confirm=lambda p: True, confirm_stage=lambda s, r: True)
    report.stages = {r.stage: r.status for r in stages}
    report.up_seconds = time.monotonic() - t0
    try:
        say("waiting for the embedded sensor API")
        st = wait_for_sensor(state, sensor_timeout)
        report.sensor_url = pb.sensor.base_url
        token = Secret(create_sensor_token(state), source="twin demo")
        session = http.make_session(pb.sensor.base_url, fingerprint=st["fingerprint"],
                                    netns=lab_host_netns(pb))
        client = client_mod.D4IoTClient(pb.sensor.base_url, token=token, session=session)
        while True:  # the API may lag the status file by a moment
            try:
                first = client.alerts(version=2)
                break
            except TransportError:
                if time.monotonic() > t0 + report.up_seconds + sensor_timeout:
                    raise
                time.sleep(0.3)
        before = {json.dumps(a, sort_keys=True, default=str) for a in first}
        say(f"scanning {target} from {report.scanner_netns}")
        t1 = time.monotonic()
        result = scan_app.run_scan(loaded, [target])
        report.scan_seconds = time.monotonic() - t1
        report.hosts = [{"ip": h.addr, "ports": [p.key for p in h.open_ports()]}
                        for h in result.up_hosts()]
        say(f"{len(report.hosts)} host(s) up; waiting for the sensor's alerts")
        new: list[dict[str, Any]] = []
        deadline = time.monotonic() + alert_wait
        last = -1
        while time.monotonic() < deadline:
            now = [a for a in client.alerts(version=2)
                   if json.dumps(a, sort_keys=True, default=str) not in before]
            if now and len(now) == last:
                new = now
                break
            new, last = now, len(now)
            time.sleep(1.0)
        report.alert_count = len(new)
        report.alerts = [_alert_line(a) for a in new]
        try:
            report.devices = [{"name": d.get("name"), "ip": (d.get("ipAddresses") or [None])[0],
                               "mac": (d.get("macAddresses") or [None])[0],
                               "vendor": d.get("vendor")} for d in client.devices()]
        except LabctlError:
            report.devices = []
    finally:
        if not keep:
            say(f"removing twin lab {pb.lab}")
            t2 = time.monotonic()
            labapp.down(ctx, confirm=lambda p: True)
            report.down_seconds = time.monotonic() - t2
    return report
