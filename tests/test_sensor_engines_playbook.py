"""The playbook's ``sensor.engines`` (and learning_mode, authorized_scanners) as the twin
applies them to its embedded sensor: validation (file, key, line, exit 2), the engines file
the twin writes, the sensor's argv (so a changed playbook restarts the sensor at the next
`up`), and the running sensor's behaviour, status and device records under that file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from labctl.core.errors import ConfigError
from labctl.core.playbook import load_playbook
from labctl.core.secrets import Secret
from labctl.netns import plan as planmod
from labctl.netns import supervisor
from labctl.netns.facts import TwinFacts
from labctl.netns.topology import build
from labctl.sensor.base import SensorTarget
from labctl.sensor.client import D4IoTDriver
from labctl.sensor.config import load_config
from labctl.sensor.engine import Sensor
from labctl.sensor.pcap import CaptureFile
from labctl.sensor.service import SensorService
from labctl.transport.certs import fingerprint
from tests.helpers.sensor_pcaps import SCANNER_IP, syn_scan, write

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT / "playbooks" / "twin.yaml"


def _playbook(tmp_path: Path, sensor_extra: dict, name: str = "pb.yaml") -> Path:
    """The reference twin playbook with keys added to its sensor: section."""
    doc = yaml.safe_load(TWIN.read_text())
    doc["sensor"].update(sensor_extra)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    # personas are looked up beside the playbook, then in the packaged folder
    return p


def _sensor_argv(pb: Path, state: Path) -> tuple[str, ...]:
    """The sensor's argv, with its configuration written as `up` writes it before starting
    processes (building the topology alone writes nothing)."""
    from labctl.netns.topology import write_sensor_config

    topo = build(load_playbook(str(pb)), state)
    for path, text in topo.files.items():
        write_sensor_config(state, path, text)
    return next(p.argv for p in topo.processes if p.name == "sensor")


def test_building_the_topology_writes_nothing(tmp_path):
    state = tmp_path / "state"
    pb = _playbook(tmp_path, {"engines": {"port_scan": {"threshold": 8}}})
    topo = build(load_playbook(str(pb)), state)
    argv = next(p.argv for p in topo.processes if p.name == "sensor")
    assert _config_of(argv) in topo.files and not (state / "sensor-config").exists()


def _config_of(argv: tuple[str, ...]) -> Path:
    return Path(argv[argv.index("--config") + 1])


# ---- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("engines, key, words", [
    ({"port_scn": {"threshold": 5}}, "sensor.engines.port_scn", "unknown detection 'port_scn'"),
    ({"port_scan": {"threshold": 0}}, "sensor.engines.port_scan.threshold", "greater than"),
    ({"port_scan": {"threshold": "30"}}, "sensor.engines.port_scan.threshold", "integer"),
    ({"port_scan": {"threshold": 2.5}}, "sensor.engines.port_scan.threshold", "integer"),
    ({"port_scan": {"window_seconds": 0}}, "sensor.engines.port_scan.window_seconds",
     "greater than 0"),
    ({"port_scan": {"window_seconds": -3}}, "sensor.engines.port_scan.window_seconds",
     "greater than 0"),
    ({"arp_scan": {"enabled": "yes"}}, "sensor.engines.arp_scan.enabled", "boolean"),
    ({"arp_scan": {"on": True}}, "sensor.engines.arp_scan.on", "unknown key"),
])
def test_bad_engines_key_names_file_key_and_line(tmp_path, engines, key, words):
    pb = _playbook(tmp_path, {"engines": engines})
    with pytest.raises(ConfigError) as e:
        load_playbook(str(pb))
    err = e.value
    assert err.exit_code == 2
    assert err.file == str(pb) and err.key == key and err.line, (err.key, err.line)
    assert words in err.message
    assert not (tmp_path / "state").exists()  # nothing written


def test_bad_engines_key_exits_2_before_anything_is_contacted(tmp_path, cli_run):
    pb = _playbook(tmp_path, {"engines": {"port_scn": {}}})
    r = cli_run("plan", "-f", str(pb))
    assert r.exit_code == 2
    out = r.stdout + r.stderr
    assert "sensor.engines.port_scn" in out and str(pb) in out


def test_valid_overrides_read_as_verify_alerts_reads_them(tmp_path):
    pb = _playbook(tmp_path, {"engines": {"port_scan": {"threshold": 8, "window_seconds": 30},
                                          "arp_scan": {"enabled": True}}})
    eng = load_playbook(str(pb)).model.sensor.engines
    assert (eng["port_scan"].enabled, eng["port_scan"].threshold,
            eng["port_scan"].window_seconds) == (None, 8, 30.0)
    assert eng["arp_scan"].enabled is True and eng["arp_scan"].threshold is None


# ---- the file the twin writes, and the sensor's argv ----------------------------------------

def test_twin_writes_the_effective_engines_file_and_passes_it(tmp_path):
    pb = _playbook(tmp_path, {"engines": {"port_scan": {"threshold": 8},
                                          "icmp_flood": {"enabled": True,
                                                         "window_seconds": 10}},
                              "learning_mode": False,
                              "authorized_scanners": ["172.16.1.50"]})
    state = tmp_path / "state"
    argv = _sensor_argv(pb, state)
    cfg_path = _config_of(argv)
    assert cfg_path.parent == state / "sensor-config" and cfg_path.is_file()
    assert cfg_path.stat().st_mode & 0o077 == 0
    cfg = load_config(cfg_path)
    d = cfg.detections
    assert (d.port_scan.threshold, d.port_scan.window_seconds) == (8, 120)  # window kept
    assert d.icmp_flood.enabled and d.icmp_flood.window_seconds == 10
    assert not d.arp_scan.enabled  # untouched default
    assert cfg.engines.learning_mode is False
    assert cfg.engines.authorized_scanners == ["172.16.1.50"]
    assert cfg.rules, "the shipped custom rules still load from the written file"


def test_changed_playbook_changes_the_argv_and_the_plan_restarts_the_sensor(tmp_path):
    state = tmp_path / "state"
    a = _playbook(tmp_path, {"engines": {"port_scan": {"threshold": 8}}}, "a.yaml")
    b = _playbook(tmp_path, {"engines": {"port_scan": {"threshold": 9}}}, "b.yaml")
    argv_a = _sensor_argv(a, state)
    first = _config_of(argv_a)
    mtime = first.stat().st_mtime_ns
    assert _sensor_argv(a, state) == argv_a  # same playbook: same argv...
    assert first.stat().st_mtime_ns == mtime  # ...and the file is not rewritten
    argv_b = _sensor_argv(b, state)
    assert argv_b != argv_a and _config_of(argv_b) != first
    assert not first.exists()  # the earlier version is removed
    assert load_config(_config_of(argv_b)).detections.port_scan.threshold == 9

    # what `up` does with it: the running sensor (argv_a) is restarted with argv_b
    topo = build(load_playbook(str(b)), state)
    sensor_proc = next(p for p in topo.processes if p.name == "sensor")
    facts = TwinFacts(lab=topo.lab, processes={"sensor": supervisor.ProcInfo(
        "sensor", 4242, sensor_proc.ns, argv_a, True, "", 0.0)})
    change = next(c for c in planmod.plan_up(topo, facts, str(state)).changes
                  if c.resource == "netns.process:sensor")
    assert change.action.value == "update" and "command line changed" in change.reason
    facts.processes["sensor"] = supervisor.ProcInfo("sensor", 4242, sensor_proc.ns, argv_b,
                                                    True, "", 0.0)
    same = next(c for c in planmod.plan_up(topo, facts, str(state)).changes
                if c.resource == "netns.process:sensor")
    assert same.action.value == "noop"


def test_learning_and_scanners_alone_change_the_argv(tmp_path):
    state = tmp_path / "state"
    base = _sensor_argv(_playbook(tmp_path, {}, "0.yaml"), state)
    off = _sensor_argv(_playbook(tmp_path, {"learning_mode": False}, "1.yaml"), state)
    scan = _sensor_argv(_playbook(tmp_path, {"authorized_scanners": ["172.16.1.50"]},
                                  "2.yaml"), state)
    assert len({base, off, scan}) == 3


# ---- the sensor under that file -------------------------------------------------------------

def test_overrides_change_what_the_engine_raises(tmp_path):
    def titles(engines: dict) -> list[str]:
        pb = _playbook(tmp_path, {"engines": engines, "learning_mode": False}, "t.yaml")
        cfg = load_config(_config_of(_sensor_argv(pb, tmp_path / "st")))
        s = Sensor(cfg)
        _replay(s, tmp_path, syn_scan(12))
        return [a.title for a in s.alerts]

    assert "Port Scan Detected" not in titles({})  # 12 ports < the default 25
    assert "Port Scan Detected" in titles({"port_scan": {"threshold": 10}})
    assert "Port Scan Detected" not in titles({"port_scan": {"threshold": 10,
                                                             "enabled": False}})


def _replay(sensor: Sensor, tmp: Path, packets: list) -> None:
    cap = CaptureFile(write(tmp / "replay.pcap", packets))
    sensor.replay(cap, cap.data)


def _service(state: Path, config: Path) -> SensorService:
    return SensorService(interface="lo", listen="127.0.0.1:0", state_dir=state, config=config)


def test_status_reports_the_learning_mode_in_force_and_scanner_flags(tmp_path):
    """A sensor first run learning (the shipped default, remembered) and then started with
    the twin's file for a playbook with learning_mode: false and an authorized scanner
    reports learning off, on /api/labctl/status and through the driver, and shows the
    scanner's existing record with scanner: true."""
    state = tmp_path / "sensor"
    first = SensorService(interface="lo", listen="127.0.0.1:0", state_dir=state,
                          learning_mode=True)
    with first.sensor.lock:
        _replay(first.sensor, tmp_path, syn_scan(3))
    first.flush()
    first.store.close()
    os.close(first._lock_fd)

    pb = _playbook(tmp_path, {"learning_mode": False, "authorized_scanners": [SCANNER_IP]})
    cfg = _config_of(_sensor_argv(pb, tmp_path / "lab"))
    svc = _service(state, cfg)
    try:
        url = svc.start_api()
        token = svc.store.create_token("tests")
        drv = D4IoTDriver(SensorTarget(base_url=url, token=Secret(token),
                                       fingerprint=fingerprint(state / "tls" / "cert.pem")))
        st = drv.status()
        assert st.learning_mode is False and st.details["learning_mode"] is False
        devs = {d.ip_addresses[0]: d for d in drv.devices()}
        assert devs[SCANNER_IP].scanner is True  # a record made before it was authorized
        assert not any(d.scanner for ip, d in devs.items() if ip != SCANNER_IP)
    finally:
        svc.server.shutdown()
        svc.server.server_close()
        svc.server.head_watchdog.stop()
        svc.store.close()


def test_explicit_flag_still_wins_over_the_file(tmp_path):
    pb = _playbook(tmp_path, {"learning_mode": False})
    cfg = _config_of(_sensor_argv(pb, tmp_path / "lab"))
    svc = SensorService(interface="lo", listen="127.0.0.1:0", state_dir=tmp_path / "s",
                        config=cfg, learning_mode=True)
    try:
        assert svc.sensor.learning is True
    finally:
        svc.store.close()


def test_verify_alerts_reads_the_overrides_by_their_attribute_names(tmp_path):
    from types import SimpleNamespace

    from labctl.app.verify import effective_detections

    pb = _playbook(tmp_path, {"engines": {"port_scan": {"threshold": 8},
                                          "arp_scan": {"enabled": True}}})
    dets = effective_detections(SimpleNamespace(playbook=load_playbook(str(pb)).model))
    assert dets["port_scan"].threshold == 8 and dets["arp_scan"].enabled
    assert dets["port_scan"].window_seconds == 120 and not dets["icmp_flood"].enabled
