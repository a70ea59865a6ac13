"""The WinRM (pypsrp) runner, tested at its boundary.

Two layers:
* pypsrp's ``WSMan``, ``RunspacePool`` and ``PowerShell`` replaced by stateful fakes that
  record what the runner handed them (kwargs, script text, parameters) and can raise pypsrp's
  own exceptions or return error records;
* the real pypsrp/requests stack against real sockets on 127.0.0.1: a closed port, a TLS
  endpoint with a self-signed certificate (not trusted by default, trusted via
  ``ca_trust_path``) that answers 401 or never answers.
"""

from __future__ import annotations

import base64
import datetime
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from pypsrp import exceptions as px
from pypsrp.complex_objects import PSInvocationState

from labctl.core.errors import (
    AuthError,
    ConnectTimeout,
    HostUnreachable,
    RemoteCommandError,
    TransportError,
    UsageError,
)
from labctl.core.playbook.hyperv import HyperVHost
from labctl.core.secrets import MASK, Secret
from labctl.transport.powershell import RenderedScript
from labctl.transport.psrp import PsrpRunner
from labctl.transport.runners import make_runner

HOSTILE = "it's \"q\" $(Stop-Computer) `id` ; exit\nline2 Zürich ✓"


# --------------------------------------------------------------------------- fakes


class FakeErrorRecord:
    """Shaped like pypsrp.complex_objects.ErrorRecord: str() is the record's ToString."""

    def __init__(self, text: str, details: str | None = None) -> None:
        self._text = text
        self.details_message = details
        self.exception = None

    def __str__(self) -> str:
        return self._text


class FakeStreams:
    def __init__(self) -> None:
        self.error: list = []


class Remote:
    """The fake remote end: what was sent, and what to answer or raise."""

    def __init__(self) -> None:
        self.wsman_kwargs: list[dict] = []
        self.pools_opened = 0
        self.pools_closed = 0
        self.invocations: list[dict] = []
        self.output: list = ['{"ok": true}']
        self.errors: list = []
        self.failed = False
        self.raise_on_open: BaseException | None = None
        self.raise_on_invoke: BaseException | None = None
        self.running_polls = 0  # how many polls the pipeline keeps running
        self.poll_timeouts: list[int] = []
        self.clock: list[float] | None = None
        self.stopped = 0


@pytest.fixture
def remote(monkeypatch) -> Remote:
    import pypsrp.powershell
    import pypsrp.wsman

    rem = Remote()

    class FakeWSMan:
        def __init__(self, server, **kwargs):
            rem.wsman_kwargs.append({"server": server, **kwargs})

    class FakePool:
        def __init__(self, wsman, **kwargs):
            assert isinstance(wsman, FakeWSMan)
            self.state = "before"

        def open(self):
            if rem.raise_on_open is not None:
                raise rem.raise_on_open
            rem.pools_opened += 1
            self.state = "opened"

        def close(self):
            rem.pools_closed += 1
            self.state = "closed"

    class FakePowerShell:
        def __init__(self, pool):
            assert pool.state == "opened", "PowerShell created on a pool that is not open"
            self.script: str | None = None
            self.params: dict = {}
            self.had_errors = False
            self.streams = FakeStreams()

        def add_script(self, script, use_local_scope=None):
            self.script = script
            return self

        def add_parameters(self, parameters):
            self.params.update(parameters)
            return self

        def begin_invoke(self):
            rem.invocations.append({"script": self.script, "params": dict(self.params)})
            if rem.raise_on_invoke is not None:
                raise rem.raise_on_invoke
            self.polls_left = rem.running_polls
            self.state = PSInvocationState.RUNNING
            self._finish_if_done()

        def poll_invoke(self, timeout=None):
            assert self.state == PSInvocationState.RUNNING
            assert timeout is not None and 1 <= timeout <= 20
            rem.poll_timeouts.append(timeout)
            if rem.clock is not None:
                rem.clock[0] += timeout  # the server held the Receive for `timeout` s
            self.polls_left -= 1
            self._finish_if_done()

        def _finish_if_done(self):
            if self.polls_left <= 0:
                self.streams.error = list(rem.errors)
                self.had_errors = rem.failed or bool(rem.errors)
                self.output = list(rem.output)
                self.state = PSInvocationState.COMPLETED

        def stop(self):
            rem.stopped += 1
            self.state = PSInvocationState.STOPPED

    monkeypatch.setattr(pypsrp.wsman, "WSMan", FakeWSMan)
    monkeypatch.setattr(pypsrp.powershell, "RunspacePool", FakePool)
    monkeypatch.setattr(pypsrp.powershell, "PowerShell", FakePowerShell)
    return rem


