"""Test helpers: throwaway certificates and a tiny threaded HTTPS server on 127.0.0.1."""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path

import trustme

from labctl.transport.certs import ensure_self_signed


def self_signed(tmp: Path, stem: str = "self", cn: str = "router.asus.com") -> tuple[Path, Path]:
    """A self-signed certificate like a router's (no CA vouches for it): ``(cert, key)``."""
    return ensure_self_signed(tmp, stem=stem, common_name=cn)


def ca_and_leaf(tmp: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, leaf.crt, leaf.key): a test CA (trustme) and a leaf for 127.0.0.1/localhost."""
    ca = trustme.CA(organization_name="labctl test CA")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = tmp / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_path))
    leaf_cert, leaf_key = tmp / "leaf.crt", tmp / "leaf.key"
    leaf.cert_chain_pems[0].write_to_path(str(leaf_cert))
    leaf.private_key_pem.write_to_path(str(leaf_key))
    return ca_path, leaf_cert, leaf_key


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b'{"hello":"world"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *a) -> None:
        pass


class HelloServer:
    """HTTP(S) server answering JSON on 127.0.0.1; ``swap_cert`` changes the served cert."""

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        self.httpd.hits = 0  # type: ignore[attr-defined]
        self.ctx: ssl.SSLContext | None = None
        if cert:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(str(cert), str(key))
            self.httpd.socket = self.ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.ctx else 'http'}://127.0.0.1:{self.port}"

    @property
    def hits(self) -> int:
        return self.httpd.hits  # type: ignore[attr-defined]

    def swap_cert(self, cert: Path, key: Path) -> None:
        assert self.ctx is not None
        self.ctx.load_cert_chain(str(cert), str(key))

    def __enter__(self) -> HelloServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
