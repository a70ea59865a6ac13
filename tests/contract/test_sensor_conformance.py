"""Conformance of the embedded sensor with Microsoft's documented sensor API.

Plain ``requests`` scripts, not labctl's client: each request is built the way the
reference's curl examples send it (same paths, query strings and JSON bodies), and each
response is checked against the reference's field tables, keys in the documented casing,
types and value lists. Sources, MicrosoftDocs/azure-docs
``articles/defender-for-iot/organizations/api/``:

- ``sensor-alert-apis.md`` (ms.date 05/25/2022): alerts (v1 fields, "Added for V2" fields),
  events (fields, "Event type and title reference", minutesTimeFrame and type rules);
- ``sensor-inventory-apis.md`` (ms.date 06/27/2022): devices (fields, type and protocol
  name values), connections and connections per device (fields, protocol fields);
- ``sensor-auth-apis.md`` (ms.date 06/13/2022): validation, set_password,
  set_password_by_admin (request bodies, success and failure messages, error shape).

Everything runs over real HTTPS on 127.0.0.1, verified against the sensor's own
self-signed certificate (the examples use ``curl -k``; a test has no reason to).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.helpers.sensor_api import RunningApi, running_api
from tests.helpers.sensor_pcaps import (
    SCANNER_IP,
    TARGET_IP,
    TARGET_MAC,
    address_scan,
    syn_scan,
    tcp_packet,
    udp_packet,
    write,
)

pytest.importorskip("scapy")

SEVERITIES = {"Warning", "Minor", "Major", "Critical"}
ENGINES = {"Protocol Violation", "Policy Violation", "Malware", "Anomaly", "Operational"}
EVENT_SEVERITIES = {"INFO", "NOTICE", "ALERT"}
#: the rows of "Event type and title reference" for the types the embedded sensor reports
EVENT_TITLES = {
    "DEVICE_CREATE": "Device Detected",
    "ALERT_REPORTED": "Alert Detected",
    "SCAN": "Scan Device Detected",
    "DEVICE_CONNECTION_CREATED": "Device Connection Detected",
    "USER_DEFINED_RULE_OPERATION": "User Defined Rule Operation",
}
#: "Supported type values" the embedded sensor uses (it does not classify lab devices)
DEVICE_TYPES = {"Unknown", "Internet", "Multicast/Broadcast"}
#: the documented out-of-the-box protocol names
DOCUMENTED_PROTOCOLS = {
    "Unknown", "DNP3", "MODBUS", "C37.118", "SSH", "HTTP", "SYSLOG", "GENERIC", "ICMP",
    "DNS", "GOOSE", "MMS", "MALFORMED", "IEC-60870", "OPC UA", "Siemens S7", "ARP",
    "Sampled Values", "EtherNet/IP", "Siemens S7 Plus", "SNMP", "SMB", "FTP", "Telnet",
    "BACNet", "MDNS", "LLDP", "STP", "Netbios Name Service",
}

V1_FIELDS = {"id", "time", "title", "message", "severity", "engine", "sourceDevice",
             "destinationDevice", "additionalInformation"}
V2_FIELDS = V1_FIELDS | {"sourceDeviceAddress", "destinationDeviceAddress", "remediationSteps"}
DEVICE_FIELDS = {"id", "ipAddresses", "name", "vendor", "operatingSystem", "macAddresses",
                 "type", "engineeringStation", "authorized", "scanner", "protocols",
                 "firmware", "hasDynamicAddress"}
CONNECTION_FIELDS = {"firstDeviceId", "secondDeviceId", "lastSeen", "discovered", "ports",
                     "protocols"}
EVENT_FIELDS = {"timestamp", "type", "title", "severity", "owner", "content"}
NEW_PASSWORD = "Conform-Passw0rd!"


def _traffic(now: float) -> list[Any]:
    """A minute of lab traffic ending now: a port scan, an address scan, an answered
    MODBUS session, the reference lab's 6667 rule, an internet DNS query and mDNS."""
    t = now - 60
    feeder_mac = "dc:a6:32:00:00:30"
    return (syn_scan(30, t0=t) + address_scan(60, t0=t + 5)
            + [tcp_packet(SCANNER_IP, TARGET_IP, 502, t=t + 10),
               tcp_packet(TARGET_IP, SCANNER_IP, 51000, sport=502, flags="SA", t=t + 10.1,
                          smac=TARGET_MAC),
               tcp_packet("172.16.1.30", "172.16.1.20", 6667, flags="PA", t=t + 20,
                          smac=feeder_mac),
               udp_packet("172.16.1.30", "8.8.8.8", 53, t=t + 30),
               udp_packet("172.16.1.30", "224.0.0.251", 5353, sport=5353, t=t + 31)])