def cfg(**kw) -> HyperVHost:
    base = dict(host="hyperv01.lab.example", transport="winrm", user="LAB\\labadmin",
                password={"env": "LABCTL_TEST_WINRM_PW"})
    base.update(kw)
    return HyperVHost(**base)


@pytest.fixture(autouse=True)
def _pw(monkeypatch):
    monkeypatch.setenv("LABCTL_TEST_WINRM_PW", "not-the-canary-pw")


def script(body="param($Name)\nGet-VM -Name $Name | ConvertTo-Json -Compress", name="vm/get",
           **params) -> RenderedScript:
    return RenderedScript(name=name, body=body, params=params)


# --------------------------------------------------------------------------- boundary tests


def test_make_runner_is_lazy(monkeypatch, remote):
    monkeypatch.delenv("LABCTL_TEST_WINRM_PW")
    runner = make_runner(cfg())  # password not set: must not matter until run()
    assert isinstance(runner, PsrpRunner) and runner.host == "hyperv01.lab.example"
    assert remote.wsman_kwargs == []
    with pytest.raises(UsageError, match="^vm/get: password for"):
        runner.run(script(Name="x"))


def test_defaults_are_https_5986_with_certificate_validation(remote):
    with make_runner(cfg()) as r:
        r.run(script(Name="x"))
    kw = remote.wsman_kwargs[0]
    assert kw["server"] == "hyperv01.lab.example"
    assert kw["port"] == 5986 and kw["ssl"] is True
    assert kw["cert_validation"] is True
    assert kw["auth"] == "negotiate"
    assert kw["username"] == "LAB\\labadmin" and kw["password"] == "not-the-canary-pw"


def test_ca_trust_path_and_auth_are_passed_through(remote, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "labctl-winrm.pem").write_text("pem")
    with make_runner(cfg(ca_trust_path="~/labctl-winrm.pem", auth="kerberos")) as r:
        r.run(script(Name="x"))
    kw = remote.wsman_kwargs[0]
    assert kw["cert_validation"] == str(tmp_path / "labctl-winrm.pem")  # ~ expanded
    assert kw["auth"] == "kerberos"


def test_missing_ca_trust_path_is_a_usage_error(remote, tmp_path):
    with make_runner(cfg(ca_trust_path=str(tmp_path / "nope.pem"))) as r:
        with pytest.raises(UsageError, match="ca_trust_path"):
            r.run(script(Name="x"))
    assert remote.wsman_kwargs == []


def test_params_go_through_add_parameters_never_into_the_script_text(remote):
    body = "param($Name, $Vlans, $Opts)\nConvertTo-Json @{n=$Name} -Compress"
    params = {"Name": HOSTILE, "Vlans": [1, 52], "Opts": {"Deep": HOSTILE, "On": True}}
    with make_runner(cfg()) as r:
        r.run(RenderedScript("vm/create", body, params))
    inv = remote.invocations[0]
    assert inv["script"] == body  # exactly the body, nothing spliced in
    assert inv["params"] == params
    assert "Stop-Computer" not in inv["script"] and "Zürich" not in inv["script"]


def test_secret_params_are_revealed_only_to_the_transport(remote):
    with make_runner(cfg()) as r:
        r.run(script(Name="x", Password=Secret("CANARY-psrp-param-1")))
    assert remote.invocations[0]["params"]["Password"] == "CANARY-psrp-param-1"


def test_pool_is_opened_once_and_reused_then_closed(remote):
    r = make_runner(cfg())
    for i in range(3):
        remote.output = [f'{{"i": {i}}}']
        assert r.run(script(Name=str(i))) == {"i": i}
    assert len(remote.wsman_kwargs) == 1 and remote.pools_opened == 1
    r.close()
    assert remote.pools_closed == 1


