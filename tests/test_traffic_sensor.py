"""traffic report --sensor: the coarse view from a sensor's devices and connections, here the
embedded sensor's real HTTPS API after it replayed the crafted capture."""

from __future__ import annotations

from pathlib import Path

from labctl.app.traffic import traffic_sensor
from labctl.core.context import LabContext
from labctl.core.playbook import load_playbook
from labctl.core.secrets import Secret
from labctl.sensor.base import SensorTarget
from labctl.sensor.client import D4IoTDriver
from tests.helpers.sensor_api import running_api
from tests.helpers.traffic_pcaps import write_pcap
from tests.test_traffic_report import FEEDER, FEEDER_MAC, IRC, frames


def test_sensor_mode_shows_the_feeder_on_6667(tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    pb = tmp_path / "lab.yaml"
    pb.write_text("version: 1\nlab: home\nprovider: netns\ndevices:\n"
                  f"  - {{name: feeder1, ip: {FEEDER}}}\n")
    ctx = LabContext(loaded=load_playbook(str(pb)))
    with running_api(tmp_path / "state", pcap) as api:
        driver = D4IoTDriver(SensorTarget(api.url, token=Secret(api.token, "test")),
                             session=api.session())
        doc = traffic_sensor(ctx, driver=driver)
    assert doc["sources"]["kind"] == "sensor"
    assert "packets and bytes in each direction" in doc["sources"]["missing"]
    devs = {d["ip"]: d for d in doc["devices"]}
    f = devs[FEEDER]
    assert f["name"] == "feeder1" and f["mac"] == FEEDER_MAC
    assert f["packets_out"] is None and f["hours"] is None
    peers = {p["ip"]: p for p in f["peers"]}
    assert "6667" in peers[IRC]["ports"] and peers[IRC]["scope"] == "external"
    flags = {x["flag"] for x in f["flags"]}
    assert {"irc-like", "internet"} <= flags
    assert IRC in f["outbound"]
    pairs = {(c["a"], c["b"]): c for c in doc["conversations"]}
    assert 6667 in pairs[(FEEDER, IRC)]["ports"]
    assert pairs[(FEEDER, IRC)]["packets"] is None
