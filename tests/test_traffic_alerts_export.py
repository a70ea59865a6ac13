"""traffic export --sensor: the sensor's alerts in the fields of Defender for IoT's own
syslog forwarding (CEF and the syslog text message), JSON lines, and --follow with its
cursor (exactly once across a restart), against the embedded sensor's real HTTPS API and a
real rsyslogd."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl import __version__
from tests.helpers.sensor_api import running_api
from tests.helpers.sensor_pcaps import SCANNER_IP, SCANNER_MAC, TARGET_IP, syn_scan, write

HAVE_RSYSLOG = bool(shutil.which("rsyslogd") or Path("/usr/sbin/rsyslogd").exists())
needs_rsyslog = pytest.mark.skipif(not HAVE_RSYSLOG, reason="needs rsyslog (Debian package)")


@pytest.fixture
def api(tmp_path: Path):
    pcap = write(tmp_path / "scan.pcap", syn_scan(60))
    with running_api(tmp_path / "sensor-state", pcap, learning=False) as a:
        yield a


@pytest.fixture
def rsyslog(tmp_path: Path):
    from tests.helpers.traffic_rsyslog import Rsyslog

    folder = tmp_path / "rsyslog"
    folder.mkdir()
    with Rsyslog(folder) as r:
        yield r


def playbook(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(f"""lab: alerts
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
devices:
  - {{name: kali, ip: {SCANNER_IP}}}
vms:
  - {{name: d4iot-sensor, role: sensor, profile: L100, generation: 2, cpu: 4, memory_mb: 8192,
     dynamic_memory: false, disk_gb: 100, iso: "C:\\\\ISO\\\\sensor.iso"}}
sensor:
  kind: d4iot
  vm: d4iot-sensor
  url: {url}
  token: {{env: LABCTL_SENSOR_TOKEN}}
