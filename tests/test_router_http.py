"""labctl.transport.http: TOFU pinning, CA verification, plain-HTTP opt-in, error mapping."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl

import pytest

from labctl.core.errors import HostUnreachable, TransportError, UsageError
from labctl.transport.http import make_session
from tests.helpers.router_tls import HelloServer, ca_and_leaf, self_signed


def _der_sha256(cert_path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    return hashlib.sha256(der).hexdigest()


def test_tofu_first_use_stores_the_pin_then_enforces_it(tmp_path):
    cert, key = self_signed(tmp_path)
    pins = tmp_path / "pins.json"
    with HelloServer(cert, key) as srv:
        s = make_session(srv.url, pin_store=pins)
        assert s.get("/x").json() == {"hello": "world"}
        stored = json.loads(pins.read_text())
        assert stored == {f"127.0.0.1:{srv.port}": _der_sha256(cert)}
        # a fresh session reuses the pin (no new entry, same value)
        assert make_session(srv.url, pin_store=pins).get("/y").status_code == 200
        assert json.loads(pins.read_text()) == stored


def test_changed_certificate_is_refused_with_a_repin_hint(tmp_path):
    cert, key = self_signed(tmp_path, "a")
    cert2, key2 = self_signed(tmp_path, "b")
    pins = tmp_path / "pins.json"
    with HelloServer(cert, key) as srv:
        make_session(srv.url, pin_store=pins).get("/")
        hits = srv.hits
        srv.swap_cert(cert2, key2)
        with pytest.raises(TransportError) as ei:
            make_session(srv.url, pin_store=pins).get("/")
        assert "changed" in ei.value.message
        assert "pins.json" in (ei.value.hint or "")
        assert srv.hits == hits  # the request never reached the handler
        # the pin was not silently replaced
        assert json.loads(pins.read_text())[f"127.0.0.1:{srv.port}"] == _der_sha256(cert)


def test_explicit_fingerprint_mismatch_refused_and_match_accepted(tmp_path):
    cert, key = self_signed(tmp_path)
    pins = tmp_path / "pins.json"
    with HelloServer(cert, key) as srv:
        with pytest.raises(TransportError):
            make_session(srv.url, pin_store=pins, fingerprint="00" * 32).get("/")
        fp = ":".join(_der_sha256(cert)[i:i + 2] for i in range(0, 64, 2)).upper()
        assert make_session(srv.url, pin_store=pins, fingerprint=fp).get("/").status_code == 200
        assert not pins.exists()  # explicit fingerprints are not stored


def test_no_tofu_refuses_unknown_self_signed(tmp_path):
    cert, key = self_signed(tmp_path)
    with HelloServer(cert, key) as srv:
        with pytest.raises(TransportError) as ei:
            make_session(srv.url, pin_store=tmp_path / "p.json", trust_on_first_use=False).get("/")
        assert _der_sha256(cert) in (ei.value.hint or "")


def test_ca_verified_server_works_without_pinning(tmp_path):
    ca, leaf, key = ca_and_leaf(tmp_path)
    pins = tmp_path / "pins.json"
    with HelloServer(leaf, key) as srv:
        s = make_session(srv.url, pin_store=pins, ca_bundle=str(ca))
        assert s.get("/").json() == {"hello": "world"}
        assert not pins.exists()
        # a different CA does not verify it: a hard TLS error, not a silent pin
        (tmp_path / "other").mkdir()
        other_ca, _, _ = ca_and_leaf(tmp_path / "other")
        with pytest.raises(TransportError):
            make_session(srv.url, pin_store=pins, ca_bundle=str(other_ca)).get("/")


def test_plain_http_only_when_allowed(tmp_path):
    with HelloServer() as srv:
        with pytest.raises(UsageError):
            make_session(srv.url, pin_store=tmp_path / "p.json")
        s = make_session(srv.url, pin_store=tmp_path / "p.json", allow_http=True)
        assert s.get("/").status_code == 200
    # an https session refuses to follow into http://
    s = make_session("https://127.0.0.1:1", pin_store=tmp_path / "p.json")
    with pytest.raises(UsageError):
        s.get("http://127.0.0.1:1/")


def test_unreachable_and_timeout_are_translated(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    s = make_session(f"http://127.0.0.1:{port}", allow_http=True, retries=0,
                     pin_store=tmp_path / "p.json")
    with pytest.raises(HostUnreachable):
        s.get("/")
    # a listener that never answers: the default timeout fires
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    try:
        s = make_session(f"http://127.0.0.1:{lsock.getsockname()[1]}", allow_http=True,
                         retries=0, timeout=0.3, pin_store=tmp_path / "p.json")
        with pytest.raises(TransportError) as ei:
            s.get("/")
        assert ei.value.exit_code == 5
    finally:
        lsock.close()


@pytest.mark.netns
def test_netns_session_connects_inside_the_namespace(tmp_path):
    import os
    import subprocess

    from labctl.transport.netns import netns_context

    ns = f"rth{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        cert, key = self_signed(tmp_path)
        with netns_context(ns):
            srv = HelloServer(cert, key)  # its listening socket lives in the namespace
        with srv:
            s = make_session(srv.url, pin_store=tmp_path / "p.json", netns=ns)
            assert s.get("/").json() == {"hello": "world"}
            # from the root namespace the same address has nothing listening
            plain = make_session(srv.url, pin_store=tmp_path / "p2.json", retries=0)
            with pytest.raises(TransportError):
                plain.get("/")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
