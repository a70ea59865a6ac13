"""--follow of the embedded sensor's flows: the cursor is the highest flow seq sent; a
restart sends each (FlowId, FlowSeq) once, and the newest record of each flow carries the
store's final counters. Through the CLI, with the sensor's real HTTPS API and store, and
with a real rsyslogd as the receiver."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from labctl.sensor.client import D4IoTDriver
from tests.helpers.sensor_api import running_api
from tests.helpers.traffic_pcaps import T0, tcp, write_pcap
from tests.test_traffic_report import FEEDER, FEEDER_MAC, GW_MAC, IRC, frames

pytestmark = pytest.mark.skipif(not hasattr(D4IoTDriver, "flows"),
                                reason="the sensor driver's flow API is not in this build")


def playbook(tmp_path: Path, url: str) -> Path:
    p = tmp_path / "lab.yaml"
    p.write_text(f"""lab: follow
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
devices:
  - {{name: feeder1, ip: {FEEDER}}}
sensor:
  kind: d4iot
  url: {url}
  token: {{env: LABCTL_SENSOR_TOKEN}}
""")
    return p


def _flush(api) -> None:
    with api.sensor.lock:
        rows = api.sensor.take_dirty()
    api.store.write_batch(*rows)


def _replay(api, pcap: Path) -> None:
    from labctl.sensor.pcap import CaptureFile

    cap = CaptureFile(pcap)
    with api.sensor.lock:
        api.sensor.replay(cap, cap.data)
    _flush(api)


def _more(tmp_path: Path) -> Path:
    """Later traffic: a new IRC connection and a telnet attempt."""
    t = T0 + 4 * 86400
    fr = [(t + i, tcp(FEEDER, IRC, 45000, 6667, "S" if i == 0 else "A", payload=b"x" * 10,
                      smac=FEEDER_MAC, dmac=GW_MAC, vlan=52)) for i in range(5)]
    fr += [(t + 10, tcp(FEEDER, "198.51.100.99", 42000, 23, "S", smac=FEEDER_MAC,
                        dmac=GW_MAC, vlan=52))]
    return write_pcap(tmp_path / "more.pcap", fr)


def _records(path: Path) -> list[dict]:
    return [x for x in map(json.loads, path.read_text().splitlines())
            if x["RecordType"] == "flow"]


def test_follow_flows_exactly_once(cli_run, tmp_path: Path, _isolated_state) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    out = tmp_path / "records.jsonl"
    with running_api(tmp_path / "sensor", pcap) as api:
        _flush(api)
        pb = playbook(tmp_path, api.url)
        env = {"LABCTL_SENSOR_TOKEN": api.token}

        def follow(*extra: str):
            r = cli_run("traffic", "export", "--sensor", "-f", str(pb), "--jsonl", str(out),
                        "--follow", "--poll", "0.1", *extra, env=env)
            assert r.exit_code == 0, r
            return r

        follow("--until-idle")
        first = _records(out)
        assert len(first) == 11 and [r["FlowSeq"] for r in first] == sorted(
            r["FlowSeq"] for r in first)
        cur = json.loads((_isolated_state / "labs" / "follow" /
                          "traffic-export-cursor.json").read_text())["sinks"][f"jsonl:{out}"]
        assert cur["flow_seq"] == max(r["FlowSeq"] for r in first)
        irc = [r for r in first if r["DstPort"] == 6667]
        assert len(irc) == 9 and all(r["Packets"] == 6 and r["PacketsIn"] == 6 for r in irc)
        assert all(r["SrcName"] == "feeder1" or r["SrcIp"] != FEEDER for r in first)
        # stopped; the sensor sees more; restarted: only the new records
        _replay(api, _more(tmp_path))
        follow("--until-idle")
        follow("--max-polls", "1")  # nothing new: nothing sent
        rows = _records(out)
        keys = [(r["FlowId"], r["FlowSeq"]) for r in rows]
        assert len(keys) == len(set(keys))  # each record once
        new = rows[len(first):]
        assert {(r["DstIp"], r["DstPort"]) for r in new} == {(IRC, 6667),
                                                               ("198.51.100.99", 23)}
        assert min(r["FlowSeq"] for r in new) > cur["flow_seq"]
        # the newest record of each flow id is the store's final state
        latest: dict[int, dict] = {}
        for r in rows:
            latest[r["FlowId"]] = r
        from labctl.core.secrets import Secret
        from labctl.sensor.base import SensorTarget

        drv = D4IoTDriver(SensorTarget(api.url, token=Secret(api.token, "t")),
                          session=api.session())
        store = {f.id: f for f in drv.flows()}
        assert set(latest) == set(store)
        for fid, r in latest.items():
            f = store[fid]
            assert (r["Packets"], r["Bytes"], r["PacketsIn"], r["BytesIn"], r["FlowSeq"]) \
                == (f.packets_out, f.bytes_out, f.packets_in, f.bytes_in, f.seq)


@pytest.mark.skipif(not (shutil.which("rsyslogd") or Path("/usr/sbin/rsyslogd").exists()),
                    reason="needs rsyslog")
def test_follow_flows_to_rsyslog_over_tls(cli_run, tmp_path: Path) -> None:
    from tests.helpers.traffic_rsyslog import Rsyslog

    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    (tmp_path / "rs").mkdir()
    with Rsyslog(tmp_path / "rs") as rs, running_api(tmp_path / "sensor", pcap) as api:
        _flush(api)
        pb = playbook(tmp_path, api.url)
        env = {"LABCTL_SENSOR_TOKEN": api.token}
        url = f"tls://127.0.0.1:{rs.tls}"

        def follow() -> None:
            r = cli_run("traffic", "export", "--sensor", "-f", str(pb), "--syslog", url,
                        "--follow", "--poll", "0.1", "--until-idle", env=env)
            assert r.exit_code == 0, r

        follow()  # pins the collector's certificate on first use
        n_alerts = len(api.get("/api/v2/alerts").json())
        assert len(rs.received(11 + n_alerts)) == 11 + n_alerts
        _replay(api, _more(tmp_path))
        n_alerts = len(api.get("/api/v2/alerts").json())
        follow()
        got = rs.received(13 + n_alerts)
        assert len(got) == 13 + n_alerts
        flows = [g for g in got if g["msgid"] == "flow"]
        sd = [dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', g["structured-data"]))
              for g in flows]
        assert len(sd) == 13
        assert {s["DstPort"] for s in sd[11:]} == {"6667", "23"}
        assert len({(s["FlowId"], s["FlowSeq"]) for s in sd}) == 13
        irc = [s for s in sd if s["DstPort"] == "6667" and s["Packets"] == "6"]
        assert len(irc) == 9 and {s["PacketsIn"] for s in irc} == {"6"}
        alerts = [g for g in got if g["msgid"] == "alert"]
        ids = [re.search(r'AlertId="(\d+)"', a["structured-data"]).group(1) for a in alerts]
        assert sorted(ids, key=int) == [str(i) for i in range(1, n_alerts + 1)]
