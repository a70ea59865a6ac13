"""API contract of the embedded sensor over real HTTPS on 127.0.0.1 (requests, certificate
verified against the sensor's own self-signed cert): token required, the documented shapes,
time filters, v1 vs v2 fields, minutesTimeFrame, authentication and forced password change;
and labctl's D4IoTClient against it."""

from __future__ import annotations

import time

import pytest
import requests

from labctl.core.errors import ApiError, AuthError
from labctl.core.secrets import Secret
from labctl.sensor.client import D4IoTClient, PasswordChangeRequired, normalize_keys
from tests.helpers.sensor_api import running_api
from tests.helpers.sensor_pcaps import (
    SCANNER_IP,
    SCANNER_MAC,
    T0,
    address_scan,
    syn_scan,
    tcp_packet,
    write,
)

pytest.importorskip("scapy")

V1_KEYS = {"id", "time", "title", "message", "severity", "engine", "sourceDevice",
           "destinationDevice", "additionalInformation"}
V2_EXTRA = {"sourceDeviceAddress", "destinationDeviceAddress", "remediationSteps"}
DEVICE_KEYS = {"id", "name", "type", "ipAddresses", "macAddresses", "vendor", "operatingSystem",
               "engineeringStation", "scanner", "authorized", "protocols", "firmware",
               "hasDynamicAddress"}


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    d = tmp_path_factory.mktemp("pcap")
    pk = syn_scan(30) + address_scan(60, t0=T0 + 300) + [
        tcp_packet("172.16.1.20", "172.16.1.30", 6667, flags="PA", t=T0 + 600),
        tcp_packet("172.16.1.30", "172.16.1.20", 51000, sport=6667, flags="SA", t=T0 + 601,
                     smac="dc:a6:32:00:00:30")]
    return write(d / "api.pcap", pk)


@pytest.fixture
def api(tmp_path, pcap):
    with running_api(tmp_path / "state", pcap, learning=False) as a:
        yield a


def test_token_required(api):
    for path in ("/api/v1/alerts", "/api/v2/alerts", "/api/v1/devices",
                 "/api/v1/devices/connections", "/api/v1/events"):
        r = api.get(path, token=None)
        assert r.status_code == 401 and "error" in r.json(), path
        assert api.get(path, token="wrong").status_code == 401
        assert api.get(path).status_code == 200, path
    r = api.get("/api/v1/alerts", token="Bearer " + api.token)
    assert r.status_code == 401 and "Bearer" in r.json()["error"]


