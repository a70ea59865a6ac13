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
    verify: Any = None  # labctl.app.verify.VerifyReport
    verify_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verify is not None and bool(self.verify.ok)

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
            "verify_seconds": round(self.verify_seconds, 3),
            "ok": self.ok,
            "verify": self.verify.to_dict() if self.verify is not None else None,
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


def run_demo(playbook: str | None = None, *, keep: bool = False, sensor_timeout: float = 60.0,
             progress: Progress | None = None, expectations: str | None = None,
             verify_progress: Callable[[Any], None] | None = None) -> DemoReport:
    """up -> wait for the sensor API -> verify-alerts with the playbook's expectations (its
    scan cases are the demo's scan of the IoT subnet) -> down (unless ``keep``)."""
    import shutil

    from labctl.app.sensor import make_driver
    from labctl.app.stages import up_stages
    from labctl.app.verify import VerifyOptions, verify_alerts
    from labctl.core.context import LabContext
    from labctl.core.playbook import load_playbook
    from labctl.core.secrets import Secret
    from labctl.core.state import lab_state_dir
    from labctl.netns import supervisor
    from labctl.netns.provider import check_platform
    from labctl.sensor.base import SensorTarget
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
    if iot is None:
        raise LabctlError("the demo needs router.iot_network (the subnet to scan)")
    from labctl.app import scan as scan_app

    state = lab_state_dir(pb.lab)
    report = DemoReport(lab=pb.lab, playbook=str(path), target=str(iot.subnet),
                        scanner_netns=scan_app.default_scanner_spec(loaded), up_seconds=0.0,
                        kept=keep)
    running = supervisor.read(state, "sensor")
    if running is None or not running.alive:
        # a fresh embedded sensor, so the alerts counted are this run's (a sensor updates
        # an open alert instead of raising it again)
        shutil.rmtree(state / "sensor", ignore_errors=True)
    report.devices_expected = [str(d.ip.ip) for d in pb.twin.devices] if pb.twin else []
    ctx = LabContext(loaded)
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
        target = SensorTarget(base_url=pb.sensor.base_url, token=token,
                              fingerprint=st["fingerprint"], netns=lab_host_netns(pb))
        driver = make_driver(ctx, target)
        scans: dict[str, Any] = {}

        def run_scan(profile: str, targets: Any) -> Any:
            result = scan_app.run_scan(loaded, list(targets), profile=profile)
            scans[",".join(targets)] = result
            return result

        say(f"verify-alerts ({expectations or pb.sensor.expectations}) from "
            f"{report.scanner_netns}")
        t1 = time.monotonic()
        report.verify = verify_alerts(ctx, VerifyOptions(expectations=expectations),
                                      progress=verify_progress, sensor=driver,
                                      run_scan=run_scan)
        report.verify_seconds = time.monotonic() - t1
        subnet_scan = scans.get(str(iot.subnet))
        if subnet_scan is not None:
            report.hosts = [{"ip": h.addr, "ports": [p.key for p in h.open_ports()]}
                            for h in subnet_scan.up_hosts()]
            report.scan_seconds = subnet_scan.ended - subnet_scan.started
        seen = list(report.verify.unexpected) + [a for r in report.verify.results
                                                  for a in r.matched]
        report.alert_count = len({(a.origin, a.id) for a in seen})
        report.alerts = [a.line() for a in seen]
        try:
            report.devices = [{"name": d.name, "ip": (d.ip_addresses or (None,))[0],
                               "mac": (d.mac_addresses or (None,))[0], "vendor": d.vendor}
                              for d in driver.devices()]
        except LabctlError:
            report.devices = []
    finally:
        if not keep:
            say(f"removing twin lab {pb.lab}")
            t2 = time.monotonic()
            from labctl.app import lab as labapp

            labapp.down(ctx, confirm=lambda p: True)
            report.down_seconds = time.monotonic() - t2
    return report