def test_error_records_become_remote_command_error_quoting_the_message(remote):
    remote.errors = [FakeErrorRecord("Hyper-V was unable to find a virtual machine with name "
                                     "\"lab-vm\".")]
    with make_runner(cfg()) as r:
        with pytest.raises(RemoteCommandError) as ei:
            r.run(script(name="vm/get", Name="lab-vm"))
    e = ei.value
    assert e.script == "vm/get"
    assert "unable to find a virtual machine" in str(e)
    assert str(e).startswith("vm/get failed on hyperv01.lab.example")
    assert "Get-VM" not in str(e)  # never the body


def test_error_details_message_is_preferred(remote):
    remote.errors = [FakeErrorRecord("generic", details="The specific reason.")]
    with make_runner(cfg()) as r:
        with pytest.raises(RemoteCommandError, match="The specific reason"):
            r.run(script(Name="x"))


def test_failed_pipeline_without_record_is_an_error(remote):
    remote.failed = True
    with make_runner(cfg()) as r:
        with pytest.raises(RemoteCommandError, match="pipeline failed"):
            r.run(script(Name="x"))


def test_secret_in_remote_error_is_masked(remote):
    canary = "CANARY-psrp-err-77"
    remote.errors = [FakeErrorRecord(f"Logon failure for password {canary}")]
    with make_runner(cfg()) as r:
        with pytest.raises(RemoteCommandError) as ei:
            r.run(script(Name="x", Password=Secret(canary)))
    assert canary not in str(ei.value) and MASK in str(ei.value)


@pytest.mark.parametrize("output,needle", [
    (["not json"], "not a JSON document"),
    (['{"a": 1}', '{"b": 2}'], "more than one JSON document"),
    ([], "printed nothing"),
])
def test_output_must_be_exactly_one_json_document(remote, output, needle):
    remote.output = output
    with make_runner(cfg()) as r:
        with pytest.raises(RemoteCommandError, match=needle):
            r.run(script(name="facts/read", Name="x"))


@pytest.mark.parametrize("exc,kind,needle", [
    (px.AuthenticationError("Failed to authenticate the user LAB\\labadmin with negotiate"),
     AuthError, "authentication"),
    (px.WinRMTransportError("http", 401, ""), AuthError, "401"),
    (px.WinRMTransportError("http", 500, "boom"), TransportError, "HTTP 500"),
    (px.WSManFaultError(5, "hv", "Access is denied.", None, None, None), AuthError, "denied"),
    (requests.exceptions.ConnectTimeout("timed out"), ConnectTimeout, "did not answer"),
    (requests.exceptions.ReadTimeout("timed out"), ConnectTimeout, "did not answer"),
    (requests.exceptions.ConnectionError("refused"), HostUnreachable, "cannot connect"),
    (requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), TransportError, "TLS"),
    (ValueError("For basic auth, the password must be specified"), UsageError, "invalid"),
])
@pytest.mark.parametrize("stage", ["open", "invoke"])
def test_transport_errors_are_translated_and_name_the_script(remote, exc, kind, needle, stage):
    setattr(remote, f"raise_on_{stage}", exc)
    with make_runner(cfg()) as r:
        with pytest.raises(kind) as ei:
            r.run(script(name="facts/read", Name="x"))
    assert type(ei.value) is kind
    assert str(ei.value).startswith("facts/read: ") and needle in str(ei.value)
    assert "https://hyperv01.lab.example:5986" in str(ei.value)


def test_a_broken_connection_reconnects_on_the_next_script(remote):
    r = make_runner(cfg())
    remote.raise_on_invoke = requests.exceptions.ConnectionError("reset")
    with pytest.raises(HostUnreachable):
        r.run(script(Name="x"))
    remote.raise_on_invoke = None
    assert r.run(script(Name="x")) == {"ok": True}
    assert remote.pools_opened == 2
    r.close()


