"""The ASUS router emulator as a program: `labctl twin serve-router`, its state, --iot-interface."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl.app import router as app
from labctl.core.errors import TransportError
from labctl.core.secrets import Secret
from labctl.router.base import DesiredNetwork
from labctl.transport.http import make_session

ROOT = Path(__file__).resolve().parent.parent


def _wait_ready(url: str, netns: str | None, proc: subprocess.Popen, deadline: float = 15.0):
    s = make_session(url, allow_http=True, retries=0, timeout=1.0, netns=netns)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"emulator exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            s.get("/Main_Login.asp")
            return
        except TransportError:
            time.sleep(0.1)
    raise AssertionError("emulator did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _desired(vlan: int = 52) -> DesiredNetwork:
    return DesiredNetwork(name="Azkaban", ssid="Azkaban", passphrase=Secret("Azkaban-PSK-1"),
                          subnet=ipaddress.IPv4Network("172.16.1.0/24"), vlan=vlan,
                          dns=(ipaddress.IPv4Address("9.9.9.9"),))


def _serve_argv(*args: str) -> list[str]:
    code = "import sys; from labctl.cli.twin_router import serve_router; serve_router(sys.argv[1:])"
    return [sys.executable, "-c", code, *args]


def test_serve_router_process_persists_state_and_takes_custom_password(tmp_path):
    state = tmp_path / "router-nvram.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RT_PW="Twin-Pw-9911")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(_serve_argv("--listen", f"127.0.0.1:{port}", "--state", str(state),
                                        "--password-env", "RT_PW", "--login", "v2"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, None, proc)
        target = app.RouterTarget(url=url, user="admin", password=Secret("Twin-Pw-9911"),
                                  allow_http=True)
        rep = app.iot_net(target, _desired(), confirm=lambda r: True)
        assert rep.verified and rep.login == "v2"
        saved = json.loads(state.read_text())
        assert "<0>2" in saved["sdn_access_rl"] and saved["apg2_ssid"] == "Azkaban"
    finally:
        _stop(proc)
    # restart from the state file: the network is still there (a no-op run)
    proc = subprocess.Popen(_serve_argv("--listen", f"127.0.0.1:{port}", "--state", str(state),
                                        "--password-env", "RT_PW"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", None, proc)
        rep = app.iot_net(target, _desired(), confirm=lambda r: pytest.fail("asked to change"))
        assert rep.action == "noop"
    finally:
        _stop(proc)


def test_serve_router_help_and_bad_arguments(cli_run):
    from click.testing import CliRunner

    from labctl.cli.twin_router import serve_router

    r = CliRunner().invoke(serve_router, ["--help"])
    assert r.exit_code == 0 and "--iot-interface" in r.output
    r = CliRunner().invoke(serve_router, ["--listen", "nope"])
    assert r.exit_code != 0


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.mark.netns
def test_iot_interface_gets_the_gateway_inside_the_router_namespace(tmp_path):
    ns = f"rt{os.getpid() % 100000}"
    _ip("netns", "add", ns)
    proc = None
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        # (no dummy module on every kernel: a veth pair inside the namespace does the job)
        _ip("-n", ns, "link", "add", "rtiot0", "type", "veth", "peer", "name", "rtiot1")
        _ip("-n", ns, "link", "set", "rtiot0", "up")
        # the twin provider may already have put the gateway there: replace is idempotent
        _ip("-n", ns, "addr", "add", "172.16.1.1/24", "dev", "rtiot0")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *_serve_argv(
                "--listen", "127.0.0.1:8443", "--https", "--state", str(tmp_path / "nv.json"),
                "--iot-interface", "52=rtiot0", "--iot-interface", "60=rtiot0")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        url = "https://127.0.0.1:8443"
        target = app.RouterTarget(url=url, user="admin", password=Secret("admin"), netns=ns,
                                  pin_store=tmp_path / "pins.json")
        end = time.monotonic() + 15
        while True:
            try:
                app.show(target)
                break
            except TransportError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert json.loads((tmp_path / "pins.json").read_text())  # pinned on first use
        rep = app.iot_net(target, _desired(), confirm=lambda r: True)
        assert rep.verified
        assert "172.16.1.1/24" in _ip("-n", ns, "-4", "addr", "show", "rtiot0")
        # the root namespace has no route to it: the client really connected inside ns
        assert "172.16.1.1" not in _ip("-4", "addr", "show")
        app.delete_net(target, "Azkaban", confirm=lambda n: True)
        assert "172.16.1.1" not in _ip("-n", ns, "-4", "addr", "show", "rtiot0")
    finally:
        if proc is not None:
            _stop(proc)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_emulator_process_is_the_twin_serve_router_command_line(tmp_path):
    from labctl.core.emulator import EmulatorRequest
    from labctl.router.registry import get_router_driver

    state = tmp_path / "router-nvram.json"
    req = EmulatorRequest(listen_ip="192.168.50.1", port=8443, https=True, state_path=state,
                          interfaces={"52": "iot0"}, password_env="LABCTL_TWIN_ROUTER_PASSWORD")
    proc = get_router_driver("asus").emulator_process(req)
    assert proc.args == ("twin", "serve-router", "--listen", "192.168.50.1:8443", "--https",
                         "--state", str(state), "--iot-interface", "52=iot0",
                         "--password-env", "LABCTL_TWIN_ROUTER_PASSWORD")
    assert proc.ready == ("192.168.50.1", 8443)
    plain = get_router_driver("asus").emulator_process(
        EmulatorRequest(listen_ip="127.0.0.1", port=8080, https=False, state_path=state))
    assert plain.args == ("twin", "serve-router", "--listen", "127.0.0.1:8080",
                          "--state", str(state))
    # the command it names parses
    from click.testing import CliRunner

    from labctl.cli.twin_router import serve_router

    r = CliRunner().invoke(serve_router, [*proc.args[2:], "--help"])
    assert r.exit_code == 0, r.output


def test_gateway_addresses_move_through_the_injected_callback():
    from labctl.router.asus.emulator import EmulatorServer, RouterEmulator

    moves: list[tuple[str, str | None, str | None]] = []
    emulator = RouterEmulator(password="pw-123456", iot_interfaces={52: "iot0"},
                              address_sync=lambda i, o, n: moves.append((i, o, n)))
    with EmulatorServer(emulator) as srv:
        target = app.RouterTarget(url=srv.url, user="admin", password=Secret("pw-123456"),
                                  allow_http=True)
        assert app.iot_net(target, _desired(), confirm=lambda r: True).verified
        assert moves == [("iot0", None, "172.16.1.1/24")]
        app.delete_net(target, "Azkaban", confirm=lambda n: True)
        assert moves[-1] == ("iot0", "172.16.1.1/24", None)


def test_a_silent_https_client_does_not_block_the_next_one(tmp_path):
    import socket

    from labctl.router.asus.emulator import EmulatorServer, RouterEmulator, ensure_certificate

    cert, key = ensure_certificate(tmp_path / "cert")
    assert (key.stat().st_mode & 0o777) == 0o600
    with EmulatorServer(RouterEmulator(), https=True, certfile=cert, keyfile=key) as srv:
        silent = socket.create_connection(("127.0.0.1", srv.port))  # connects, sends nothing
        try:
            s = make_session(srv.url, pin_store=tmp_path / "pins.json", retries=0, timeout=2.0)
            t0 = time.monotonic()
            assert s.get("/Main_Login.asp").status_code == 200
            assert time.monotonic() - t0 < 2.0
        finally:
            silent.close()


def test_an_oversized_body_is_refused_and_the_emulator_keeps_serving():
    import http.client

    from labctl.router.asus.emulator import EmulatorServer, RouterEmulator
    from labctl.router.asus.emulator.httpd import MAX_BODY

    emulator = RouterEmulator()
    with EmulatorServer(emulator) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.putrequest("POST", "/applyapp.cgi")
        conn.putheader("Content-Length", str(MAX_BODY + 1))
        conn.endheaders()
        conn.send(b"x" * (MAX_BODY + 1))
        assert conn.getresponse().status == 400
        conn.close()
        assert emulator.nvram == RouterEmulator().nvram  # nothing was written
        s = make_session(srv.url, allow_http=True, retries=0, timeout=2.0)
        assert s.get("/Main_Login.asp").status_code == 200


def test_the_form_parser_follows_init_cgi():
    from labctl.router.asus.emulator.cgi import form_fields, merged_fields, unescape

    assert form_fields("a=1&b=2;c=3") == {"a": "1", "b": "2", "c": "3"}
    # each assignment is unescaped whole, then split on the first "="
    assert form_fields("login_authorization%3DYWRtaW46eA%3D%3D") == {
        "login_authorization": "YWRtaW46eA=="}
    assert form_fields("k=v=w") == {"k": "v=w"}
    assert form_fields("a+b=c+d%2B") == {"a b": "c d+"}
    assert form_fields("noequals&x=1&&x=2") == {"x": "2"}  # dropped; the last one wins
    assert form_fields("x=") == {"x": ""}
    assert form_fields("hook=a%3Bb") == {"hook": "a;b"}
    assert unescape(b"100%") == "100%" and unescape(b"%zz") == "%zz"
    assert unescape(b"%C3%A9") == "\u00e9"
    assert merged_fields("a=q&b=q", b"b=body") == {"a": "q", "b": "body"}


def test_the_json_reader_accepts_what_json_c_does():
    import pytest

    from labctl.router.asus.emulator.cgi import JsonError, lenient_json

    assert lenient_json('{"a": "1", "b": [1, 2.5, true, null]}') == {"a": "1",
                                                                   "b": [1, 2.5, True, None]}
    assert lenient_json("{'a': 'it\\'s', \"b\": 'x\"y'}") == {"a": "it's", "b": 'x"y'}
    assert lenient_json("{'u': '\\u00e9\\n'}") == {"u": "\u00e9\n"}
    for bad in ("", "{", "{'a' 1}", "{'a': 1} x", "a=1&b=2", "{a: 1}", "'open"):
        with pytest.raises(JsonError):
            lenient_json(bad)
    deep = "[" * 100 + "]" * 100
    with pytest.raises(JsonError):
        lenient_json(deep)
