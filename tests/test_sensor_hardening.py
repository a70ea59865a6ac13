"""The embedded sensor API under attack and against the reference's fine print, over real
HTTPS on 127.0.0.1: the documented event and inventory details, bad ids (400/404, never
500), keep-alive after error replies (raw socket), the head deadline and the connection cap
(slowloris with small, bounded values), the password endpoints' lockout, and query strings
kept out of ``sensor serve -vv``'s log."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from labctl.core.waiting import WaitTimeout, wait_until
from labctl.sensor.api import LoginGuard
from tests.helpers.sensor_api import RunningApi, running_api
from tests.helpers.sensor_pcaps import (
    SCANNER_IP,
    T0,
    tcp_packet,
    udp_packet,
    write,
)

pytest.importorskip("scapy")

PASSWORD = "Hardening-Passw0rd!"


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    d = tmp_path_factory.mktemp("pcap")
    pk = [
        udp_packet(SCANNER_IP, "8.8.8.8", 53, t=T0),  # an internet endpoint
        udp_packet(SCANNER_IP, "224.0.0.251", 5353, sport=5353, t=T0 + 1),  # a group address
        tcp_packet(SCANNER_IP, "172.16.1.30", 502, t=T0 + 2),
        tcp_packet("172.16.1.30", SCANNER_IP, 51000, sport=502, flags="SA", t=T0 + 3,
                   smac="dc:a6:32:00:00:30"),
        udp_packet(SCANNER_IP, "172.16.1.30", 47808, t=T0 + 4),
    ]
    return write(d / "hard.pcap", pk)


@pytest.fixture
def api(tmp_path, pcap):
    with running_api(tmp_path / "state", pcap, learning=False) as a:
        yield a


def _tls(api: RunningApi) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(api.cert))
    ctx.check_hostname = False
    port = int(api.url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_reply(s: ssl.SSLSocket) -> tuple[int, bytes]:
    """One HTTP/1.1 reply (status, body) read by Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, f"connection closed; got {buf!r}"
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(4096)
    return status, body[:length]


# ---- documented details ---------------------------------------------------------------------

def test_events_owner_null_titles_and_type_filter(api):
    # far above 4320 is no error (treated as 4320; the replayed events are older than that)
    assert api.get("/api/v1/events", minutesTimeFrame=10**6).status_code == 200
    evs = api.get("/api/v1/events").json()
    assert evs and all(e["owner"] is None for e in evs)
    conn = [e for e in evs if e["type"] == "DEVICE_CONNECTION_CREATED"]
    assert conn and {e["title"] for e in conn} == {"Device Connection Detected"}
    # an unknown type is ignored: the unfiltered list comes back
    assert api.get("/api/v1/events", type="NO_SUCH_TYPE").json() == evs
    only = api.get("/api/v1/events", type="DEVICE_CREATE").json()
    assert only and {e["type"] for e in only} == {"DEVICE_CREATE"}
    assert {e["title"] for e in only} == {"Device Detected"}


def test_internet_and_group_endpoints_are_device_records(api):
    devs = {d["ipAddresses"][0]: d for d in api.get("/api/v1/devices").json()}
    assert devs["8.8.8.8"]["type"] == "Internet"
    assert devs["224.0.0.251"]["type"] == "Multicast/Broadcast"
    assert devs[SCANNER_IP]["type"] == "Unknown"
    conns = api.get("/api/v1/devices/connections").json()
    ids = {d["id"] for d in devs.values()}
    assert conns and all(c["firstDeviceId"] in ids and c["secondDeviceId"] in ids
                         for c in conns), conns
    inet = next(c for c in conns if "8.8.8.8" in (c["firstDeviceAddress"],
                                                 c["secondDeviceAddress"]))
    assert devs["8.8.8.8"]["id"] in (inet["firstDeviceId"], inet["secondDeviceId"])
    per_device = api.get(f"/api/v1/devices/{devs['8.8.8.8']['id']}/connections").json()
    assert per_device == [inet]


def test_protocol_names_use_the_documented_spellings(api):
    devs = {d["ipAddresses"][0]: d for d in api.get("/api/v1/devices").json()}
    assert [p["name"] for p in devs["172.16.1.30"]["protocols"]] == ["MODBUS"]
    names = {p["name"] for c in api.get("/api/v1/devices/connections").json()
             for p in c["protocols"]}
    assert {"MODBUS", "BACNet", "MDNS", "DNS"} <= names
    assert not names & {"Modbus", "BACnet", "mDNS", "S7"}


