"""Login v1/v2, error_status handling, lockout, token expiry, logout, browser UA checks."""

from __future__ import annotations

import base64
import re

import pytest
import requests

from labctl.core.errors import AuthError, LockedOutError
from labctl.core.secrets import Secret
from labctl.router.asus import sdn
from labctl.router.asus.client import AsusClient
from labctl.router.asus.emulator import EmulatorServer, RouterEmulator
from tests.helpers.router_emulator import APP_UA, emulator_lab


def _bad_login(url: str) -> dict:
    cred = base64.b64encode(b"admin:wrong").decode()
    return requests.post(f"{url}/login.cgi", data={"login_authorization": cred},
                         headers={"User-Agent": APP_UA}, timeout=5).json()


def test_lockout_stops_at_once_shows_remaining_time_and_never_retries(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        replies = [_bad_login(lab.url) for _ in range(5)]
        assert [r["error_status"] for r in replies] == ["3"] * 5
        assert _bad_login(lab.url)["error_status"] == "7"
        n_before = len(lab.emulator.log)
        r = cli_run("router", "show", "-f", lab.playbook, env=lab.env())
        assert r.exit_code == 5, r
        assert "locked" in r.stderr
        assert re.search(r"try again in [45] min \d+ s", r.stderr), r.stderr
        new = lab.emulator.log[n_before:]
        # exactly one login attempt, no v2 fallback, no retry, nothing else
        assert [e["path"] for e in new] == ["login.cgi"]
        assert new[0]["outcome"] == "error_status 7"


def test_lockout_error_carries_remaining_seconds(tmp_path):
    emulator = RouterEmulator(password="pw-123456")
    with EmulatorServer(emulator) as srv:
        for _ in range(5):
            _bad_login(srv.url)
        c = AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True)
        with pytest.raises(LockedOutError) as ei:
            c.login()
        assert 290 <= ei.value.remaining_seconds <= 300
        assert ei.value.exit_code == 5


def test_wrong_password_is_one_attempt_without_v2_fallback(tmp_path, cli_run):
    with emulator_lab(tmp_path) as lab:
        r = cli_run("router", "show", "-f", lab.playbook,
                    env=lab.env(LABCTL_ROUTER_PASSWORD="not-the-password"))
        assert r.exit_code == 5
        assert "user name or password" in r.stderr
        assert lab.paths() == ["login.cgi"]


def test_login_v2_only_router(tmp_path, cli_run):
    with emulator_lab(tmp_path, login="v2") as lab:
        r = cli_run("router", "iot-net", "-f", lab.playbook, "-y", "--json", env=lab.env())
        assert r.exit_code == 0, r
        assert r.json()["login"] == "v2"
        paths = lab.paths()
        assert paths[:3] == ["login.cgi", "get_Nonce.cgi", "login_v2.cgi"]
        assert paths.count("login_v2.cgi") == 1 and paths[-1] == "Logout.asp"
        # v2 with a wrong password fails cleanly (no token)
        c = AsusClient(lab.url, "admin", Secret("wrong-pass"), allow_http=True, login="v2")
        with pytest.raises(AuthError):
            c.login()


def test_login_v1_only_router_with_v2_setting_is_a_clear_error(tmp_path):
    emulator = RouterEmulator(password="pw-123456", login_mode="v1")
    with EmulatorServer(emulator) as srv:
        c = AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True, login="v2")
        with pytest.raises(Exception) as ei:
            c.login()
        assert "login.cgi" in str(ei.value) or "v1" in (getattr(ei.value, "hint", "") or "")
        c = AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True)
        c.login()
        assert c.login_scheme == "v1"


def test_expired_token_logs_in_again_once(tmp_path):
    emulator = RouterEmulator(password="pw-123456")
    with EmulatorServer(emulator) as srv:
        with AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True) as c:
            c.login()
            emulator.expire_all_tokens()
            assert c.get_nvram(["lan_ipaddr"]) == {"lan_ipaddr": "192.168.50.1"}
        paths = [e["path"] for e in emulator.log]
        assert paths == ["login.cgi", "appGet.cgi", "login.cgi", "appGet.cgi", "Logout.asp"]
        assert emulator.log[1]["outcome"] == "error_status 2"
        # a token that keeps being refused is not an endless loop
        emulator.token_ttl = -1
        c = AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True)
        with pytest.raises(AuthError):
            c.get_nvram(["lan_ipaddr"])
        assert [e["path"] for e in emulator.log[5:]] == ["login.cgi", "appGet.cgi"] * 2


def test_logout_after_errors_and_session_invalidated(tmp_path):
    emulator = RouterEmulator(password="pw-123456")
    with EmulatorServer(emulator) as srv:
        c = AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True)
        with pytest.raises(RuntimeError):
            with c:
                sdn.read_state(c)
                raise RuntimeError("boom")
        assert emulator.log[-1]["path"] == "Logout.asp"
        assert emulator.sessions == {}


def test_browser_user_agent_needs_referer_and_gets_html(tmp_path):
    emulator = RouterEmulator(password="pw-123456")
    with EmulatorServer(emulator) as srv:
        browser = {"User-Agent": "Mozilla/5.0"}
        r = requests.get(f"{srv.url}/appGet.cgi?hook=nvram_get(lan_ipaddr)", headers=browser,
                         timeout=5)
        assert r.status_code == 200 and "Main_Login.asp" in r.text
        assert emulator.log[-1]["outcome"] == "error_status 4"
        bad_ref = dict(browser, Referer="http://evil.example/")
        requests.get(f"{srv.url}/appGet.cgi?hook=nvram_get(lan_ipaddr)", headers=bad_ref,
                     timeout=5)
        assert emulator.log[-1]["outcome"] == "error_status 6"
        # app UA: JSON error_status, and DUTUtil headers
        r = requests.get(f"{srv.url}/appGet.cgi?hook=nvram_get(lan_ipaddr)",
                         headers={"User-Agent": APP_UA}, timeout=5)
        assert r.json()["error_status"] == "1"
        # Model_Name is get_productid(): the emulator nvram's odmpid, else its productid
        assert r.headers["Model_Name"] == emulator.nvram["odmpid"] == "ZenWiFi_Pro_ET12"
        assert r.headers["AiHOMEAPILevel"] == "21" and r.headers["Httpd_AiHome_Ver"] == "0"


def test_apply_ignores_unknown_keys_and_echoes_run_service(tmp_path):
    emulator = RouterEmulator(password="pw-123456")
    with EmulatorServer(emulator) as srv:
        with AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True) as c:
            reply = c.apply({"no_such_key": "1", "apg3_ssid": "X", "apg99_ssid": "Y"},
                            "restart_wireless;restart_sdn 3;")
            assert reply["run_service"] == "restart_wireless;restart_sdn 3;"
        assert "no_such_key" not in emulator.nvram and "apg99_ssid" not in emulator.nvram
        assert emulator.nvram["apg3_ssid"] == "X"
        # the older form encoding is accepted too
        with AsusClient(srv.url, "admin", Secret("pw-123456"), allow_http=True,
                        apply_encoding="form") as c:
            c.apply({"apg3_ssid": "Z<>%&"}, "restart_wireless;")
            assert c.get_nvram(["apg3_ssid"], ascii_keys=["apg3_ssid"]) == {"apg3_ssid": "Z<>%&"}
