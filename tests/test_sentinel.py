"""The Sentinel alert source against a local HTTPS fake of the Log Analytics query API,
through the real azure-monitor-query client: documented shapes, a partial error, duplicates
on VendorOriginalId counted once, a bad token refused (exit 5)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("azure.monitor.query")

from azure.core.credentials import AccessToken  # noqa: E402

from labctl.core.errors import AuthError, ExitCode  # noqa: E402
from labctl.sensor.sentinel import SentinelSource  # noqa: E402
from tests.helpers.fake_log_analytics import FakeWorkspace, serve  # noqa: E402

WS = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


class FakeCredential:
    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kw):
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def workspace():
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    ws = FakeWorkspace(WS)
    srv = serve(ws, ctx)
    with ca.cert_pem.tempfile() as ca_path:
        yield ws, f"https://127.0.0.1:{srv.server_address[1]}", ca_path
    srv.stop()


def _source(url, ca_path, token="fake-bearer-token"):
    cred = FakeCredential(token)
    return SentinelSource(WS, credential=cred, endpoint=url, connection_verify=ca_path), cred


def test_alerts_in_the_documented_shape_deduplicated_on_vendor_original_id(workspace):
    ws, url, ca = workspace
    ws.add("1-1796184000000", "Port Scan Detected", start="2026-12-02T04:00:00Z",
           src="172.16.1.50", dst="172.16.1.21")
    # the same alert again, updated later (Sentinel writes one row per update)
    ws.add("1-1796184000000", "Port Scan Detected", start="2026-12-02T04:00:00Z",
           generated="2026-12-02T04:05:00Z", src="172.16.1.50", dst="172.16.1.21")
    ws.add("2", "Illegal Connection Attempt on Port 0", severity="Low",
           component="PROTOCOL_VIOLATION", start="2026-12-02T04:01:00Z", src="172.16.1.50")
    src, cred = _source(url, ca)
    alerts = src.alerts(since=0)
    assert len(alerts) == 2
    by_title = {a.title: a for a in alerts}
    ps = by_title["Port Scan Detected"]
    assert ps.engine == "Anomaly" and ps.severity == "Critical"
    assert ps.source_address == "172.16.1.50" and ps.destination_address == "172.16.1.21"
    assert ps.time == 1796184000000
    p0 = by_title["Illegal Connection Attempt on Port 0"]
    assert p0.engine == "Protocol Violation" and p0.severity == "Minor"
    body = ws.requests[-1]["body"]
    assert 'ProviderName == "IoTSecurity"' in body["query"] and "timespan" in body
    assert cred.scopes and cred.scopes[0] == ("https://api.loganalytics.io/.default",)
    assert src.name.startswith("sentinel")


def test_partial_error_keeps_the_rows_and_the_error(workspace):
    ws, url, ca = workspace
    ws.add("5", "Address Scan Detected", start="2026-12-02T04:00:00Z", src="172.16.1.50")
    ws.partial_error = True
    src, _ = _source(url, ca)
    alerts = src.alerts(since=0)
    assert [a.title for a in alerts] == ["Address Scan Detected"]
    assert src.last_error and "errors" in src.last_error


def test_since_filters_on_the_first_detection(workspace):
    ws, url, ca = workspace
    ws.add("7", "Port Scan Detected", start="2026-12-02T03:00:00Z")
    src, _ = _source(url, ca)
    assert src.alerts(since=1796184000000) == []


def test_a_bad_token_is_an_auth_error_exit_5(workspace):
    _, url, ca = workspace
    src, _ = _source(url, ca, token="wrong")
    with pytest.raises(AuthError) as ei:
        src.alerts(since=0)
    assert ei.value.exit_code == ExitCode.UNREACHABLE
