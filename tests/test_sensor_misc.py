"""Sensor odds and ends: CLI help and tokens, tokens hashed at rest, the live fast path
(feed_batch) equal to the generic path, expectations, OUI table, lazy imports."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from labctl.core.errors import ConfigError
from labctl.core.expectations import load_expectations
from labctl.sensor.store import SensorStore


@pytest.mark.parametrize("argv", [("sensor",), ("sensor", "serve"), ("sensor", "replay"),
                                  ("sensor", "token"), ("sensor", "token", "create"),
                                  ("sensor", "token", "list")])
def test_every_sensor_command_has_help(cli_run, argv):
    r = cli_run(*argv, "--help")
    assert r.exit_code == 0 and "Usage:" in r.stdout


def test_serve_flags_the_twin_relies_on(cli_run):
    out = cli_run("sensor", "serve", "--help").stdout
    for flag in ("--interface", "--listen", "--config", "--state"):
        assert flag in out


def test_token_create_json_and_list(cli_run, tmp_path):
    state = tmp_path / "st"
    r = cli_run("sensor", "token", "create", "--state", str(state), "--json",
                "--description", "twin")
    assert r.exit_code == 0, r
    token = r.json()["token"]
    assert len(token) == 64
    r2 = cli_run("sensor", "token", "create", "--state", str(state))
    assert r2.exit_code == 0 and len(r2.stdout.strip()) == 64 and "not shown again" in r2.stderr
    lst = cli_run("sensor", "token", "list", "--state", str(state), "--json").json()
    assert [t["description"] for t in lst] == ["twin", "labctl"]
    assert token not in json.dumps(lst)
    human = cli_run("sensor", "token", "list", "--state", str(state))
    assert "twin" in human.stdout and "N/A" in human.stdout and token not in human.stdout
    # hashed at rest: the plaintext is nowhere in the database
    raw = b"".join(p.read_bytes() for p in state.glob("sensor.db*"))
    assert token.encode() not in raw
    store = SensorStore(state)
    try:
        assert store.check_token(token) and not store.check_token(
            token[:-1] + ("1" if token[-1] == "0" else "0"))
        used = {t["description"]: t["used"] for t in store.list_tokens()}
        assert used["twin"] is not None and used["labctl"] is None
    finally:
        store.close()


def test_admin_password_is_hashed_and_must_change(tmp_path):
    store = SensorStore(tmp_path)
    try:
        assert store.check_password("admin", "admin") == (True, True)
        assert store.check_password("admin", "x") == (False, True)
        assert store.check_password("nobody", "admin") == (False, False)
        store.set_password("admin", "N3w-Passw0rd!")
        assert store.check_password("admin", "N3w-Passw0rd!") == (True, False)
        rows = sqlite3.connect(tmp_path / "sensor.db").execute("SELECT hash FROM users").fetchall()
        assert "N3w-Passw0rd!" not in str(rows)
    finally:
        store.close()


def test_live_fast_path_matches_generic(tmp_path):
    """Frames fed as serve does (feed_batch) give the same state as parse+process."""
    import importlib.util
    from pathlib import Path

    from labctl.sensor.api import alert_to_api, connections_api, device_to_api
    from labctl.sensor.config import load_config
    from labctl.sensor.engine import Sensor
    from labctl.sensor.pcap import CaptureFile

    spec = importlib.util.spec_from_file_location(
        "sensor_bench", Path(__file__).resolve().parent.parent / "bench" / "sensor_replay.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "mix.pcap"
    bench.build(str(path), 30_000)
    cap = CaptureFile(path)
    frames = [(cap.data[off:off + n], ts) for ts, off, n in cap]
    cfg = load_config()
    a, b = Sensor(cfg), Sensor(cfg)
    for i in range(0, len(frames), 1000):
        a.feed_batch(frames[i:i + 1000])
    for f, ts in frames:
        b.feed(f, 0, len(f), ts)
    a.fold(a.last_ts)
    b.fold(b.last_ts)
    assert a.packets == b.packets == 30_000
    assert [alert_to_api(x) for x in a.alerts] == [alert_to_api(x) for x in b.alerts]
    assert [device_to_api(d) for d in a.devices.values()] == \
        [device_to_api(d) for d in b.devices.values()]
    assert connections_api(a) == connections_api(b)


def test_expectations_shipped_and_bad(tmp_path):
    # the sensor's expectation sets are read by labctl.core.expectations (verify-alerts'
    # cases); the shipped set proves the reference lab's port scans, and says why a scanner
    # on the same Ethernet segment raises no Address Scan (its probes to absent addresses
    # stay ARP requests)
    exp = load_expectations("nmap-default")
    positive = {(m.title, m.engine) for c in exp.cases if not c.expect_none for m in c.expect}
    assert ("Port Scan Detected", "Anomaly") in positive
    subnet = next(c for c in exp.cases if c.id == "service-scan-subnet")
    assert "Address Scan Detected" in subnet.reference and "ARP" in subnet.reference
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - id: x\n    stimulus: {recipe: port-zero, host: a}\n"
                   "    expect:\n      - {title: Port Scan Detected, engine: Anomalous}\n")
    with pytest.raises(ConfigError) as ei:
        load_expectations(str(bad))
    assert ei.value.key == "cases[0].expect[0].engine" and ei.value.line == 5


def test_oui_table_names_its_source_and_resolves():
    from labctl.core.assets import asset_path
    from labctl.sensor.oui import OuiTable

    text = asset_path("sensor", "oui.txt").read_text()
    assert "IEEE" in text and "standards-oui.ieee.org" in text
    t = OuiTable([asset_path("sensor", "oui.txt")])  # the shipped table alone
    assert t.lookup("B8:27:EB:12:34:56") == "Raspberry Pi Foundation"
    assert t.lookup("00:15:5d:00:00:01") == "Microsoft"
    assert t.lookup("02:00:00:00:00:01") is None


def test_cli_sensor_module_does_not_import_scapy():
    code = ("import sys, labctl.cli.sensor, labctl.sensor.replay, labctl.sensor.service;"
            "print([m for m in ('scapy', 'paramiko', 'pypsrp', 'nmap') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_replay_human_output(cli_run, tmp_path):
    pytest.importorskip("scapy")
    from tests.helpers.sensor_pcaps import syn_scan, write

    pcap = write(tmp_path / "s.pcap", syn_scan(25))
    r = cli_run("sensor", "replay", "--pcap", str(pcap))
    assert r.exit_code == 0
    assert "[Critical] Port Scan Detected (Anomaly) 172.16.1.50 -> 172.16.1.10" in r.stdout
    assert "Microsoft" in r.stdout and "packets/s" in r.stdout


def test_store_keeps_the_newest_events_only(tmp_path):
    from labctl.sensor.store import KEEP_EVENTS

    store = SensorStore(tmp_path)
    try:
        ev = [{"seq": i, "timestamp": i, "type": "DEVICE_CREATE", "title": "t",
               "severity": "INFO", "content": "c", "owner": ""} for i in range(1, KEEP_EVENTS + 11)]
        store.write_batch([], [], [], ev)
        assert store.db.execute("SELECT COUNT(*), MIN(seq) FROM events").fetchone() == (
            KEEP_EVENTS, 11)
    finally:
        store.close()


@pytest.mark.parametrize("text,expected", [
    ("192.168.0.101:443", ("192.168.0.101", 443)),
    ("[::1]:8443", ("::1", 8443)),
    (":443", ("0.0.0.0", 443)),
])
def test_parse_listen(text, expected):
    from labctl.sensor.service import parse_listen

    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["443", "host:", "1.2.3.4:70000", "1.2.3.4:https"])
def test_parse_listen_rejects(text):
    from labctl.core.errors import UsageError
    from labctl.sensor.service import parse_listen

    with pytest.raises(UsageError, match="ADDR:PORT"):
        parse_listen(text)


def test_one_serve_per_state_folder(tmp_path):
    from labctl.core.errors import PreflightError
    from labctl.sensor.service import SensorService

    first = SensorService(interface="lo", listen="127.0.0.1:0", state_dir=tmp_path)
    try:
        with pytest.raises(PreflightError, match="another `labctl sensor serve`"):
            SensorService(interface="lo", listen="127.0.0.1:0", state_dir=tmp_path)
    finally:
        first.store.close()
        import os

        os.close(first._lock_fd)
