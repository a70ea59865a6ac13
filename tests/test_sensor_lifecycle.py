"""Looking at the sensor, its token and its activation, through the real CLI against the
embedded sensor's HTTPS API on 127.0.0.1 (an in-process server, certificate pinned on first
use like a real D4IoT sensor's self-signed one)."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers.sensor_api import running_api
from tests.helpers.sensor_pcaps import SCANNER_IP, T0, syn_scan, tcp_packet, write

pytest.importorskip("scapy")


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    d = tmp_path_factory.mktemp("pcap")
    pk = syn_scan(30) + [
        tcp_packet("172.16.1.20", "172.16.1.30", 6667, flags="PA", t=T0 + 600),
        tcp_packet("172.16.1.30", "172.16.1.20", 51000, sport=6667, flags="SA", t=T0 + 601,
                   smac="dc:a6:32:00:00:30"),
        tcp_packet("172.16.1.40", "172.16.1.41", 443, flags="PA", t=T0 + 700,
                   smac="dc:a6:32:00:00:40"),
        tcp_packet("172.16.1.41", "172.16.1.40", 51000, sport=443, flags="SA", t=T0 + 701,
                   smac="dc:a6:32:00:00:41")]
    return write(d / "lc.pcap", pk)


@pytest.fixture
def api(tmp_path, pcap):
    with running_api(tmp_path / "state", pcap, learning=False) as a:
        yield a


def playbook(tmp_path: Path, url: str, extra: str = "") -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(f"""lab: lc
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
sensor:
  kind: d4iot
  url: {url}
  token: {{env: LABCTL_SENSOR_TOKEN}}
{extra}""")
    return p


def run(cli_run, api, tmp_path, *args, extra: str = "", token: str | None = "default"):
    pb = playbook(tmp_path, api.url, extra)
    env = {"LABCTL_SENSOR_TOKEN": api.token if token == "default" else token}
    if token is None:
        env = {"LABCTL_SENSOR_TOKEN": None}
    return cli_run("sensor", *args, "-f", str(pb), env=env)


# ---- status ------------------------------------------------------------------------------

def test_status_json_reports_reachability_learning_activation_and_the_pin(
        cli_run, api, tmp_path, _isolated_state):
    r = run(cli_run, api, tmp_path, "status", "--json")
    assert r.exit_code == 0, r
    doc = r.json()
    assert doc["reachable"] is True and doc["token_accepted"] is True
    assert doc["url"] == api.url and doc["access"] == "direct"
    assert doc["learning_mode"] is False  # the fixture's sensor runs with learning off
    assert doc["activation"] == "not activated"
    assert doc["version"].startswith("labctl-embedded ")
    pins = json.loads((_isolated_state / "pins.json").read_text())
    assert doc["fingerprint"] == next(v for k, v in pins.items()
                                      if k.endswith(api.url.rsplit(":", 1)[1]))
    assert doc["packets"] == api.sensor.packets > 0
    assert api.token not in r.stdout + r.stderr


def test_status_table_and_a_refused_token(cli_run, api, tmp_path):
    r = run(cli_run, api, tmp_path, "status")
    assert r.exit_code == 0, r
    assert "reachable:" in r.stdout and "yes" in r.stdout and "sha256 " in r.stdout
    bad = run(cli_run, api, tmp_path, "status", "--json", token="not-the-token")
    doc = bad.json()
    assert doc["reachable"] is True and doc["token_accepted"] is False
    assert "invalid token" in doc["error"]


def test_status_of_a_sensor_that_does_not_answer_is_exit_5(cli_run, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pb = playbook(tmp_path, f"https://127.0.0.1:{port}")
    r = cli_run("sensor", "status", "--json", "-f", str(pb),
                env={"LABCTL_SENSOR_TOKEN": "t"})
    assert r.exit_code == 5, r
    assert r.json()["reachable"] is False and "Connection refused" in r.json()["error"]


def test_a_changed_certificate_is_refused_with_a_hint(cli_run, api, tmp_path,
                                                      _isolated_state):
    assert run(cli_run, api, tmp_path, "status", "--json").exit_code == 0  # pins
    pins_path = _isolated_state / "pins.json"
    pins = json.loads(pins_path.read_text())
    key = next(k for k in pins if k.endswith(api.url.rsplit(":", 1)[1]))
    pins[key] = ":".join(["AB"] * 32)  # as if the sensor now showed another certificate
    pins_path.write_text(json.dumps(pins))
    for cmd in (["status", "--json"], ["alerts"], ["devices"]):
        r = run(cli_run, api, tmp_path, *cmd)
        assert r.exit_code == 5, r
        assert "certificate" in r.stderr and "changed" in r.stderr
        assert "re-pin" in r.stderr  # the hint says how to accept a legitimate change
    # the playbook's own fingerprint is enforced the same way
    r = run(cli_run, api, tmp_path, "alerts",
            extra="  tls_fingerprint: \"" + ":".join(["CD"] * 32) + "\"\n")
    assert r.exit_code == 5 and "changed" in r.stderr


# ---- alerts, devices, connections, events ------------------------------------------------

def test_alerts_filters(cli_run, api, tmp_path):
    r = run(cli_run, api, tmp_path, "alerts", "--json")
    assert r.exit_code == 0, r
    docs = r.json()
    titles = [d["title"] for d in docs]
    assert "Port Scan Detected" in titles
    scan = next(d for d in docs if d["title"] == "Port Scan Detected")
    assert scan["sourceDeviceAddress"] == SCANNER_IP  # v2 shape: addresses
    assert [d["time"] for d in docs] == sorted(d["time"] for d in docs)
    only = run(cli_run, api, tmp_path, "alerts", "--json", "--title", "port SCAN").json()
    assert only and all("port scan" in d["title"].lower() for d in only)
    assert run(cli_run, api, tmp_path, "alerts", "--json", "--title", "nothing-like-it"
               ).json() == []
    # the capture is from 2023: nothing was detected in the last hour
    assert run(cli_run, api, tmp_path, "alerts", "--json", "--since", "1h").json() == []
    assert run(cli_run, api, tmp_path, "alerts", "--json", "--state", "handled").json() == []
    assert len(run(cli_run, api, tmp_path, "alerts", "--json", "--state", "unhandled"
                   ).json()) == len(docs)
    table = run(cli_run, api, tmp_path, "alerts")
    assert "Port Scan Detected" in table.stdout and "SEVERITY" in table.stdout


def test_alerts_bad_duration_is_exit_2_and_nothing_is_contacted(cli_run, tmp_path):
    pb = playbook(tmp_path, "https://127.0.0.1:9")
    r = cli_run("sensor", "alerts", "--since", "ten minutes", "-f", str(pb))
    assert r.exit_code == 2 and "--since" in r.stderr


def test_devices_and_authorized_filter(cli_run, api, tmp_path):
    docs = run(cli_run, api, tmp_path, "devices", "--json").json()
    ips = {ip for d in docs for ip in d["ipAddresses"]}
    assert {SCANNER_IP, "172.16.1.20", "172.16.1.30", "172.16.1.40"} <= ips
    authorized = run(cli_run, api, tmp_path, "devices", "--json", "--authorized").json()
    unauthorized = run(cli_run, api, tmp_path, "devices", "--json", "--unauthorized").json()
    assert len(authorized) + len(unauthorized) == len(docs)
    assert all(d["authorized"] for d in authorized)
    assert not any(d["authorized"] for d in unauthorized)
    assert "172.16.1.20" in run(cli_run, api, tmp_path, "devices").stdout


def test_connections_of_one_device(cli_run, api, tmp_path):
    every = run(cli_run, api, tmp_path, "connections", "--json").json()
    assert every
    mine = run(cli_run, api, tmp_path, "connections", "--json", "--device", "172.16.1.20")
    assert mine.exit_code == 0, mine
    docs = mine.json()
    assert docs and len(docs) < len(every)
    assert any(6667 in d["ports"] for d in docs)
    r = run(cli_run, api, tmp_path, "connections", "--device", "172.16.1.99")
    assert r.exit_code == 2 and "no device with that address" in r.stderr


def test_events_minutes_and_type(cli_run, api, tmp_path):
    from labctl.sensor.records import Event

    now = int(time.time() * 1000)
    with api.sensor.lock:
        api.sensor.events.append(Event(seq=900, timestamp=now - 5_000, type="DEVICE_CREATE",
                                       title="Device Detected", severity="INFO",
                                       owner="", content="a new device"))
        api.sensor.events.append(Event(seq=901, timestamp=now - 2 * 3600_000, type="SCAN",
                                       title="Scan Device Detected", severity="NOTICE",
                                       owner="", content="old"))
    recent = run(cli_run, api, tmp_path, "events", "--json", "--minutes", "10").json()
    assert [e["content"] for e in recent] == ["a new device"]
    wide = run(cli_run, api, tmp_path, "events", "--json", "--minutes", "180").json()
    assert {"a new device", "old"} <= {e["content"] for e in wide}
    scans = run(cli_run, api, tmp_path, "events", "--json", "--minutes", "180", "--type",
                "SCAN").json()
    assert [e["content"] for e in scans] == ["old"]
    assert run(cli_run, api, tmp_path, "events", "--minutes", "0").exit_code == 2


# ---- token -------------------------------------------------------------------------------

def test_token_for_a_real_sensor_explains_where_to_create_one(cli_run, tmp_path):
    pb = playbook(tmp_path, "https://127.0.0.1:9")
    r = cli_run("sensor", "token", "-f", str(pb))
    assert r.exit_code == 0, r
    assert "System Settings > Integrations > Access Tokens" in r.stdout
    assert "LABCTL_SENSOR_TOKEN" in r.stdout
    doc = cli_run("sensor", "token", "-f", str(pb), "--json").json()
    assert doc["created"] is False and doc["env"] == "LABCTL_SENSOR_TOKEN"


def test_token_create_subcommand_still_works(cli_run, tmp_path):
    r = cli_run("sensor", "token", "create", "--state", str(tmp_path / "s"), "--json")
    assert r.exit_code == 0, r
    value = r.json()["token"]
    from labctl.sensor.store import SensorStore

    st = SensorStore(tmp_path / "s")
    try:
        assert st.check_token(value)
    finally:
        st.close()


# ---- activation --------------------------------------------------------------------------

def activation_zip(path: Path, *, members: dict[str, bytes] | None = None,
                   age_days: float = 0.0) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in (members or {"activation.conf": b"sensor=lc\n"}).items():
            zf.writestr(name, data)
    t = time.time() - age_days * 86400
    os.utime(path, (t, t))
    return path


def test_activate_the_embedded_sensor_through_its_endpoint(cli_run, api, tmp_path):
    z = activation_zip(tmp_path / "act.zip")
    extra = f"  activation_file: {z.name}\n"
    r = run(cli_run, api, tmp_path, "activate", "--json", extra=extra)
    assert r.exit_code == 0, r
    doc = r.json()
    assert doc["uploaded"] is True and doc["activated"] is True
    assert doc["file"]["members"] == ["activation.conf"]
    assert "uploaded" in r.stderr
    st = run(cli_run, api, tmp_path, "status", "--json").json()
    assert st["activation"] == "activated"
    # the state is on disk: a restarted sensor is still activated
    assert json.loads((api.state / "activation.json").read_text())["sha256"] == \
        doc["file"]["sha256"]
    again = run(cli_run, api, tmp_path, "activate", "--json", extra=extra).json()
    assert again["uploaded"] is False and again["activated"] is True  # noop


@pytest.mark.parametrize("kind,needle", [
    ("not-zip", "is not a ZIP archive"),
    ("empty", "empty ZIP"),
    ("old", "days old"),
    ("exe", "holds a program"),
    ("climb", "unsafe path"),
    ("missing", "cannot read it"),
])
def test_a_bad_activation_file_is_exit_2_naming_file_key_and_line(cli_run, api, tmp_path,
                                                                  kind, needle):
    z = tmp_path / "act.zip"
    if kind == "not-zip":
        z.write_bytes(b"PK but not really a zip")
    elif kind == "empty":
        zipfile.ZipFile(z, "w").close()
    elif kind == "old":
        activation_zip(z, age_days=15)
    elif kind == "exe":
        activation_zip(z, members={"setup.exe": b"MZ"})
    elif kind == "climb":
        activation_zip(z, members={"../../etc/x": b"x"})
    r = run(cli_run, api, tmp_path, "activate", extra=f"  activation_file: {z.name}\n")
    assert r.exit_code == 2, r
    assert needle in r.stderr
    assert "lab.yaml:8: sensor.activation_file" in r.stderr
    assert not (api.state / "activation.json").exists()  # nothing was uploaded


def test_activation_file_close_to_expiry_warns(tmp_path):
    from labctl.sensor.activation import check_activation_file

    z = activation_zip(tmp_path / "a.zip", age_days=13)
    act = check_activation_file(z, now=time.time())
    assert act.warnings and "expires" in act.warnings[0]
    assert 12.9 < act.age_days < 13.1


class FakeClock:
    def __init__(self, on_sleep=None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s
        if self.on_sleep:
            self.on_sleep(self)


@pytest.fixture
def real_sensor(tmp_path):
    """A sensor without labctl's activation endpoint (tests/helpers/fake_d4iot)."""
    from tests.helpers import fake_d4iot

    srv, url, _fp = fake_d4iot.serve(fake_d4iot.FakeSensor(), tmp_path / "fake")
    try:
        yield url
    finally:
        srv.shutdown()
        srv.server_close()