def test_https_only_and_cert_verifies(api):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(api.url.replace("https", "http") + "/api/v1/alerts", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(api.url + "/api/v1/alerts", timeout=5)  # system CAs: self-signed refused


def test_alert_shapes_v1_and_v2(api):
    v1 = api.get("/api/v1/alerts").json()
    v2 = api.get("/api/v2/alerts").json()
    assert len(v1) == len(v2) >= 3
    for a in v1:
        assert set(a) == V1_KEYS
        assert isinstance(a["id"], int) and isinstance(a["time"], int)
        assert a["severity"] in ("Warning", "Minor", "Major", "Critical")
        assert a["engine"] in ("Protocol Violation", "Policy Violation", "Malware", "Anomaly",
                               "Operational")
        info = a["additionalInformation"]
        assert info is None or set(info) == {"description", "information"}
    for a in v2:
        assert set(a) == V1_KEYS | V2_EXTRA
        assert isinstance(a["remediationSteps"], list)
    port = next(a for a in v2 if a["title"] == "Port Scan Detected")
    assert port["sourceDeviceAddress"] == SCANNER_IP
    assert port["time"] == int((T0 + 24 * 0.01) * 1000)
    addr = next(a for a in v2 if a["title"] == "Address Scan Detected")
    assert addr["destinationDeviceAddress"] is None and "Scanned subnet" in addr["message"]


def test_alert_time_filters_and_state(api):
    all_ = api.get("/api/v1/alerts").json()
    cut = int((T0 + 100) * 1000)
    late = api.get("/api/v1/alerts", fromTime=cut).json()
    early = api.get("/api/v1/alerts", toTime=cut).json()
    assert late and early and len(late) + len(early) == len(all_)
    assert all(a["time"] >= cut for a in late) and all(a["time"] <= cut for a in early)
    assert api.get("/api/v1/alerts", fromTime=cut, toTime=cut + 1).json() == []
    assert len(api.get("/api/v1/alerts", state="unhandled").json()) == len(all_)
    assert api.get("/api/v1/alerts", state="handled").json() == []
    # "type" values other than the documented two are ignored
    assert len(api.get("/api/v1/alerts", type="whatever").json()) == len(all_)
    new = api.get("/api/v1/alerts", type="unexpected new devices").json()
    assert new and all(a["title"] == "New Asset Detected" for a in new)


@pytest.mark.parametrize("params,needle", [
    ({"fromTime": "yesterday"}, "fromTime"),
    ({"toTime": "1.5"}, "toTime"),
    ({"state": "open"}, "state"),
    ({"fromTime": "20", "toTime": "10"}, "later"),
])
def test_bad_alert_queries_are_clear_400s(api, params, needle):
    r = api.get("/api/v1/alerts", **params)
    assert r.status_code == 400
    assert needle in r.json()["error"]


def test_devices_shape_and_authorized_filter(api):
    devs = api.get("/api/v1/devices").json()
    assert devs and all(DEVICE_KEYS <= set(d) for d in devs)
    scanner = next(d for d in devs if d["ipAddresses"] == [SCANNER_IP])
    assert scanner["macAddresses"] == [SCANNER_MAC] and scanner["vendor"] == "Microsoft"
    assert scanner["scanner"] is False and scanner["authorized"] is False  # not learning
    assert api.get("/api/v1/devices", authorized="true").json() == []
    assert len(api.get("/api/v1/devices", authorized="false").json()) == len(devs)
    assert api.get("/api/v1/devices", authorized="maybe").status_code == 400
    assert api.get("/api/v1/devices/").status_code == 200  # the doc also writes it with /


def test_connections_and_filters(api):
    conns = api.get("/api/v1/devices/connections").json()
    assert len(conns) == 1
    c = conns[0]
    assert {"firstDeviceId", "secondDeviceId", "lastSeen", "discovered", "ports",
            "protocols"} <= set(c)
    assert c["ports"] == [6667] and {"name": "IRC", "commands": []} in c["protocols"]
    disc = c["discovered"]
    assert api.get("/api/v1/devices/connections", discoveredAfter=disc - 1).json() == conns
    assert api.get("/api/v1/devices/connections", discoveredAfter=disc).json() == []
    assert api.get("/api/v1/devices/connections", discoveredBefore=disc + 1).json() == conns
    assert api.get("/api/v1/devices/connections", lastActiveInMinutes=5).json() == []  # 2023
    dev = c["firstDeviceId"]
    assert api.get(f"/api/v1/devices/{dev}/connections").json() == conns
    assert api.get("/api/v1/devices/9999/connections").status_code == 404
    assert api.get("/api/v1/devices/connections", lastActiveInMinutes="x").status_code == 400


def test_events_minutes_time_frame(tmp_path):
    with running_api(tmp_path / "ev", None, learning=False) as api:
        now = time.time()
        with api.sensor.lock:
            for i in range(150):
                api.sensor.process(P_tuple(f"172.16.2.{i}"), now - 7200 + i)  # 2 h ago
            api.sensor.process(P_tuple("172.16.3.1"), now - 30)
        evs = api.get("/api/v1/events", minutesTimeFrame=10).json()
        assert evs and {"timestamp", "type", "title", "severity", "owner", "content"} == set(
            evs[0])
        assert all(e["timestamp"] >= (now - 600) * 1000 for e in evs)
        assert any("172.16.3.1" in e["content"] for e in evs)
        wide = api.get("/api/v1/events", minutesTimeFrame=4320).json()
        assert len(wide) == 100  # the latest 100, newest first
        assert wide[0]["timestamp"] >= wide[-1]["timestamp"]
        only = api.get("/api/v1/events", minutesTimeFrame=4320, type="DEVICE_CREATE").json()
        assert only and all(e["type"] == "DEVICE_CREATE" for e in only)
        # above 4320 is treated as 4320, with no error (sensor-alert-apis.md)
        over = api.get("/api/v1/events", minutesTimeFrame=4321)
        assert over.status_code == 200 and over.json() == wide
        assert api.get("/api/v1/events", minutesTimeFrame="9" * 30).status_code == 400
        assert api.get("/api/v1/events", minutesTimeFrame="soon").status_code == 400


def P_tuple(ip: str):
    from labctl.sensor.parse import K_IPV4, ip_bytes

    return (0, b"\x00\x15\x5d\x00\x00\x01", b"\x00\x15\x5d\x00\x00\x02", K_IPV4, ip_bytes(ip),
            ip_bytes("172.16.1.1"), 17, 5000, 53, 0)


def test_unknown_endpoint_is_404_json(api):
    r = api.get("/api/v1/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]


def test_first_sign_in_forced_password_change(api):
    s = api.session()
    url = api.url + "/api/external/authentication"
    r = s.post(url + "/validation", json={"username": "admin", "password": "admin"})
    assert r.status_code == 403 and "changed" in r.json()["error"]["userDisplayErrorMessage"]
    r = s.post(url + "/validation", json={"username": "admin", "password": "nope"})
    assert r.status_code == 401 and "userDisplayErrorMessage" in r.json()["error"]
    r = s.post(url + "/set_password", json={"username": "admin", "password": "admin",
                                            "new_password": "short"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["userDisplayErrorMessage"] == \
        "Password does not match security policy"
    assert "8 characters" in err["internalSystemErrorMessage"]
    r = s.post(url + "/set_password", json={"username": "admin", "password": "admin",
                                            "new_password": "N3w-Passw0rd!"})
    assert r.status_code == 200
    r = s.post(url + "/validation", json={"username": "admin", "password": "N3w-Passw0rd!"})
    assert r.status_code == 200 and r.json() == {"msg": "Authentication succeeded."}
    assert s.post(url + "/validation", json={"username": "admin", "password": "admin"}
                  ).status_code == 401
    r = s.post(url + "/validation", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = s.post(url + "/validation", json={"username": "admin"})
    assert r.status_code == 400 and "password" in r.json()["error"]


def test_client_against_the_embedded_sensor(api):
    c = D4IoTClient(api.url, Secret(api.token), session=api.session())
    v1 = c.alerts()
    v2 = c.alerts(version=2, from_time=int((T0 + 100) * 1000))
    assert v1 and "sourceDeviceAddress" not in v1[0]
    assert v2 and all(a["time"] >= (T0 + 100) * 1000 for a in v2)
    assert "sourceDeviceAddress" in v2[0]
    assert any(d["vendor"] == "Microsoft" for d in c.devices())
    assert c.connections()[0]["ports"] == [6667]
    assert isinstance(c.events(4320), list)
    with pytest.raises(PasswordChangeRequired):
        c.validate_credentials("admin", Secret("admin"))
    assert c.validate_credentials("admin", "wrong") is False
    with pytest.raises(ApiError, match="8 characters"):
        c.set_password("admin", Secret("admin"), Secret("weak"))
    c.set_password("admin", Secret("admin"), Secret("Str0ng&Secret"))
    assert c.validate_credentials("admin", Secret("Str0ng&Secret")) is True
    bad = D4IoTClient(api.url, Secret("nope"), session=api.session())
    with pytest.raises(AuthError):
        bad.alerts()
    with pytest.raises(ApiError):
        c._request("GET", "/api/v1/alerts", params={"fromTime": "x"})


def test_client_with_labctl_pinning_session(api):
    """The default session (labctl.transport.http.make_session) pins the self-signed cert."""
    c = D4IoTClient(api.url, Secret(api.token))
    assert c.alerts(version=2)


def test_client_parses_keys_case_insensitively():
    doc = [{"id": 1, "additionalinformation": {"Description": "d", "information": ["x"]},
            "SOURCEDEVICEADDRESS": "10.0.0.1", "unknownKey": 5}]
    out = normalize_keys(doc)
    assert out == [{"id": 1, "additionalInformation": {"description": "d", "information": ["x"]},
                    "sourceDeviceAddress": "10.0.0.1", "unknownKey": 5}]


def test_oversized_body_is_refused(api):
    r = api.session().post(api.url + "/api/external/authentication/validation",
                           data=b"x" * (64 * 1024 + 1),
                           headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "Content-Length" in r.json()["error"]
    assert api.get("/api/v1/alerts").status_code == 200  # the server is fine afterwards


def test_client_errors_are_labctl_errors(tmp_path):
    from labctl.core.errors import HostUnreachable, TransportError, UsageError

    with pytest.raises(UsageError):  # plain http is refused by labctl's session
        D4IoTClient("http://127.0.0.1:9", Secret("t")).alerts()
    with pytest.raises((HostUnreachable, TransportError)):
        D4IoTClient("https://127.0.0.1:9", Secret("t")).alerts()
    plain = requests.Session()
    plain.trust_env = False
    with pytest.raises(TransportError):
        D4IoTClient("https://127.0.0.1:9", Secret("t"), session=plain).devices()
    with pytest.raises(AuthError, match="no access token"):
        D4IoTClient("https://127.0.0.1:9", None, session=plain).devices()


def test_driver_records_from_v1_and_v2_shapes_in_any_letter_case():
    from labctl.sensor.client import alert_from_api, connection_from_api, device_from_api

    v1 = normalize_keys({"ID": 7, "Time": 1700000000000, "TITLE": "Port Scan Detected",
                         "message": "m", "severity": "Critical", "engine": "Anomaly",
                         "additionalinformation": None, "Handled": True})
    a = alert_from_api(v1)
    assert (a.id, a.time, a.title, a.engine, a.handled) == (
        7, 1700000000000, "Port Scan Detected", "Anomaly", True)
    assert a.source_address is None and a.destination_address is None  # v1 has none
    v2 = alert_from_api(normalize_keys({**v1, "SourceDeviceAddress": "10.0.0.5",
                                        "destinationdeviceaddress": "10.0.0.9"}))
    assert (v2.source_address, v2.destination_address) == ("10.0.0.5", "10.0.0.9")
    d = device_from_api(normalize_keys({"id": 3, "name": "feeder", "IPADDRESSES": ["10.0.0.9"],
                                        "macAddresses": [], "vendor": None,
                                        "protocols": [{"id": 1, "name": "IRC"}]}))
    assert (d.ip_addresses, d.mac_addresses, d.protocols) == (("10.0.0.9",), (), ("IRC",))
    c = connection_from_api(normalize_keys({"firstDeviceId": 3, "seconddeviceid": None,
                                            "lastSeen": 5, "discovered": 4, "ports": [6667],
                                            "protocols": [{"name": "IRC", "commands": []}]}))
    assert (c.first_device_id, c.second_device_id, c.ports, c.protocols) == (
        3, None, (6667,), ("IRC",))


def test_driver_reads_v1_alerts_from_a_sensor_without_v2():
    import json as _json

    from labctl.sensor.base import SensorTarget
    from labctl.sensor.client import D4IoTDriver
    from labctl.transport.httpserver import BaseHandler, LabHTTPServer

    seen: list[str] = []

    class OldSensor(BaseHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path.split("?")[0])
            if self.path.startswith("/api/v1/alerts"):
                status, body = 200, [{"id": 1, "time": 5, "title": "T", "message": "",
                                      "severity": "Minor", "engine": "Anomaly"}]
            else:
                status, body = 404, {"error": "not found"}
            data = _json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = LabHTTPServer(("127.0.0.1", 0), OldSensor)
    server.start()
    try:
        s = requests.Session()
        s.trust_env = False
        url = f"http://127.0.0.1:{server.server_address[1]}"
        driver = D4IoTDriver(SensorTarget(url, token=Secret("t")), session=s)
        alerts = driver.alerts(since=0)
        assert [(a.id, a.title, a.source_address) for a in alerts] == [(1, "T", None)]
        assert seen == ["/api/v2/alerts", "/api/v1/alerts"]
        st = driver.status()  # no labctl status endpoint on a real sensor: reachable only
        assert st.reachable and st.packets is None
    finally:
        server.stop()