def test_password_canary_never_in_errors_or_logs(remote, monkeypatch, caplog):
    canary = "CANARY-winrm-pw-3f2a"
    monkeypatch.setenv("LABCTL_TEST_WINRM_PW", canary)
    caplog.set_level(logging.DEBUG)
    remote.raise_on_open = px.AuthenticationError(f"Failed to authenticate with {canary}")
    with make_runner(cfg()) as r:
        with pytest.raises(AuthError) as ei:
            r.run(script(Name="x"))
    assert remote.wsman_kwargs[0]["password"] == canary  # reached the transport ...
    text = " ".join([str(ei.value), ei.value.hint or "", repr(ei.value), caplog.text])
    assert canary not in text  # ... and nowhere else


# --------------------------------------------------------------------------- real sockets


def _self_signed(tmp: Path, cn: str = "127.0.0.1") -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(cn))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_p, key_p = tmp / "cert.pem", tmp / "key.pem"
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cert_p, key_p


class _Handler(BaseHTTPRequestHandler):
    seen_auth: list = []

    def do_POST(self):  # noqa: N802
        type(self).seen_auth.append(self.headers.get("Authorization"))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_401(tmp_path):
    cert, key = _self_signed(tmp_path)
    _Handler.seen_auth = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1], cert
    finally:
        srv.shutdown()
        srv.server_close()


def real_cfg(port: int, **kw) -> HyperVHost:
    base = dict(host="127.0.0.1", transport="winrm", port=port, user="labadmin",
                password={"env": "LABCTL_TEST_WINRM_PW"}, auth="basic", timeout=5)
    base.update(kw)
    return HyperVHost(**base)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_closed_port_is_host_unreachable():
    with make_runner(real_cfg(_free_port())) as r:
        with pytest.raises(HostUnreachable, match="^facts/read: cannot connect"):
            r.run(script(name="facts/read", Name="x"))


def test_real_self_signed_certificate_is_refused_by_default(tls_401):
    port, _ = tls_401
    with make_runner(real_cfg(port)) as r:
        with pytest.raises(TransportError) as ei:
            r.run(script(name="facts/read", Name="x"))
    assert "could not be verified" in str(ei.value) and "ca_trust_path" in ei.value.hint
    assert _Handler.seen_auth == []  # no request (and no credential) got through


def test_real_401_with_trusted_ca_is_auth_error_and_password_never_logged(
        tls_401, monkeypatch, caplog):
    port, cert = tls_401
    canary = "CANARY-winrm-real-pw-5c"
    monkeypatch.setenv("LABCTL_TEST_WINRM_PW", canary)
    caplog.set_level(logging.DEBUG)
    with make_runner(real_cfg(port, ca_trust_path=str(cert))) as r:
        with pytest.raises(AuthError) as ei:
            r.run(script(name="facts/read", Name="x"))
    # the credential did travel (inside TLS) ...
    basic = base64.b64encode(f"labadmin:{canary}".encode()).decode()
    assert f"Basic {basic}" in _Handler.seen_auth
    # ... and appears in no message or log record, neither clear nor base64
    text = " ".join([str(ei.value), ei.value.hint or "", caplog.text])
    assert canary not in text and basic not in text


def test_real_silent_endpoint_times_out():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(5)
    port = lsock.getsockname()[1]
    held: list[socket.socket] = []

    def accept():
        try:
            while True:
                c, _ = lsock.accept()
                held.append(c)  # accept, never answer
        except OSError:
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        with make_runner(real_cfg(port, ssl=False, auth="ntlm")) as r:
            with pytest.raises(ConnectTimeout, match="^facts/read: "):
                r.run(script(name="facts/read", Name="x"))
    finally:
        lsock.close()
        for c in held:
            c.close()


def test_pypsrp_debug_logging_is_held_back_and_values_are_serializable(remote):
    """pypsrp logs whole WSMan messages at DEBUG; the runner keeps its loggers at INFO."""
    import ipaddress

    logging.getLogger("pypsrp.wsman").setLevel(logging.NOTSET)
    with make_runner(cfg()) as r:
        r.run(script(Name="x", Ip=ipaddress.IPv4Interface("192.168.0.1/24"),
                     Net=ipaddress.IPv4Network("172.16.1.0/24"), Ids=(1, 52)))
    assert logging.getLogger("pypsrp.wsman").getEffectiveLevel() >= logging.INFO
    assert remote.invocations[0]["params"] == {"Name": "x", "Ip": "192.168.0.1/24",
                                               "Net": "172.16.1.0/24", "Ids": [1, 52]}