# ---- bad ids ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw_id, status", [
    ("9" * 5000, 400), ("0", 400), ("-1", 400), ("1e3", 400), ("%EF%BC%95", 400),  # fullwidth 5
    ("%D9%A1", 400), ("abc", 400), ("2147483648", 400), ("99999", 404), ("%00", 400),
])
def test_bad_device_ids_are_400_or_404_never_500(api, raw_id, status):
    s = _tls(api)
    try:
        s.sendall(f"GET /api/v1/devices/{raw_id}/connections HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: {api.token}\r\n\r\n".encode())
        code, body = _read_reply(s)
    finally:
        s.close()
    assert code == status, body[:200]
    assert b"error" in body


def test_bad_query_numbers_are_400(api):
    for params in ({"fromTime": "9" * 5000}, {"fromTime": "١٧"}, {"toTime": "1.5"},
                   {"minutesTimeFrame": "-5"}):
        path = "/api/v1/events" if "minutesTimeFrame" in params else "/api/v1/alerts"
        r = api.get(path, **params)
        assert r.status_code == 400 and "error" in r.json(), (params, r.text[:200])


# ---- keep-alive after an error reply ----------------------------------------------------------

def test_next_request_on_the_same_connection_after_error_replies(api):
    s = _tls(api)
    try:
        body = b'{"junk": "' + b"x" * 3000 + b'"}'
        s.sendall(b"POST /api/no/such/path HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body)
        assert _read_reply(s)[0] == 404
        s.sendall(b"PUT /api/v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        assert _read_reply(s)[0] == 405
        s.sendall(b"POST /api/external/authentication/validation HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 9\r\n\r\nnot json!")
        assert _read_reply(s)[0] == 400
        s.sendall(f"GET /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: {api.token}"
                  f"\r\n\r\n".encode())
        code, reply = _read_reply(s)
        assert code == 200 and reply.startswith(b"[")
    finally:
        s.close()


# ---- slowloris: head deadline and connection cap ---------------------------------------------

def test_slowloris_is_cut_by_the_head_deadline_and_the_connection_cap(tmp_path):
    """20 connections drip a header byte every 0.2 s (the attack's 10 s, scaled down with
    the limits): at most max_connections are served, the rest closed at once; the served
    ones are closed at the head deadline although they keep sending; then a normal client
    is answered. Every loop is bounded."""
    cap, deadline, n = 6, 1.0, 20
    with running_api(tmp_path / "s", None, learning=False, header_timeout=deadline,
                     max_connections=cap) as api:
        ctx = ssl.create_default_context(cafile=str(api.cert))
        ctx.check_hostname = False
        port = int(api.url.rsplit(":", 1)[1])
        conns: list[ssl.SSLSocket] = []
        refused = 0
        for _ in range(n):
            raw = socket.create_connection(("127.0.0.1", port), timeout=3)
            try:
                s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
                s.sendall(b"GET /api/v1/alerts HTTP/1.1\r\n")
                conns.append(s)
            except (ssl.SSLError, OSError):
                refused += 1
                raw.close()
        assert refused >= n - cap and len(conns) <= cap
        start = time.monotonic()
        open_ = list(conns)
        closed_after: list[float] = []
        for _ in range(int(4 * deadline / 0.2)):  # bounded: 4 deadlines at most
            time.sleep(0.2)
            for s in list(open_):
                try:
                    s.sendall(b"X")
                    s.setblocking(False)
                    try:
                        data = s.recv(1)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        data = None
                    s.setblocking(True)
                    if data == b"":
                        raise ConnectionResetError
                except (OSError, ssl.SSLError):
                    open_.remove(s)
                    closed_after.append(time.monotonic() - start)
            if not open_:
                break
        for s in conns:
            s.close()
        assert not open_, f"{len(open_)} dripping connections still open after " \
                          f"{4 * deadline} s"
        assert max(closed_after) < deadline + 1.0
        assert api.server.head_watchdog.cut >= len(conns)
        # the slots are free again: a normal client is answered
        r = api.get("/api/v1/alerts")
        assert r.status_code == 200


def test_sensor_defaults_set_a_deadline_and_a_cap(tmp_path):
    with running_api(tmp_path / "d", None) as api:
        srv = api.server
        assert 0 < srv.header_timeout <= 30 and srv.head_watchdog.timeout == srv.header_timeout
        assert 8 <= srv.max_connections <= 128


# ---- the password endpoints: lockout ---------------------------------------------------------

def _post(api: RunningApi, path: str, body: dict) -> tuple[int, dict, dict]:
    r = api.session().post(api.url + "/api/external/authentication/" + path, json=body,
                           timeout=10)
    return r.status_code, r.json(), dict(r.headers)


def test_documented_messages_and_set_password_by_admin(api):
    code, body, _ = _post(api, "validation", {"username": "admin", "password": "wrong"})
    assert code == 401 and body == {"error": {"userDisplayErrorMessage":
                                              "Credentials validation failed"}}
    code, body, _ = _post(api, "set_password", {"username": "admin", "password": "admin",
                                                "new_password": PASSWORD})
    assert (code, body) == (200, {"msg": "Password has been replaced"})
    code, body, _ = _post(api, "set_password", {"username": "admin", "password": "bad",
                                                "new_password": PASSWORD + "x"})
    assert (code, body["error"]["userDisplayErrorMessage"]) == (401,
                                                                "User authentication failure")
    code, body, _ = _post(api, "set_password", {"username": "admin", "password": PASSWORD,
                                                "new_password": "short"})
    assert body["error"]["userDisplayErrorMessage"] == "Password does not match security policy"
    by_admin = {"admin_username": "admin", "admin_password": PASSWORD}
    code, body, _ = _post(api, "set_password_by_admin",
                          {**by_admin, "username": "test_user", "new_password": PASSWORD})
    assert code == 404 and body["error"] == {
        "userDisplayErrorMessage": "The user 'test_user' doesn't exist",
        "internalSystemErrorMessage": "The user 'test_user' doesn't exist"}
    code, body, _ = _post(api, "set_password_by_admin",
                          {**by_admin, "username": "admin", "new_password": "weak"})
    assert body["error"]["userDisplayErrorMessage"] == "Password doesn't match security policy"
    # the curl example's admin_user spelling works too
    code, body, _ = _post(api, "set_password_by_admin",
                          {"admin_user": "admin", "admin_password": PASSWORD,
                           "username": "admin", "new_password": PASSWORD + "2"})
    assert (code, body) == (200, {"msg": "Password has been replaced"})
    code, body, _ = _post(api, "validation", {"username": "admin",
                                              "password": PASSWORD + "2"})
    assert (code, body) == (200, {"msg": "Authentication succeeded."})
    # the URI as the reference's headings print it (without /api)
    r = api.session().post(api.url + "/external/authentication/validation",
                           json={"username": "admin", "password": PASSWORD + "2"}, timeout=10)
    assert r.status_code == 200


def test_lockout_after_repeated_failures_scoped_to_address_and_user(tmp_path):
    now = [1000.0]
    guard = LoginGuard(max_failures=5, window=300, lock_seconds=300, clock=lambda: now[0])
    with running_api(tmp_path / "l", None, guard=guard) as api:
        assert _post(api, "set_password", {"username": "admin", "password": "admin",
                                           "new_password": PASSWORD})[0] == 200
        for _ in range(4):
            assert _post(api, "validation", {"username": "admin", "password": "x"})[0] == 401
        # a success clears the count
        assert _post(api, "validation", {"username": "admin", "password": PASSWORD})[0] == 200
        for _ in range(5):
            assert _post(api, "validation", {"username": "admin", "password": "x"})[0] == 401
        code, body, headers = _post(api, "validation", {"username": "admin",
                                                        "password": PASSWORD})
        assert code == 429 and "Too many failed sign-in attempts" in \
            body["error"]["userDisplayErrorMessage"]
        assert headers["Retry-After"] == "300"
        # every password endpoint is locked for that user from that address
        assert _post(api, "set_password", {"username": "admin", "password": PASSWORD,
                                           "new_password": PASSWORD + "9"})[0] == 429
        assert _post(api, "set_password_by_admin",
                     {"admin_username": "admin", "admin_password": PASSWORD,
                      "username": "admin", "new_password": PASSWORD + "9"})[0] == 429
        # another user name from this address is not locked
        assert _post(api, "validation", {"username": "support", "password": "x"})[0] == 401
        # nor is the same user from another address (the guard's key, checked directly)
        assert guard.locked("127.0.0.2", "admin") is None
        now[0] += 301
        assert _post(api, "validation", {"username": "admin", "password": PASSWORD})[0] == 200


def test_lockout_memory_is_bounded():
    g = LoginGuard(max_keys=50, clock=lambda: 0.0)
    for i in range(500):
        g.failed(f"10.0.{i // 250}.{i % 250}", "admin")
    assert len(g._fails) <= 50


# ---- `sensor serve -vv` never logs a query string ---------------------------------------------

@pytest.mark.netns
def test_serve_vv_log_has_no_query_string(tmp_path):
    import requests

    from labctl.transport.netns import netns_context
    from tests.helpers.sensor_netns import LiveSensor, new_pair

    pair = new_pair()
    live = LiveSensor(pair, tmp_path / "st", 8443, global_args=("-vv",))
    secret = "QS-SECRET-" + "7" * 24
    try:
        live.start()
        token = live.token()
        s = requests.Session()
        s.trust_env = False
        with netns_context(pair.b):
            url = f"https://127.0.0.1:{live.port}"
            cert = str(live.state / "tls" / "cert.pem")
            s.get(url + f"/api/v1/alerts?token={secret}&state=unhandled",
                  headers={"Authorization": token}, verify=cert, timeout=10)
            s.get(url + f"/no/such?access_token={secret}", verify=cert, timeout=10)
            s.get(url + f"/api/v1/devices?x={secret}", verify=cert, timeout=10)  # 401
        assert live.log is not None

        def logged() -> bool:
            return "/no/such" in live.log.read_text()

        try:
            wait_until(logged, timeout=10, interval=0.1)
        except WaitTimeout:
            pytest.fail(f"no request line in the -vv log: {live.log.read_text()[-2000:]}")
        text = live.log.read_text()
        assert "/api/v1/alerts?" in text  # the request line is logged...
        assert secret not in text and "state=unhandled" not in text  # ...its query is not
        assert token not in text
    finally:
        live.kill()
        pair.down()


def test_log_redaction_in_process(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.DEBUG, logger="labctl"):
        with running_api(tmp_path / "r", None) as api:
            api.get("/api/v1/alerts", token=None, apikey="SECRET-IN-QUERY")
            s = _tls(api)
            try:  # a malformed request line is logged through send_error
                s.sendall(b"GET /x?apikey=SECRET-IN-QUERY HTTP/1.1 junk\r\n\r\n")
                for _ in range(100):  # bounded: read the error page until the server closes
                    if not s.recv(4096):
                        break
            finally:
                s.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api/v1/alerts?" in text and "SECRET-IN-QUERY" not in text


def test_rule_event_has_the_documented_title(tmp_path):
    from labctl.sensor.config import load_config
    from labctl.sensor.engine import Sensor
    from labctl.sensor.pcap import CaptureFile
    from tests.helpers.sensor_pcaps import engines_file

    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - name: Feeder IRC\n    protocol: TCP\n    conditions: "
                     "[TCP.dstport == 6667]\n    action: event\n")
    s = Sensor(load_config(engines_file(tmp_path, rules=[str(rules)])))
    cap = CaptureFile(write(tmp_path / "e.pcap", [
        tcp_packet("172.16.1.30", "172.16.1.20", 6667, flags="PA", t=T0)]))
    s.replay(cap, cap.data)
    ev = [e for e in s.events if e.type == "USER_DEFINED_RULE_OPERATION"]
    assert len(ev) == 1 and ev[0].title == "User Defined Rule Operation"
    assert ev[0].content.startswith("Feeder IRC: ") and ev[0].owner is None


def test_secrets_at_rest(tmp_path):
    with running_api(tmp_path / "rest", None) as api:
        token = api.token
        state = api.state
    assert (state.stat().st_mode & 0o777) == 0o700
    assert (state / "tls" / "cert.key").stat().st_mode & 0o077 == 0
    db = b"".join(p.read_bytes() for p in state.glob("sensor.db*"))
    assert db and token.encode() not in db and b"admin" in db  # the user, not a password
