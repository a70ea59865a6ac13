"""traffic export --sentinel: LogsIngestionClient against a local HTTPS fake of the
ingestion endpoint with a fake credential: payloads, batching under the size limit, retry
on 429 and 5xx without duplicates."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from labctl.app.traffic import export_sentinel
from labctl.core.errors import ApiError, UsageError
from labctl.core.playbook import load_playbook
from tests.helpers.traffic_ingestion import FakeCredential, FakeIngestion, serve
from tests.helpers.traffic_pcaps import T0, tcp, write_pcap
from tests.helpers.traffic_rsyslog import make_certs
from tests.test_traffic_report import CLOUD, VACUUM, frames

DCR = "dcr-" + "0123456789abcdef" * 2
STREAM = "Custom-LabctlFlows_CL"


@pytest.fixture
def ingestion(tmp_path: Path):
    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = make_certs(certs)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    fake = FakeIngestion(DCR, STREAM)
    srv = serve(fake, ctx)
    try:
        yield fake, f"https://127.0.0.1:{srv.server_address[1]}", str(ca)
    finally:
        srv.stop()


def _playbook(tmp_path: Path, endpoint: str) -> object:
    p = tmp_path / "lab.yaml"
    p.write_text(f"version: 1\nlab: home\nprovider: netns\nsentinel:\n"
                 f"  data_collection_endpoint: {endpoint}\n  dcr_immutable_id: {DCR}\n")
    return load_playbook(str(p))


def test_payloads(ingestion, tmp_path: Path) -> None:
    fake, endpoint, ca = ingestion
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    cred = FakeCredential(fake.token)
    n = export_sentinel([str(pcap)], _playbook(tmp_path, endpoint), credential=cred,
                        verify=ca)
    assert n == 20 and len(fake.accepted) == 20 and len(fake.requests) == 1
    assert cred.calls and cred.calls[0] == ("https://monitor.azure.com/.default",)
    assert fake.requests[0]["auth"] == f"Bearer {fake.token}"
    (vac,) = [r for r in fake.accepted if r["SrcIp"] == VACUUM]
    assert vac == {"TimeGenerated": "2023-11-15T02:05:00.000Z",
                   "FirstSeen": "2023-11-15T00:10:00.000Z",
                   "LastSeen": "2023-11-15T02:05:00.000Z", "Vlan": 0, "SrcIp": VACUUM,
                   "DstIp": CLOUD, "SrcMac": "00:15:5d:00:00:20", "Protocol": "UDP",
                   "SrcPort": 50000, "DstPort": 8443, "Packets": 24, "Bytes": 2208,
                   "SrcName": None, "DstName": None}


def _many(tmp_path: Path, n: int) -> Path:
    fr = [(T0 + i * 0.001, tcp("172.16.1.10", "203.0.113.10", 1024 + i % 60000, 443, "S",
                               smac="b8:27:eb:00:00:0a", dmac="02:00:00:00:00:01"))
          for i in range(n)]
    return write_pcap(tmp_path / "many.pcap", fr)


def test_batches_stay_under_the_limit_and_retries_do_not_duplicate(ingestion,
                                                                   tmp_path: Path) -> None:
    fake, endpoint, ca = ingestion
    pcap = _many(tmp_path, 12_000)  # 12000 flows, about 3.6 MB of JSON
    fake.faults = [429, 503, 500]  # the first three requests fail
    n = export_sentinel([str(pcap)], _playbook(tmp_path, endpoint),
                        credential=FakeCredential(fake.token), verify=ca)
    assert n == 12_000
    sizes = [r["size"] for r in fake.requests]
    assert all(s <= 1_000_000 for s in sizes)
    good = len(fake.requests) - 3
    assert good == -(-sum(sizes[3:]) // 1_000_000)  # as few requests as the limit allows
    assert good >= 3
    keys = [(r["SrcPort"], r["FirstSeen"]) for r in fake.accepted]
    assert len(keys) == 12_000 and len(set(keys)) == 12_000  # each record exactly once


def test_a_chunk_that_keeps_failing_is_reported(ingestion, tmp_path: Path) -> None:
    fake, endpoint, ca = ingestion
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    fake.faults = [503] * 50
    with pytest.raises(ApiError) as e:
        export_sentinel([str(pcap)], _playbook(tmp_path, endpoint),
                        credential=FakeCredential(fake.token), verify=ca)
    assert "20 of 20 records were not accepted" in str(e.value)
    assert fake.accepted == [] and len(fake.requests) == 6  # first try + 5 retries


def test_untrusted_certificate_and_missing_section(ingestion, tmp_path: Path) -> None:
    fake, endpoint, _ = ingestion
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    with pytest.raises(Exception) as e:
        export_sentinel([str(pcap)], _playbook(tmp_path, endpoint),
                        credential=FakeCredential(fake.token))
    assert "certificate" in str(e.value).lower() and fake.accepted == []
    p = tmp_path / "bare.yaml"
    p.write_text("version: 1\nlab: home\nprovider: netns\n")
    with pytest.raises(UsageError, match="sentinel.data_collection_endpoint"):
        export_sentinel([str(pcap)], load_playbook(str(p)), credential=FakeCredential("x"))


def test_sensor_alerts_go_to_the_alert_stream(tmp_path: Path) -> None:
    """--sensor --sentinel: alerts in their own stream of the same rule, flows in theirs."""
    from labctl.app.traffic import DEFAULT_ALERT_STREAM, SinkSpec, export_traffic
    from labctl.core.context import LabContext
    from labctl.core.secrets import Secret
    from labctl.sensor.base import SensorTarget
    from labctl.sensor.client import D4IoTDriver
    from tests.helpers.sensor_api import running_api
    from tests.helpers.sensor_pcaps import SCANNER_IP, syn_scan, write

    certs = tmp_path / "certs"
    certs.mkdir()
    ca, cert, key = make_certs(certs)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    fake = FakeIngestion(DCR, STREAM, other_streams=(DEFAULT_ALERT_STREAM,))
    srv = serve(fake, ctx)
    try:
        endpoint = f"https://127.0.0.1:{srv.server_address[1]}"
        loaded = _playbook(tmp_path, endpoint)
        pcap = write(tmp_path / "scan.pcap", syn_scan(60))
        with running_api(tmp_path / "sensor", pcap, learning=False) as api:
            driver = D4IoTDriver(SensorTarget(api.url, token=Secret(api.token, "test")),
                                 session=api.session())
            got = export_traffic(SinkSpec(sentinel=True), loaded,  # type: ignore[arg-type]
                                 ctx=LabContext(loaded=loaded), sensor=True,  # type: ignore[arg-type]
                                 driver=driver, credential=FakeCredential(fake.token),
                                 verify=str(ca))
    finally:
        srv.stop()
    assert got["alerts"] == 3
    alerts = fake.by_stream[DEFAULT_ALERT_STREAM]
    assert [a["AlertId"] for a in alerts] == [1, 2, 3]
    scan = alerts[1]
    assert scan["Title"] == "Port Scan Detected" and scan["SrcIp"] == SCANNER_IP
    assert scan["TimeGenerated"] == "2023-11-14T22:13:20.240Z"
    assert "RecordType" not in scan  # the stream says what a record is
    # flows, when the sensor has a flow API, went to the flow stream only
    assert all("FlowId" in f for f in fake.by_stream.get(STREAM, []))
    assert got["flows"] == len(fake.by_stream.get(STREAM, []))
