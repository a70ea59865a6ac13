"""traffic report --sensor from the embedded sensor's flow store (its real HTTPS API, after
it replayed the crafted capture): the same conversations and per-device counters as the
report of the capture itself, names from the playbook, MACs from the sensor's inventory,
and the daily schedule found from the stored flows."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.app.traffic import traffic_report, traffic_sensor
from labctl.core.context import LabContext
from labctl.core.playbook import load_playbook
from labctl.core.secrets import Secret
from labctl.sensor.base import SensorTarget
from labctl.sensor.client import D4IoTDriver
from tests.helpers.sensor_api import running_api
from tests.helpers.traffic_pcaps import write_pcap
from tests.test_traffic_report import FEEDER, FEEDER_MAC, IRC, VACUUM, frames

pytestmark = pytest.mark.skipif(not hasattr(D4IoTDriver, "flows"),
                                reason="the sensor driver's flow API is not in this build")


def _flush(api) -> None:
    """What the sensor service's ticker does every second: dirty rows to the store."""
    with api.sensor.lock:
        rows = api.sensor.take_dirty()
    api.store.write_batch(*rows)


def _ctx(tmp_path: Path) -> LabContext:
    pb = tmp_path / "lab.yaml"
    pb.write_text("version: 1\nlab: home\nprovider: netns\ndevices:\n"
                  f"  - {{name: feeder1, ip: {FEEDER}}}\n")
    return LabContext(loaded=load_playbook(str(pb)))


def test_sensor_flows_give_the_capture_report(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    ctx = _ctx(tmp_path)
    with running_api(tmp_path / "state", pcap) as api:
        _flush(api)
        driver = D4IoTDriver(SensorTarget(api.url, token=Secret(api.token, "test")),
                             session=api.session())
        doc = traffic_sensor(ctx, driver=driver)
    ref = traffic_report([str(pcap)], ctx.loaded, lab="reference")
    src = doc["sources"]
    assert src["kind"] == "sensor-flows" and src["flows"] == 11 and src["missing"] == []
    assert src["packets"] == sum(c["packets"] for c in ref["conversations"])
    assert (src["first"], src["last"]) == (ref["sources"]["first"], ref["sources"]["last"])
    assert doc["conversations"] == ref["conversations"]
    devs = {d["ip"]: d for d in doc["devices"]}
    want = {d["ip"]: d for d in ref["devices"]}
    assert set(devs) == set(want)
    for ip, d in devs.items():
        for k in ("packets_out", "bytes_out", "packets_in", "bytes_in", "first_seen",
                  "last_seen", "name"):
            assert d[k] == want[ip][k], (ip, k)
        assert sorted(d["outbound"]) == sorted(want[ip]["outbound"])
        assert sum(d["hours"]) == sum(want[ip]["hours"]), ip
    f = devs[FEEDER]
    assert f["name"] == "feeder1" and f["mac"] == FEEDER_MAC  # the inventory's MAC
    assert f["vendor"] == want[FEEDER]["vendor"]
    assert f["hours"] == want[FEEDER]["hours"]  # short flows: their first minute is exact
    assert [p["text"] for p in f["periodicity"]] == \
        [f"to {IRC}:6667 daily at about 01:00, 09:00 and 18:00"]
    assert {x["flag"] for x in f["flags"]} == {x["flag"] for x in want[FEEDER]["flags"]}
    peers = {p["ip"]: p for p in f["peers"]}
    assert peers[IRC]["ports"] == ["tcp/6667"] and peers[IRC]["scope"] == "external"
    assert peers[IRC]["name"] is None  # the sensor keeps no DNS answers
    assert want[FEEDER]["peers"][0]["name"] == "irc.example.net"
    # the vacuum's one long UDP flow: its counters, but its minutes aged out of the
    # sensor's window, so no "every 300 s" (the capture's report has it)
    assert devs[VACUUM]["periodicity"] == [] and want[VACUUM]["periodicity"]


def test_flows_survive_a_sensor_restart(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    ctx = _ctx(tmp_path)
    with running_api(tmp_path / "state", pcap) as api:
        _flush(api)
    with running_api(tmp_path / "state") as api:  # the same store, no new traffic
        driver = D4IoTDriver(SensorTarget(api.url, token=Secret(api.token, "test")),
                             session=api.session())
        doc = traffic_sensor(ctx, driver=driver)
    ref = traffic_report([str(pcap)], ctx.loaded, lab="reference")
    assert doc["sources"]["kind"] == "sensor-flows"
    assert doc["conversations"] == ref["conversations"]
