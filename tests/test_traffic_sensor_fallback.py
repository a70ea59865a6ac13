"""--sensor against a sensor without a flow API (the stateful fake of a real Defender for
IoT sensor over HTTPS, which has no /api/labctl/flows): report falls back to the coarse
devices/connections view and says what is missing; export sends the alerts and says the
flows are not available."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.fake_d4iot import TOKEN, FakeSensor, serve

FEEDER = "172.16.1.21"
IRC = "203.0.113.10"


@pytest.fixture
def fake(tmp_path: Path):
    sensor = FakeSensor(learning_mode=False)
    sensor.observe(FEEDER, IRC, (6667,))
    sensor.raise_alert("Unauthorized Internet Connectivity Detected", "Policy Violation",
                       FEEDER, IRC, severity="Major", at=1_700_000_000.0)
    srv, url, fp = serve(sensor, tmp_path / "tls")
    try:
        yield sensor, url, fp
    finally:
        srv.stop()


def _playbook(tmp_path: Path, url: str, fp: str) -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(f"""lab: real
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
devices:
  - {{name: feeder1, ip: {FEEDER}}}
sensor:
  kind: d4iot
  url: {url}
  tls_fingerprint: "{fp}"
  token: {{env: LABCTL_SENSOR_TOKEN}}
""")
    return p


def test_report_falls_back_to_the_coarse_view(cli_run, fake, tmp_path: Path) -> None:
    _, url, fp = fake
    r = cli_run("traffic", "report", "--sensor", "-f", str(_playbook(tmp_path, url, fp)),
                "--json", env={"LABCTL_SENSOR_TOKEN": TOKEN})
    assert r.exit_code == 0, r
    doc = r.json()
    src = doc["sources"]
    assert src["kind"] == "sensor" and src["flows_unsupported"]
    assert "packets and bytes in each direction" in src["missing"]
    assert "hour-of-day activity" in src["missing"] and "periodicity" in src["missing"]
    (f,) = [d for d in doc["devices"] if d["ip"] == FEEDER]
    assert f["name"] == "feeder1" and f["packets_out"] is None
    peers = {p["ip"]: p for p in f["peers"]}
    assert "6667" in peers[IRC]["ports"]
    # the terminal view says it is coarse
    r = cli_run("traffic", "report", "--sensor", "-f", str(_playbook(tmp_path, url, fp)),
                env={"LABCTL_SENSOR_TOKEN": TOKEN})
    assert r.exit_code == 0, r
    assert "coarse view" in r.stdout and "packets and bytes in each direction" in r.stdout


def test_export_sends_the_alerts_and_says_flows_are_missing(cli_run, fake,
                                                             tmp_path: Path) -> None:
    _, url, fp = fake
    out = tmp_path / "records.jsonl"
    r = cli_run("traffic", "export", "--sensor", "-f", str(_playbook(tmp_path, url, fp)),
                "--jsonl", str(out), env={"LABCTL_SENSOR_TOKEN": TOKEN})
    assert r.exit_code == 0, r
    assert "exporting alerts only" in r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["RecordType"] for x in rows] == ["alert"]
    a = rows[0]
    assert a["Title"] == "Unauthorized Internet Connectivity Detected"
    assert a["SrcIp"] == FEEDER and a["DstIp"] == IRC and a["SrcName"] == "feeder1"
    assert a["TimeGenerated"] == "2023-11-14T22:13:20.000Z"
    assert a["Sensor"] == f"d4iot {url}"
