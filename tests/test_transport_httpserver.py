"""The shared HTTPS server base (sensor API, router emulator): a silent TLS client blocks
nobody, a dripping head is cut at its whole deadline, the connection cap holds, oversized
bodies are refused and the connection stays usable after an error reply, query strings
never reach the log."""

from __future__ import annotations

import logging
import socket
import ssl
import time

import pytest
import requests

from labctl.transport.certs import ensure_self_signed, server_context
from labctl.transport.httpserver import BaseHandler, BodyTooLarge, LabHTTPServer


class Handler(BaseHandler):
    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(200, b"ok")

    def do_POST(self) -> None:  # noqa: N802
        if self.path == "/unknown":
            self._reply(404, b"no")  # the body is left unread on purpose
            return
        try:
            self._reply(200, self.read_body())
        except BodyTooLarge:
            self._reply(400, b"too large")


@pytest.fixture
def server(tmp_path):
    cert, key = ensure_self_signed(tmp_path, names=["127.0.0.1"])
    srv = LabHTTPServer(("127.0.0.1", 0), Handler, ssl_context=server_context(cert, key),
                        header_timeout=1.0, idle_timeout=2.0, max_connections=4,
                        max_body=1024, drain_limit=4096)
    srv.start()
    yield srv, f"https://127.0.0.1:{srv.server_address[1]}", str(cert)
    srv.stop()


def test_a_silent_tls_client_does_not_delay_another(server):
    srv, url, ca = server
    silent = [socket.create_connection(srv.server_address[:2]) for _ in range(2)]
    try:
        requests.get(url, verify=ca, timeout=5)  # warm up
        t = time.monotonic()
        assert requests.get(url, verify=ca, timeout=5).text == "ok"
        assert time.monotonic() - t < 0.1
    finally:
        for s in silent:
            s.close()


def _tls(srv, ca):
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(srv.server_address[:2], timeout=5)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_dripping_head_is_cut_at_its_whole_deadline(server):
    srv, url, ca = server
    s = _tls(srv, ca)
    s.sendall(b"GET / HTTP/1.1\r\n")
    t = time.monotonic()
    closed = False
    for _ in range(20):  # one header byte every 0.3 s: each read resets a socket timeout
        try:
            s.sendall(b"X")
        except OSError:
            closed = True
            break
        time.sleep(0.3)
        try:
            s.settimeout(0.01)
            if s.recv(1) == b"":
                closed = True
                break
        except (TimeoutError, ssl.SSLWantReadError):
            pass
        except OSError:
            closed = True
            break
    assert closed and time.monotonic() - t < 2.5
    assert srv.head_watchdog.cut >= 1
    assert requests.get(url, verify=ca, timeout=5).text == "ok"


def test_bodies_are_bounded_and_the_connection_survives_an_error_reply(server):
    srv, url, ca = server
    with requests.Session() as sess:
        assert sess.post(url + "/echo", data=b"a" * 100, verify=ca).content == b"a" * 100
        # refused and closed: the reply says so, or the session would race the close
        big = sess.post(url + "/echo", data=b"a" * 2000, verify=ca)
        assert big.status_code == 400 and big.headers["Connection"] == "close"
        # too large to drain, unread: closed after the reply, which says so
        huge = sess.post(url + "/unknown", data=b"a" * 5000, verify=ca)
        assert huge.status_code == 404 and huge.headers["Connection"] == "close"
        kept = sess.post(url + "/echo", data=b"b" * 10, verify=ca)
        assert kept.content == b"b" * 10 and "Connection" not in kept.headers
        # an unread body after a 404 must not become the next request
        assert sess.post(url + "/unknown", data=b"GET /evil HTTP/1.1\r\n\r\n",
                         verify=ca).status_code == 404
        assert sess.get(url + "/after", verify=ca).text == "ok"


def test_the_connection_cap_closes_the_extra_connections(server):
    srv, url, ca = server
    held = [_tls(srv, ca) for _ in range(4)]
    try:
        extra = socket.create_connection(srv.server_address[:2], timeout=2)
        extra.settimeout(2)
        assert extra.recv(1) == b""  # closed at once by the accept thread
        extra.close()
    finally:
        for h in held:
            h.close()
    time.sleep(0.2)
    assert requests.get(url, verify=ca, timeout=5).text == "ok"


def test_query_strings_never_reach_the_log(server, caplog):
    srv, url, ca = server
    caplog.set_level(logging.DEBUG, logger="labctl.transport.httpserver")
    requests.get(url + "/x?token=SeCrEt-123", verify=ca, timeout=5)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/x?" in text and "SeCrEt-123" not in text


def test_an_existing_shared_state_folder_keeps_its_mode(tmp_path):
    """`--state DIR` on an existing shared folder: labctl's sensor store and certificate
    helper create their own folders 0700 and leave the existing one alone."""
    import os
    import stat

    from labctl.sensor.store import SensorStore

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    store = SensorStore(shared)
    store.close()
    ensure_self_signed(shared / "tls", names=["127.0.0.1"])
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "tls").stat().st_mode) == 0o700