@pytest.fixture(scope="module")
def sensor(tmp_path_factory) -> Iterator[RunningApi]:
    d = tmp_path_factory.mktemp("conformance")
    pcap = write(d / "lab.pcap", _traffic(time.time()))
    with running_api(d / "state", pcap, learning=False) as api:
        yield api


def _curl(api: RunningApi, method: str, path_and_query: str, *,
          auth: bool = True, body: dict[str, Any] | None = None) -> requests.Response:
    """What the documented curl command sends: ``-H "Authorization: <AUTH_TOKEN>"`` (no
    Bearer), a JSON body with ``Content-Type: application/json``, the path as printed."""
    headers = {"Authorization": api.token} if auth else {}
    s = requests.Session()
    s.trust_env = False
    return s.request(method, api.url + path_and_query, headers=headers, json=body,
                     verify=str(api.cert), timeout=10)


def _is_num(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---- alerts ------------------------------------------------------------------------------

def _check_alert(a: dict[str, Any], fields: set[str]) -> None:
    assert set(a) == fields, set(a) ^ fields
    assert _is_num(a["id"]) and _is_num(a["time"]) and a["time"] > 1_500_000_000_000
    assert isinstance(a["title"], str) and a["title"]
    assert isinstance(a["message"], str) and a["message"]
    assert a["severity"] in SEVERITIES and a["engine"] in ENGINES
    for k in ("sourceDevice", "destinationDevice"):
        assert a[k] is None or _is_num(a[k])
    info = a["additionalInformation"]
    if info is not None:
        assert set(info) == {"description", "information"}
        assert isinstance(info["description"], str)
        assert isinstance(info["information"], list) and \
            all(isinstance(x, str) for x in info["information"])


def test_alerts_v1_as_documented(sensor):
    alerts = _curl(sensor, "GET", "/api/v1/alerts").json()
    assert isinstance(alerts, list) and alerts
    for a in alerts:
        _check_alert(a, V1_FIELDS)
    titles = {a["title"] for a in alerts}
    assert {"Port Scan Detected", "Address Scan Detected", "New Asset Detected",
            "Communication to port 6667"} <= titles
    scan = next(a for a in alerts if a["title"] == "Port Scan Detected")
    assert (scan["engine"], scan["severity"]) == ("Anomaly", "Critical")


def test_alerts_v2_adds_the_documented_fields(sensor):
    alerts = _curl(sensor, "GET", "/api/v2/alerts").json()
    assert alerts
    for a in alerts:
        _check_alert(a, V2_FIELDS)
        for k in ("sourceDeviceAddress", "destinationDeviceAddress"):
            assert a[k] is None or isinstance(a[k], str)
        assert isinstance(a["remediationSteps"], list) and \
            all(isinstance(x, str) for x in a["remediationSteps"])
    scan = next(a for a in alerts if a["title"] == "Port Scan Detected")
    assert (scan["sourceDeviceAddress"], scan["destinationDeviceAddress"]) == (SCANNER_IP,
                                                                               TARGET_IP)


def test_alerts_curl_example_query(sensor):
    # the reference's example: a one-millisecond window in 2020, type=disconnections
    r = _curl(sensor, "GET", "/api/v1/alerts?state=unhandled&fromTime=1594550986000"
                             "&toTime=1594550986001&type=disconnections")
    assert r.status_code == 200 and r.json() == []
    everything = _curl(sensor, "GET", "/api/v1/alerts").json()
    assert _curl(sensor, "GET", "/api/v1/alerts?state=unhandled").json() == everything
    assert _curl(sensor, "GET", "/api/v1/alerts?state=handled").json() == []
    # "All other values are ignored"
    assert _curl(sensor, "GET", "/api/v1/alerts?type=anything+else").json() == everything
    new = _curl(sensor, "GET", "/api/v1/alerts?type=unexpected%20new%20devices").json()
    assert new and {a["title"] for a in new} == {"New Asset Detected"}


def test_alerts_need_the_raw_token(sensor):
    assert _curl(sensor, "GET", "/api/v1/alerts", auth=False).status_code == 401


# ---- events ------------------------------------------------------------------------------

def test_events_curl_example(sensor):
    r = _curl(sensor, "GET", "/api/v1/events?minutesTimeFrame=20&type=DEVICE_CONNECTION_CREATED")
    evs = r.json()
    assert r.status_code == 200 and evs
    for e in evs:
        assert set(e) == EVENT_FIELDS
        assert e["type"] == "DEVICE_CONNECTION_CREATED"
        assert e["title"] == "Device Connection Detected"


def test_events_fields_and_titles_as_documented(sensor):
    evs = _curl(sensor, "GET", "/api/v1/events?minutesTimeFrame=20").json()
    assert 0 < len(evs) <= 100  # "the latest 100 events"
    for e in evs:
        assert set(e) == EVENT_FIELDS
        assert _is_num(e["timestamp"])
        assert e["severity"] in EVENT_SEVERITIES
        assert e["owner"] is None  # no event here was created manually
        assert isinstance(e["content"], str) and e["content"]
        assert e["title"] == EVENT_TITLES[e["type"]], e
    assert [e["timestamp"] for e in evs] == sorted((e["timestamp"] for e in evs),
                                                   reverse=True)  # latest first
    assert {"DEVICE_CREATE", "ALERT_REPORTED", "SCAN", "DEVICE_CONNECTION_CREATED"} <= \
        {e["type"] for e in evs}


def test_events_time_frame_and_type_rules(sensor):
    base = _curl(sensor, "GET", "/api/v1/events?minutesTimeFrame=4320").json()
    # "Any larger value is treated as 4320, with no error"
    r = _curl(sensor, "GET", "/api/v1/events?minutesTimeFrame=100000")
    assert r.status_code == 200 and r.json() == base
    # "Any value other than supported types is ignored"
    assert _curl(sensor, "GET", "/api/v1/events?minutesTimeFrame=4320&type=BOGUS").json() == base


# ---- devices -----------------------------------------------------------------------------

def test_devices_as_documented(sensor):
    devs = _curl(sensor, "GET", "/api/v1/devices/").json()  # the curl example's path
    assert devs
    for d in devs:
        assert set(d) >= DEVICE_FIELDS, DEVICE_FIELDS - set(d)
        assert _is_num(d["id"]) and isinstance(d["name"], str) and d["name"]
        assert d["type"] in DEVICE_TYPES
        assert all(isinstance(x, str) for x in d["ipAddresses"] or [])
        assert all(isinstance(x, str) for x in d["macAddresses"] or [])
        assert d["vendor"] is None or isinstance(d["vendor"], str)
        assert d["operatingSystem"] is None
        for k in ("engineeringStation", "authorized", "scanner", "hasDynamicAddress"):
            assert isinstance(d[k], bool)
        assert isinstance(d["firmware"], list)
        for p in d["protocols"] or []:
            assert set(p) == {"id", "name", "ipAddresses"} and _is_num(p["id"])
    by_ip = {d["ipAddresses"][0]: d for d in devs}
    assert by_ip["8.8.8.8"]["type"] == "Internet"
    assert "MODBUS" in {p["name"] for p in by_ip[TARGET_IP]["protocols"]}
    assert _curl(sensor, "GET", "/api/v1/devices?authorized=true").json() == []  # not learning
    assert len(_curl(sensor, "GET", "/api/v1/devices?authorized=false").json()) == len(devs)


# ---- connections -------------------------------------------------------------------------

def _check_connection(c: dict[str, Any], ids: set[int]) -> None:
    assert set(c) >= CONNECTION_FIELDS
    # "Not nullable": internet and group endpoints are device records with ids
    assert c["firstDeviceId"] in ids and c["secondDeviceId"] in ids
    assert _is_num(c["lastSeen"]) and _is_num(c["discovered"])
    assert all(_is_num(p) for p in c["ports"] or [])
    for p in c["protocols"] or []:
        assert set(p) == {"name", "commands"} and isinstance(p["name"], str)
        assert p["commands"] is None or isinstance(p["commands"], list)


def test_connections_as_documented(sensor):
    ids = {d["id"] for d in _curl(sensor, "GET", "/api/v1/devices").json()}
    conns = _curl(sensor, "GET", "/api/v1/devices/connections").json()
    assert conns
    for c in conns:
        _check_connection(c, ids)
    names = {p["name"] for c in conns for p in c["protocols"]}
    assert {"MODBUS", "MDNS", "DNS"} <= names
    assert names & DOCUMENTED_PROTOCOLS >= {"MODBUS", "MDNS", "DNS"}


def test_connections_per_device_curl_example(sensor):
    devs = _curl(sensor, "GET", "/api/v1/devices").json()
    ids = {d["id"] for d in devs}
    target = next(d["id"] for d in devs if d["ipAddresses"] == [TARGET_IP])
    now = int(time.time() * 1000)
    mine = _curl(sensor, "GET", f"/api/v1/devices/{target}/connections").json()
    assert mine and all(target in (c["firstDeviceId"], c["secondDeviceId"]) for c in mine)
    for c in mine:
        _check_connection(c, ids)
    # the example's three filters together
    r = _curl(sensor, "GET", f"/api/v1/devices/{target}/connections?lastActiveInMinutes=20"
                             f"&discoveredBefore={now}&discoveredAfter={now - 3_600_000}")
    assert r.status_code == 200 and r.json() == mine
    assert _curl(sensor, "GET", f"/api/v1/devices/{target}/connections?"
                                f"discoveredAfter={now}").json() == []


# ---- authentication ----------------------------------------------------------------------

def test_validation_curl_example_and_messages(tmp_path):
    with running_api(tmp_path / "auth", None) as api:
        # the example's body: user "test" does not exist
        r = _curl(api, "POST", "/api/external/authentication/validation",
                  body={"username": "test", "password": "test"})
        assert r.json() == {"error": {"userDisplayErrorMessage":
                                      "Credentials validation failed"}}
        _curl(api, "POST", "/api/external/authentication/set_password",
              body={"username": "admin", "password": "admin", "new_password": NEW_PASSWORD},
              auth=False)
        r = _curl(api, "POST", "/api/external/authentication/validation",
                  body={"username": "admin", "password": NEW_PASSWORD})
        assert (r.status_code, r.json()) == (200, {"msg": "Authentication succeeded."})


def test_set_password_curl_example_and_messages(tmp_path):
    with running_api(tmp_path / "setpw", None) as api:
        path = "/api/external/authentication/set_password"
        # the example's body and its documented response
        r = _curl(api, "POST", path, auth=False, body={
            "username": "myUser", "password": "1234@abcd", "new_password": "abcd@1234"})
        assert r.json() == {"error": {"userDisplayErrorMessage": "User authentication failure"}}
        r = _curl(api, "POST", path, auth=False, body={
            "username": "admin", "password": "admin", "new_password": "abcd@1234"})
        assert r.json()["error"]["userDisplayErrorMessage"] == \
            "Password does not match security policy"  # no upper-case letter
        r = _curl(api, "POST", path, auth=False, body={
            "username": "admin", "password": "admin", "new_password": NEW_PASSWORD})
        assert (r.status_code, r.json()) == (200, {"msg": "Password has been replaced"})


def test_set_password_by_admin_curl_example_and_messages(tmp_path):
    with running_api(tmp_path / "byadmin", None) as api:
        path = "/api/external/authentication/set_password_by_admin"
        # the curl example's body (admin_user spelling): no such admin
        r = _curl(api, "POST", path, auth=False, body={
            "admin_user": "adminUser", "admin_password": "1234@abcd", "username": "myUser",
            "new_password": "abcd@1234"})
        assert r.json() == {"error": {"userDisplayErrorMessage": "User authentication failure"}}
        # the response example: the user does not exist
        r = _curl(api, "POST", path, auth=False, body={
            "admin_username": "admin", "admin_password": "admin", "username": "test_user",
            "new_password": NEW_PASSWORD})
        assert r.json() == {"error": {
            "userDisplayErrorMessage": "The user 'test_user' doesn't exist",
            "internalSystemErrorMessage": "The user 'test_user' doesn't exist"}}
        r = _curl(api, "POST", path, auth=False, body={
            "admin_username": "admin", "admin_password": "admin", "username": "admin",
            "new_password": "Test54321"})  # no symbol
        assert r.json()["error"]["userDisplayErrorMessage"] == \
            "Password doesn't match security policy"
        r = _curl(api, "POST", path, auth=False, body={
            "admin_username": "admin", "admin_password": "admin", "username": "admin",
            "new_password": "Test54321!"})
        assert (r.status_code, r.json()) == (200, {"msg": "Password has been replaced"})
        r = _curl(api, "POST", "/api/external/authentication/validation",
                  body={"username": "admin", "password": "Test54321!"})
        assert r.json() == {"msg": "Authentication succeeded."}


def test_auth_needs_no_token(tmp_path):
    with running_api(tmp_path / "notoken", None) as api:
        r = _curl(api, "POST", "/api/external/authentication/validation", auth=False,
                  body={"username": "admin", "password": "wrong"})
        assert r.status_code != 404 and "userDisplayErrorMessage" in r.json()["error"]
