"""GET /api/labctl/flows over real HTTPS: token, cursor, paging, bad parameters, a third-party
client (curl), the labctl client and driver, and a real-sensor stand-in without the API."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from labctl.core.errors import UnsupportedError
from labctl.core.secrets import Secret
from labctl.sensor.base import Flow, FlowSource, SensorTarget
from labctl.sensor.client import D4IoTClient, D4IoTDriver
from labctl.transport.certs import fingerprint
from tests.helpers.sensor_api import running_api
from tests.helpers.sensor_pcaps import T0, tcp_packet, udp_packet, write


def _pcap(tmp_path):
    pk = [tcp_packet("172.16.1.20", "172.16.1.30", 80, sport=51000 + i, flags="S", t=T0 + i)
          for i in range(5)]
    pk.append(udp_packet("172.16.1.20", "172.16.1.30", 53, t=T0 + 10))
    return write(tmp_path / "flows.pcap", pk)


def _flush(api) -> None:
    with api.sensor.lock:
        rows = api.sensor.take_dirty()
    api.store.write_batch(*rows)


def test_flows_endpoint_cursor_token_and_bad_input(tmp_path):
    pytest.importorskip("scapy")
    with running_api(tmp_path / "state", _pcap(tmp_path)) as api:
        assert api.get("/api/labctl/flows").json() == []  # nothing flushed yet
        _flush(api)
        r = api.get("/api/labctl/flows")
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        flows = r.json()
        assert [f["seq"] for f in flows] == [1, 2, 3, 4, 5, 6]
        assert {f["dport"] for f in flows} == {80, 53}
        f0 = flows[0]
        assert set(f0) >= {"id", "seq", "vlan", "proto", "src", "sport", "dst", "dport",
                           "packets_out", "bytes_out", "packets_in", "bytes_in", "first",
                           "last", "minutes"}
        assert (f0["src"], f0["sport"], f0["packets_out"], f0["first"]) == \
            ("172.16.1.20", 51000, 1, int(T0 * 1000))
        assert api.get("/api/labctl/flows", after_seq=4).json() == flows[4:]
        assert api.get("/api/labctl/flows", after_seq=1, limit=2).json() == flows[1:3]
        assert api.get("/api/labctl/flows", after_seq=6).json() == []
        # token required, like /api/labctl/status
        assert api.get("/api/labctl/flows", token=None).status_code == 401
        assert api.get("/api/labctl/flows", token="wrong").status_code == 401
        for params, name in [({"after_seq": "x"}, "after_seq"), ({"after_seq": "-1"},
                             "after_seq"), ({"limit": "0"}, "limit"),
                             ({"limit": "10001"}, "limit"), ({"limit": "9" * 40}, "limit")]:
            bad = api.get("/api/labctl/flows", **params)
            assert bad.status_code == 400 and name in bad.json()["error"], params
        twice = api.session().get(api.url + "/api/labctl/flows?limit=1&limit=2",
                                  headers={"Authorization": api.token}, timeout=10)
        assert twice.status_code == 400 and "limit" in twice.json()["error"]


def test_curl_reads_the_flows_as_a_third_party_client(tmp_path):
    pytest.importorskip("scapy")
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    with running_api(tmp_path / "state", _pcap(tmp_path)) as api:
        _flush(api)
        out = subprocess.run(
            ["curl", "-sS", "--fail", "--cacert", str(api.cert), "--noproxy", "*",
             "-H", f"Authorization: {api.token}",
             f"{api.url}/api/labctl/flows?after_seq=2&limit=3"],
            capture_output=True, text=True, timeout=30, check=True)
        doc = json.loads(out.stdout)
        assert [f["seq"] for f in doc] == [3, 4, 5]
        assert all(f["src"] == "172.16.1.20" and f["proto"] == 6 for f in doc)


def test_client_and_driver_flows(tmp_path):
    pytest.importorskip("scapy")
    with running_api(tmp_path / "state", _pcap(tmp_path)) as api:
        _flush(api)
        target = SensorTarget(base_url=api.url, token=Secret(api.token),
                              fingerprint=fingerprint(api.cert))
        driver = D4IoTDriver(target)
        assert isinstance(driver, FlowSource)
        flows = driver.flows()
        assert all(isinstance(f, Flow) for f in flows) and len(flows) == 6
        udp = [f for f in flows if f.proto == 17]
        assert len(udp) == 1 and udp[0].dport == 53 and udp[0].packets_out == 1
        assert udp[0].minutes == {int((T0 + 10) // 60): 1}
        assert [f.seq for f in driver.flows(after_seq=flows[-2].seq)] == [flows[-1].seq]
        assert len(driver.flows(limit=2)) == 2
        # the raw client: the same objects as JSON
        raw = D4IoTClient(api.url, Secret(api.token), session=api.session())
        assert [d["seq"] for d in raw.flows(after_seq=3, limit=10)] == [4, 5, 6]


def test_a_real_sensor_without_the_flow_api_is_unsupported(tmp_path):
    from tests.helpers import fake_d4iot

    srv, url, fp = fake_d4iot.serve(fake_d4iot.FakeSensor(), tmp_path / "fake")
    try:
        driver = D4IoTDriver(SensorTarget(base_url=url, token=Secret(fake_d4iot.TOKEN),
                                          fingerprint=fp))
        with pytest.raises(UnsupportedError) as e:
            driver.flows()
        assert "no flow API" in str(e.value) and e.value.hint
        assert "devices and connections" in e.value.hint
    finally:
        srv.stop()