def _real_ctx(tmp_path, url, clock, token="user-token", wait=600):
    from labctl.core.context import LabContext
    from labctl.core.playbook import load_playbook

    z = activation_zip(tmp_path / "act.zip")
    pb = playbook(tmp_path, url, f"  activation_file: {z.name}\n"
                                 f"  activation_wait_seconds: {wait}\n")
    return LabContext(load_playbook(str(pb)), environ={"LABCTL_SENSOR_TOKEN": token},
                      clock=clock, sleep=clock.sleep)


def test_activate_a_real_sensor_prints_the_page_then_waits_for_the_token(
        tmp_path, real_sensor, monkeypatch):
    """No upload API: the instructions come first, then labctl polls until the data API
    answers the user's token (here the user finishes after three polls)."""
    from labctl.app.sensor import sensor_activate
    from tests.helpers import fake_d4iot

    def user_activates(clock: FakeClock) -> None:
        if len(clock.sleeps) == 3:
            monkeypatch.setattr(fake_d4iot, "TOKEN", "user-token")

    clock = FakeClock(user_activates)
    events: list[dict] = []
    report = sensor_activate(_real_ctx(tmp_path, real_sensor, clock), progress=events.append)
    assert events[0]["phase"] == "instructions"
    assert "System settings > Sensor management > Subscription & Activation mode" in \
        events[0]["page"] and events[0]["url"] == real_sensor
    assert events[0]["file"].endswith("act.zip")
    phases = [e["phase"] for e in events[1:]]
    assert phases == ["waiting", "waiting", "waiting", "activated"]
    assert report.activated and not report.uploaded
    assert report.waited_seconds == pytest.approx(sum(clock.sleeps))


