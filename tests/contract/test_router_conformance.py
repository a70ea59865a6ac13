"""Conformance of the ASUS router emulator with clients labctl did not write.

Why: an emulator built against labctl's own client accepts what labctl sends and little
else. Here it is driven by ``asusrouter`` (PyPI; the aiohttp library the Home Assistant
ASUS integration uses) and by raw HTTP requests built from the firmware's sources
(asuswrt-merlin.ng ``release/src/router/httpd``: cgi.c ``init_cgi``/``unescape``, httpd.c
``handle_request``/``send_headers``/``send_login_page``). Everything runs on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import ssl
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from labctl.router.asus.emulator import EmulatorServer, RouterEmulator
from tests.helpers.router_tls import ca_and_leaf

asusrouter = pytest.importorskip("asusrouter")

PW = "Conformance-Pw-5521"
APP_UA = "asusrouter-Linux-DUTUtil-1.0"


def _b64(user: str, pw: str) -> str:
    return base64.b64encode(f"{user}:{pw}".encode()).decode()


class Raw:
    """One request per connection from a chosen loopback source address."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.source = source

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5,
                                          source_address=(self.source, 0))
        try:
            h = {"User-Agent": APP_UA}
            h.update(headers or {})
            if isinstance(body, str):
                body = body.encode()
            if body is not None:
                h.setdefault("Content-Type", "application/x-www-form-urlencoded")
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | str | None = None,
             headers: dict[str, str] | None = None) -> Any:
        status, _, data = self.request(method, path, body, headers)
        assert status == 200, (status, data)
        return json.loads(data)

    def login(self) -> str:
        obj = self.json("POST", "/login.cgi", f"login_authorization={_b64('admin', PW)}")
        return str(obj["asus_token"])


@pytest.fixture
def emu() -> Any:
    emulator = RouterEmulator(password=PW)
    with EmulatorServer(emulator) as srv:
        yield emulator, srv


# -- a third-party client --------------------------------------------------------------

async def _asusrouter_session(host: str, port: int, use_ssl: bool) -> dict[str, Any]:
    import aiohttp
    from asusrouter import AsusData, AsusRouter

    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        router = AsusRouter(host, "admin", PW, port=port, use_ssl=use_ssl, session=session)
        out["connected"] = await router.async_connect()
        identity = await router.async_get_identity()
        out["model"] = identity.model
        out["firmware"] = str(identity.firmware)
        out["hook"] = await router.async_api_hook("nvram_get(lan_ipaddr)")
        out["cpu"] = await router.async_get_data(AsusData.CPU)
        out["ram"] = await router.async_get_data(AsusData.RAM)
        out["service"] = await router.async_run_service(
            "restart_wireless", arguments={"apg3_ssid": "From asusrouter"}, apply=True)
        out["disconnected"] = await router.async_disconnect()
    return out


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_asusrouter_logs_in_reads_hooks_runs_a_service_and_logs_out(tmp_path: Path,
                                                                     https: bool) -> None:
    emulator = RouterEmulator(password=PW)
    cert = key = None
    if https:
        _, cert, key = ca_and_leaf(tmp_path)
    with EmulatorServer(emulator, https=https, certfile=cert, keyfile=key) as srv:
        # asusrouter does not verify the certificate unless told to (routers are
        # self-signed), which is what its users run
        got = asyncio.run(_asusrouter_session("127.0.0.1", srv.port, https))
    assert got["connected"] is True
    assert got["model"] == emulator.nvram["productid"]
    assert got["firmware"].startswith("3.0.0.6")
    assert got["hook"] == {"lan_ipaddr": "192.168.50.1"}
    assert set(got["cpu"]) >= {"total", 1, 2, 3, 4}
    assert got["ram"]["total"] == 1048576 and got["ram"]["used"] == 524288
    assert got["service"] is True and got["disconnected"] is True
    assert emulator.nvram["apg3_ssid"] == "From asusrouter"
    outcomes = [(e["path"], e.get("outcome")) for e in emulator.log]
    assert ("login.cgi", "login ok") in outcomes
    assert ("applyapp.cgi", "ok") in outcomes
    assert outcomes[-1] == ("Logout.asp", "logout")
    # what asusrouter probes and the emulator does not serve is refused like a missing file
    assert ("ajax_status.xml", "404 (unsupported)") in outcomes
    assert not [o for o in outcomes if o[1] and o[1].startswith("error_status")]