""")
    return p


def export(cli_run, api, tmp_path: Path, *args: str):
    pb = playbook(tmp_path, api.url)
    return cli_run("traffic", "export", "--sensor", "-f", str(pb), *args,
                   env={"LABCTL_SENSOR_TOKEN": api.token})


def _alerts(api) -> list[dict]:
    r = api.get("/api/v2/alerts")
    assert r.status_code == 200
    return sorted(r.json(), key=lambda a: a["id"])


def _cef_ext(ext: str) -> dict[str, str]:
    """CEF extension pairs: a value runs to the next unescaped ``key=``."""
    keys = list(re.finditer(r"(?:^| )(\w+)=", ext))
    out = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(ext)
        out[m.group(1)] = ext[m.end():end]
    return out


@needs_rsyslog
def test_alerts_as_cef_field_by_field(cli_run, api, rsyslog, tmp_path: Path) -> None:
    want = _alerts(api)
    assert [a["title"] for a in want] == ["New Asset Detected", "Port Scan Detected",
                                          "Excessive Number of Sessions"]
    r = export(cli_run, api, tmp_path, "--syslog", f"tcp://127.0.0.1:{rsyslog.tcp}",
               "--format", "cef")
    assert r.exit_code == 0, r
    got = [g for g in rsyslog.received(3) if g["msgid"] == "alert"]
    assert len(got) == 3
    scan = next(g for g in got if "|Port Scan Detected|" in g["msg"])
    assert scan["pri"] == "9"  # user.alert, as D4IoT's forwarding rules send
    assert scan["app-name"] == "labctl"
    assert scan["timereported"] == "2023-11-14T22:13:20.240Z"
    msg = scan["msg"].strip()
    head, ext = msg.split("|")[:7], "|".join(msg.split("|")[7:])
    # Microsoft's "Syslog CEF output fields": vendor as the page writes it, the sensor's
    # name as product, the fixed event class, the title, 1/4/8/10 severities
    assert head == ["CEF:0", "Microsoft Defender for IoT/CyberX", "d4iot-sensor", __version__,
                    "Microsoft Defender for IoT Alert", "Port Scan Detected", "10"]
    e = _cef_ext(ext)
    a = want[1]
    assert e["msg"] == a["message"].replace("\n", "\\n").replace("=", "\\=")
    assert e["severity"] == "Critical" and e["type"] == "Anomaly"
    assert e["start"] == "Nov 14 2023 22:13:20"
    assert e["src_ip"] == SCANNER_IP and e["dst_ip"] == TARGET_IP and "src" not in e
    assert e["src_mac"] == SCANNER_MAC  # from the sensor's inventory
    assert "dst_mac" not in e  # the target never sent: not in the inventory
    assert e["externalId"] == str(a["id"])
    assert e["dvchost"] == scan["hostname"]
    assert "protocol" not in e and "cat" not in e  # the D4IoT alert object has neither
    sev = {g["msg"].split("|")[5]: g["msg"].split("|")[6] for g in got}
    assert sev == {"New Asset Detected": "8", "Port Scan Detected": "10",
                   "Excessive Number of Sessions": "10"}


@needs_rsyslog
def test_cef_options_for_the_uncertain_parts(cli_run, api, rsyslog, tmp_path: Path) -> None:
    r = export(cli_run, api, tmp_path, "--syslog", f"udp://127.0.0.1:{rsyslog.udp}",
               "--format", "cef", "--cef-vendor", "Microsoft", "--cef-product",
               "CyberX platform", "--cef-version", "24.1.3", "--cef-severity",
               "Critical=9,Major=7", "--cef-address-keys", "src")
    assert r.exit_code == 0, r
    got = [g for g in rsyslog.received(3) if g["msgid"] == "alert"]
    scan = next(g["msg"].strip() for g in got if "|Port Scan Detected|" in g["msg"])
    assert scan.startswith("CEF:0|Microsoft|CyberX platform|24.1.3|"
                           "Microsoft Defender for IoT Alert|Port Scan Detected|9|")
    e = _cef_ext("|".join(scan.split("|")[7:]))
    assert e["src"] == SCANNER_IP and e["dst"] == TARGET_IP and "src_ip" not in e
    bad = export(cli_run, api, tmp_path, "--syslog", f"udp://127.0.0.1:{rsyslog.udp}",
                 "--cef-severity", "Critical=eleven")
    assert bad.exit_code == 2 and "--cef-severity" in bad.stderr


@needs_rsyslog
@pytest.mark.parametrize("scheme", ["udp", "tls"])
def test_alerts_as_syslog_text_field_by_field(cli_run, api, rsyslog, tmp_path: Path,
                                              scheme: str) -> None:
    port = rsyslog.udp if scheme == "udp" else rsyslog.tls
    args = ["--syslog", f"{scheme}://127.0.0.1:{port}"]
    if scheme == "tls":
        args += ["--ca", str(rsyslog.ca)]
    r = export(cli_run, api, tmp_path, *args)
    assert r.exit_code == 0, r
    got = [g for g in rsyslog.received(3) if g["msgid"] == "alert"]
    assert len(got) == 3
    scan = next(g for g in got if "Port Scan Detected" in g["structured-data"])
    assert scan["pri"] == "9"
    sd = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', scan["structured-data"]))
    assert scan["structured-data"].startswith("[labctl-alert@32473 ")
    assert sd == {"AlertId": "2", "Title": "Port Scan Detected", "Severity": "Critical",
                  "Engine": "Anomaly", "SrcIp": SCANNER_IP, "SrcMac": SCANNER_MAC,
                  "DstIp": TARGET_IP, "Sensor": f"d4iot {api.url}"}
    text = scan["msg"].strip()
    # Microsoft's "Syslog text message output fields", in the table's order
    pairs = [part.split(": ", 1) for part in text.split("; ")]
    assert [k for k, _ in pairs] == ["CyberX platform name", "Microsoft Defender for IoT Alert",
                                     "Type", "Severity", "Source", "Source IP", "Destination",
                                     "Destination IP", "Message", "Alert group"]
    fields = dict(pairs)
    assert fields["CyberX platform name"] == "d4iot-sensor"
    assert fields["Microsoft Defender for IoT Alert"] == "Port Scan Detected"
    assert fields["Message"].startswith("Port scan detected. Scanning address: 172.16.1.50")
    assert fields["Severity"] == "Critical" and fields["Type"] == "Anomaly"
    assert fields["Alert group"] == "N/A"  # the sensor API has no alert group
    assert fields["Source"] == "kali" and fields["Source IP"] == SCANNER_IP
    assert fields["Destination"] == TARGET_IP == fields["Destination IP"]


def test_alerts_as_json_lines(cli_run, api, tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    r = export(cli_run, api, tmp_path, "--jsonl", str(out))
    assert r.exit_code == 0, r
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    alerts = [x for x in rows if x["RecordType"] == "alert"]
    assert [a["AlertId"] for a in alerts] == [1, 2, 3]
    assert alerts[1] == {
        "RecordType": "alert", "TimeGenerated": "2023-11-14T22:13:20.240Z", "AlertId": 2,
        "Title": "Port Scan Detected", "Message": _alerts(api)[1]["message"],
        "Severity": "Critical", "Engine": "Anomaly", "Protocol": None,
        "SrcIp": SCANNER_IP, "SrcMac": SCANNER_MAC, "SrcName": "kali",
        "DstIp": TARGET_IP, "DstMac": None, "DstName": None, "Category": None,
        "Description": "Port Scan Detected", "Handled": False,
        "Sensor": f"d4iot {api.url}"}


def _more_alerts(api, tmp_path: Path, name: str, src: str) -> None:
    """Another scanner scans while the sensor runs: new alerts."""
    from labctl.sensor.pcap import CaptureFile

    pcap = write(tmp_path / name, syn_scan(60, src=src, smac="00:15:5d:00:00:77",
                                          t0=1_700_100_000.0))
    cap = CaptureFile(pcap)
    with api.sensor.lock:
        api.sensor.replay(cap, cap.data)


def test_follow_is_exactly_once_across_a_restart(cli_run, api, tmp_path: Path,
                                                  _isolated_state) -> None:
    out = tmp_path / "records.jsonl"
    r = export(cli_run, api, tmp_path, "--jsonl", str(out), "--follow", "--poll", "0.1",
               "--max-polls", "2")
    assert r.exit_code == 0, r
    assert "poll 2: 0 new" in r.stderr
    ids = [x["AlertId"] for x in map(json.loads, out.read_text().splitlines())
           if x["RecordType"] == "alert"]
    assert ids == [1, 2, 3]
    cursor_path = _isolated_state / "labs" / "alerts" / "traffic-export-cursor.json"
    assert cursor_path.stat().st_mode & 0o777 == 0o600
    cur = json.loads(cursor_path.read_text())["sinks"][f"jsonl:{out}"]
    assert cur["alert_id"] == 3
    # the exporter is stopped; the sensor sees more; a new run sends only what is new
    _more_alerts(api, tmp_path, "more.pcap", "172.16.1.77")
    total = _alerts(api)
    assert len(total) > 3
    r = export(cli_run, api, tmp_path, "--jsonl", str(out), "--follow", "--poll", "0.1",
               "--until-idle")
    assert r.exit_code == 0, r
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [x["AlertId"] for x in rows if x["RecordType"] == "alert"]
    assert ids == [a["id"] for a in total]  # each once, in order
    assert {x["SrcIp"] for x in rows if x["RecordType"] == "alert" and x["AlertId"] > 3} \
        == {"172.16.1.77"}
    # nothing new: nothing sent
    r = export(cli_run, api, tmp_path, "--jsonl", str(out), "--follow", "--until-idle")
    assert r.exit_code == 0 and len(out.read_text().splitlines()) == len(rows)
    # a one-shot export ignores the cursor and writes everything
    one = tmp_path / "all.jsonl"
    assert export(cli_run, api, tmp_path, "--jsonl", str(one)).exit_code == 0
    assert [x["AlertId"] for x in map(json.loads, one.read_text().splitlines())
            if x["RecordType"] == "alert"] == ids


def test_follow_needs_sensor_and_sink_checks(cli_run, api, tmp_path: Path) -> None:
    r = cli_run("traffic", "export", "--pcap", str(tmp_path / "x.pcap"), "--follow",
                "--jsonl", str(tmp_path / "o"))
    assert r.exit_code == 2 and "--follow" in r.stderr
    r = cli_run("traffic", "export", "--sensor", "--jsonl", str(tmp_path / "o"))
    assert r.exit_code == 2 and "playbook" in r.stderr
    r = export(cli_run, api, tmp_path, "--jsonl", str(tmp_path / "o"), "--syslog",
               "udp://127.0.0.1:9")
    assert r.exit_code == 2


def test_interrupt_stops_cleanly_with_the_cursor_saved(api, tmp_path: Path,
                                                        _isolated_state) -> None:
    out = tmp_path / "records.jsonl"
    pb = playbook(tmp_path, api.url)
    env = {**os.environ, "LABCTL_SENSOR_TOKEN": api.token,
           "LABCTL_STATE_DIR": str(_isolated_state)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "labctl", "traffic", "export", "--sensor", "-f", str(pb),
         "--jsonl", str(out), "--follow", "--poll", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        _more_alerts(api, tmp_path, "more.pcap", "172.16.1.78")
        n = len(_alerts(api))
        while time.monotonic() < deadline:
            rows = [json.loads(x) for x in out.read_text().splitlines()]
            if len([x for x in rows if x["RecordType"] == "alert"]) >= n:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    text = err.decode()
    assert "stopped; the cursor is saved" in text and "Traceback" not in text
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    ids = [x["AlertId"] for x in rows if x["RecordType"] == "alert"]
    assert ids == list(range(1, n + 1))
    cur = json.loads((_isolated_state / "labs" / "alerts" / "traffic-export-cursor.json")
                     .read_text())["sinks"][f"jsonl:{out}"]
    assert cur["alert_id"] == n


def test_pcap_export_with_the_sensors_alerts(cli_run, api, tmp_path: Path) -> None:
    from tests.helpers.traffic_pcaps import write_pcap
    from tests.test_traffic_report import frames

    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    out = tmp_path / "records.jsonl"
    pb = playbook(tmp_path, api.url)
    r = cli_run("traffic", "export", "--pcap", str(pcap), "--alerts", "-f", str(pb),
                "--jsonl", str(out), env={"LABCTL_SENSOR_TOKEN": api.token})
    assert r.exit_code == 0, r
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["RecordType"] for x in rows] == ["flow"] * 20 + ["alert"] * 3
    assert "20 flows and 3 alerts" in r.stderr
    r = cli_run("traffic", "export", "--sensor", "--alerts", "-f", str(pb), "--jsonl",
                str(out), env={"LABCTL_SENSOR_TOKEN": api.token})
    assert r.exit_code == 2 and "--alerts" in r.stderr