def test_activate_times_out_with_a_hint_and_exit_4(tmp_path, real_sensor):
    from labctl.app.sensor import sensor_activate
    from labctl.core.errors import ConvergenceError

    clock = FakeClock()
    with pytest.raises(ConvergenceError) as ei:
        sensor_activate(_real_ctx(tmp_path, real_sensor, clock, wait=60))
    assert int(ei.value.exit_code) == 4
    assert "within 60 s" in ei.value.message and "token refused" in ei.value.message
    assert "Subscription & Activation mode" in (ei.value.hint or "")
    assert clock.now - 1000.0 <= 60.0 + 1e-6  # never slept past the deadline


def test_token_for_the_twins_embedded_sensor_creates_one(cli_run, repo_root, _isolated_state):
    """provider netns + kind embedded: labctl made that sensor, so it creates the token in
    the sensor's own store (no running twin needed for that)."""
    from labctl.core.playbook import load_playbook
    from labctl.core.state import lab_state_dir
    from labctl.sensor.store import SensorStore

    pb = str(repo_root / "playbooks" / "twin.yaml")
    r = cli_run("sensor", "token", "-f", pb, "--json")
    assert r.exit_code == 0, r
    doc = r.json()
    assert doc["token"] and doc["env"] == "LABCTL_SENSOR_TOKEN"
    lab = load_playbook(pb).model.lab
    st = SensorStore(lab_state_dir(lab) / "sensor")
    try:
        assert st.check_token(doc["token"])
        assert not st.check_token("something-else")
    finally:
        st.close()
    text = cli_run("sensor", "token", "-f", pb)
    assert text.exit_code == 0 and "Store it now" in text.stderr
    assert text.stdout.strip() != doc["token"]  # a new one each time