# -- raw probes of each parsing rule (cgi.c init_cgi) ----------------------------------

def test_an_encoded_equals_sign_still_separates_name_and_value(emu: Any) -> None:
    _, srv = emu
    # unescape() runs on the whole assignment, then strsep(&value, "=") splits it
    body = quote(f"login_authorization={_b64('admin', PW)}", safe="")
    assert "%3D" in body and "=" not in body
    obj = Raw(srv.port).json("POST", "/login.cgi", body)
    assert len(obj["asus_token"]) == 32


def test_semicolons_separate_fields_and_percent_3b_keeps_hooks_together(emu: Any) -> None:
    _, srv = emu
    raw = Raw(srv.port)
    cookie = {"Cookie": f"asus_token={raw.login()}"}
    # a raw ';' ends the hook field; "nvram_get(productid)" has no '=' and is dropped
    got = raw.json("GET", "/appGet.cgi?hook=nvram_get(lan_ipaddr);nvram_get(productid)",
                   headers=cookie)
    assert got == {"lan_ipaddr": "192.168.50.1"}
    got = raw.json("GET", "/appGet.cgi?hook=nvram_get(lan_ipaddr)%3Bnvram_get(productid)",
                   headers=cookie)
    assert got == {"lan_ipaddr": "192.168.50.1", "productid": "ET12"}
    # ';' separates assignments in a body too
    got = raw.json("POST", "/appGet.cgi", "x=1;hook=nvram_get%28productid%29", headers=cookie)
    assert got == {"productid": "ET12"}


def test_hooks_in_the_body_and_fields_from_query_and_body_together(emu: Any) -> None:
    _, srv = emu
    raw = Raw(srv.port)
    cookie = {"Cookie": f"asus_token={raw.login()}"}
    got = raw.json("POST", "/appGet.cgi", "hook=nvram_get(lan_ipaddr)%3Bnvram_get(firmver)",
                   headers=cookie)
    assert got == {"lan_ipaddr": "192.168.50.1", "firmver": "3.0.0.6"}
    # applyapp.cgi: action_mode in the query, the rest in the (form) body
    got = raw.json("POST", "/applyapp.cgi?action_mode=apply",
                   "rc_service=restart_wireless%3B&apg3_ssid=Merged", headers=cookie)
    assert got["run_service"] == "restart_wireless;"
    assert emu[0].nvram["apg3_ssid"] == "Merged"


def test_plus_is_a_space_and_percent_2b_is_a_plus(emu: Any) -> None:
    emulator, srv = emu
    raw = Raw(srv.port)
    cookie = {"Cookie": f"asus_token={raw.login()}"}
    raw.json("POST", "/applyapp.cgi",
             "action_mode=apply&rc_service=restart_wireless%3B&apg3_ssid=My+IoT%2B1",
             headers=cookie)
    assert emulator.nvram["apg3_ssid"] == "My IoT+1"


def test_a_single_quoted_applyapp_body_is_json_as_json_c_reads_it(emu: Any) -> None:
    emulator, srv = emu
    raw = Raw(srv.port)
    cookie = {"Cookie": f"asus_token={raw.login()}"}
    body = "{'action_mode': 'apply', 'rc_service': 'restart_wireless;', 'apg3_ssid': 'Quoted'}"
    got = raw.json("POST", "/applyapp.cgi", quote(body, safe=""), headers=cookie)
    assert got == {"modify": "1", "run_service": "restart_wireless;",
                   "restart_needed_time": "20"}
    assert emulator.nvram["apg3_ssid"] == "Quoted"
    # and unencoded, as some clients post it
    body = body.replace("Quoted", "Raw quoted")
    raw.json("POST", "/applyapp.cgi", body, headers=cookie)
    assert emulator.nvram["apg3_ssid"] == "Raw quoted"