def test_real_pypsrp_powershell_object_gets_script_and_named_parameters(monkeypatch):
    """With pypsrp's own PowerShell class (only the pool and invoke faked): the body becomes
    one script Command unchanged, each parameter a named CommandParameter, and a None value
    is left out instead of becoming a bare switch."""
    import pypsrp.powershell
    import pypsrp.wsman

    captured: list = []

    class Pool:
        protocol_version = "2.3"

        def __init__(self, wsman, **kw):
            pass

        def open(self):
            pass

        def close(self):
            pass

    def fake_begin_invoke(self, *a, **kw):
        captured.append(self)
        self.output = ['{"done": true}']
        self.state = PSInvocationState.COMPLETED

    monkeypatch.setattr(pypsrp.wsman, "WSMan", lambda server, **kw: object())
    monkeypatch.setattr(pypsrp.powershell, "RunspacePool", Pool)
    monkeypatch.setattr(pypsrp.powershell.PowerShell, "begin_invoke", fake_begin_invoke)
    body = "param($Name, $Ids, $Notes, $Force)\n'{}'"
    with make_runner(cfg()) as r:
        assert r.run(RenderedScript("vm/set", body, {"Name": HOSTILE, "Ids": [1, 52],
                                                     "Notes": None, "Force": True})) == {
            "done": True}
    ps = captured[0]
    assert isinstance(ps, pypsrp.powershell.PowerShell)
    (cmd,) = ps.commands
    assert cmd.cmd == body and cmd.is_script is True
    assert [(a.name, a.value) for a in cmd.args] == [("Name", HOSTILE), ("Ids", [1, 52]),
                                                      ("Force", True)]


def test_long_script_is_polled_until_done(remote):
    remote.running_polls = 3
    with make_runner(cfg(timeout=120)) as r:
        assert r.run(script(Name="x")) == {"ok": True}
    assert remote.poll_timeouts == [20, 20, 20] and remote.stopped == 0


def test_script_past_its_timeout_is_stopped_and_times_out(remote, monkeypatch):
    import labctl.transport.psrp as psrp_mod

    remote.clock = [1000.0]
    monkeypatch.setattr(psrp_mod.time, "monotonic", lambda: remote.clock[0])
    remote.running_polls = 100
    with make_runner(cfg(timeout=30)) as r:
        with pytest.raises(ConnectTimeout) as ei:
            r.run(script(name="vhd/create", Name="x"))
    assert str(ei.value) == ("vhd/create: did not finish on https://hyperv01.lab.example:5986 "
                             "within 30 s (stopped)")
    assert remote.stopped == 1
    assert sum(remote.poll_timeouts) == 30  # never waited past the deadline


def test_cli_over_real_winrm_401_is_exit_5_without_the_password(tls_401, tmp_path, cli_run,
                                                                 monkeypatch, caplog):
    import yaml

    port, cert = tls_401
    canary = "CANARY-cli-winrm-pw-8e1"
    monkeypatch.setenv("LABCTL_TEST_WINRM_PW", canary)
    caplog.set_level(logging.DEBUG)
    root = Path(__file__).resolve().parent.parent
    doc = yaml.safe_load((root / "playbooks" / "home-lab.yaml").read_text())
    doc["hyperv"] = {"host": "127.0.0.1", "transport": "winrm", "port": port,
                     "user": "labadmin", "password": {"env": "LABCTL_TEST_WINRM_PW"},
                     "auth": "basic", "ca_trust_path": str(cert), "timeout": 10}
    pb = tmp_path / "lab.yaml"
    pb.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = cli_run("-vv", "status", "-f", str(pb))
    assert r.exit_code == 5, r
    assert "facts/read" in r.stderr and "authentication" in r.stderr.lower()
    basic = base64.b64encode(f"labadmin:{canary}".encode()).decode()
    for text in (r.stdout, r.stderr, caplog.text):
        assert canary not in text and basic not in text