def test_dututil_headers_only_for_the_exact_third_token(emu: Any) -> None:
    emulator, srv = emu
    raw = Raw(srv.port)
    for ua, expected in (("asusrouter--DUTUtil-", True), ("asusrouter-Linux-DUTUtil-2", True),
                         ("asusrouter-Linux-DUTUtilX-2", False),
                         ("asusrouter-Linux-ASSIA-DUTUtil", False)):
        _, headers, _ = raw.request("GET", "/appGet.cgi?hook=nvram_get(lan_ipaddr)",
                                    headers={"User-Agent": ua})
        assert ("Model_Name" in headers) is expected, ua
        if expected:
            assert headers["Model_Name"] == emulator.product_id == emulator.nvram["odmpid"]
            assert headers["AiHOMEAPILevel"] == "21" and headers["Httpd_AiHome_Ver"] == "0"


def test_lockout_is_counted_per_lan_and_wan_not_per_address() -> None:
    emulator = RouterEmulator(password=PW)
    # 127.0.0.0/31 is "the LAN": 127.0.0.1 is a LAN client, 127.0.0.3 a WAN client
    emulator.nvram.update(lan_ipaddr="127.0.0.1", lan_netmask="255.255.255.254")
    with EmulatorServer(emulator) as srv:
        lan, wan = Raw(srv.port, "127.0.0.1"), Raw(srv.port, "127.0.0.3")
        wan_token = wan.login()  # a WAN app already logged in before the lock
        bad = f"login_authorization={_b64('admin', 'wrong')}"
        for _ in range(5):
            assert lan.json("POST", "/login.cgi", bad)["error_status"] == "3"
        # the LAN counter is locked: the right password from the LAN gets 7 ...
        locked = lan.json("POST", "/login.cgi", f"login_authorization={_b64('admin', PW)}")
        assert locked["error_status"] == "7" and int(locked["remaining_lock_time"]) > 0
        # ... while a WAN client still logs in, and a WAN session keeps working
        assert len(wan.login()) == 32
        got = wan.json("GET", "/appGet.cgi?hook=nvram_get(lan_ipaddr)",
                       headers={"Cookie": f"asus_token={wan_token}"})
        assert got == {"lan_ipaddr": "127.0.0.1"}
        # a LAN browser gets LOGINLOCK on every page but the login page itself
        browser = {"User-Agent": "Mozilla/5.0", "Referer": f"http://127.0.0.1:{srv.port}/"}
        status, _, page = lan.request("GET", "/Main_Login.asp", headers=browser)
        assert status == 200 and b"login" in page
        lan.request("GET", "/appGet.cgi?hook=nvram_get(lan_ipaddr)", headers=browser)
        assert emulator.log[-1]["outcome"] == "error_status 7"
        lan.request("GET", "/index.asp", headers=browser)
        assert emulator.log[-1]["outcome"] == "error_status 7"


def test_a_silent_client_delays_another_https_request_by_under_100_ms(tmp_path: Path) -> None:
    _, cert, key = ca_and_leaf(tmp_path)
    ca = tmp_path / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    with EmulatorServer(RouterEmulator(), https=True, certfile=cert, keyfile=key) as srv:
        def one() -> float:
            t0 = time.monotonic()
            conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=3, context=ctx)
            try:
                conn.request("GET", "/Main_Login.asp")
                assert conn.getresponse().status == 200
            finally:
                conn.close()
            return time.monotonic() - t0

        baseline = statistics.median(one() for _ in range(5))
        silent = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        try:
            time.sleep(0.05)  # the server has accepted them and waits for their handshake
            delayed = statistics.median(one() for _ in range(5))
        finally:
            for s in silent:
                s.close()
    assert delayed - baseline < 0.100, (baseline, delayed)
