"""One HTTP(S) server base for labctl's own servers: the embedded sensor API and the router
emulator.

What it guarantees, for every server built on it:

- the TLS handshake runs in the connection's worker thread, never in the accept thread, so a
  client that connects and sends nothing delays nobody else;
- a deadline for the whole request head (``header_timeout``, kept by one watchdog thread,
  :class:`HeadWatchdog`): a client dripping header bytes (slowloris) is cut off, since a
  socket timeout alone restarts with every byte; idle keep-alive connections are closed
  after ``idle_timeout``;
- at most ``max_connections`` connections at once; the next ones are closed at once;
- request bodies are bounded (``max_body``): :meth:`BaseHandler.read_body` refuses larger
  ones, drains moderately large ones so the client reads the answer instead of a reset, and
  closes the connection otherwise;
- after any error reply, whatever was left of the request body is drained (or the
  connection closed), so the next request on a keep-alive connection is parsed cleanly;
- a reply after which the server will close the connection says so (``Connection:
  close``), so a keep-alive client opens a new connection instead of racing the close.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("labctl.transport.httpserver")

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_DRAIN_LIMIT = 1 << 20


class HeadWatchdog:
    """Closes connections whose request head is not complete ``timeout`` s after it began.

    One thread checks the connections waiting for a head every ``tick`` seconds and shuts
    down those past their deadline (the blocked read returns, the handler ends, its slot
    under the connection cap is freed). A keep-alive connection waiting for its next request
    is waiting for a head too, so it is closed after ``timeout`` seconds of silence.
    """

    def __init__(self, timeout: float, tick: float = 0.25) -> None:
        self.timeout = timeout
        self.tick = min(tick, max(timeout / 4, 0.01))
        self._deadlines: weakref.WeakKeyDictionary[BaseHandler, float] = \
            weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cut = 0  # connections closed for a late head (for tests and status)

    def watch(self, handler: BaseHandler) -> None:
        with self._lock:
            self._deadlines[handler] = time.monotonic() + self.timeout
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="http-heads",
                                                daemon=True)
                self._thread.start()

    def unwatch(self, handler: BaseHandler) -> None:
        with self._lock:
            self._deadlines.pop(handler, None)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            with self._lock:
                late = [h for h, t in self._deadlines.items() if t <= now]
                for h in late:
                    del self._deadlines[h]
            for h in late:
                self.cut += 1
                log.debug("request head from %s not complete within %g s; closing",
                          h.client_address[0], self.timeout)
                h.close_connection = True
                try:  # the plain socket's shutdown: the TLS object stays with its reader
                    socket.socket.shutdown(h.connection, socket.SHUT_RDWR)
                except OSError:
                    pass


class BodyTooLarge(Exception):
    """The request body is over the server's limit (or its Content-Length is invalid)."""


class BaseHandler(BaseHTTPRequestHandler):
    """Request handler with bounded bodies, draining and a quiet, redacting log."""

    protocol_version = "HTTP/1.1"
    server_version = "labctl"
    sys_version = ""
    # One write per reply (headers + body): avoids Nagle/delayed-ACK stalls of ~40 ms.
    wbufsize = 65536
    disable_nagle_algorithm = True
    server: LabHTTPServer

    _body_left: int = 0
    _said_connection: bool = False

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.header_timeout)

    def handle_one_request(self) -> None:
        # the head must arrive within header_timeout; the body and the next request on
        # a keep-alive connection get idle_timeout
        self.connection.settimeout(self.server.header_timeout)
        self._body_left = 0
        self._body_read = False
        self._said_connection = False
        watchdog = self.server.head_watchdog
        watchdog.watch(self)
        try:
            super().handle_one_request()
        finally:
            watchdog.unwatch(self)
        if not self.close_connection:
            self._drain_rest()
            self.connection.settimeout(self.server.idle_timeout)

    def parse_request(self) -> bool:
        ok = super().parse_request()  # the head is in: its deadline is met
        self.server.head_watchdog.unwatch(self)
        if ok:
            self.connection.settimeout(self.server.idle_timeout)
            try:
                self._body_left = max(0, int(self.headers.get("Content-Length") or 0))
            except ValueError:
                self._body_left = 0
        return ok

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection":
            self._said_connection = True
        super().send_header(keyword, value)

    def end_headers(self) -> None:
        # An unread body too large to drain will close the connection after this reply:
        # decide now, while the client can still be told.
        if self._body_left > self.server.drain_limit:
            self.close_connection = True
        if self.close_connection and not self._said_connection:
            super().send_header("Connection", "close")
            self._said_connection = True
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        # never log query strings: clients put tokens there
        log.debug("%s %s", self.client_address[0], redact_request_line(format % args))

    def read_body(self) -> bytes:
        """The request body, at most ``server.max_body`` bytes; raises BodyTooLarge."""
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw is not None else 0
        except ValueError:
            length = -1
        if length < 0 or length > self.server.max_body:
            if 0 < length <= self.server.drain_limit:
                self._drain(length)
            self.close_connection = True
            self._body_left = 0
            raise BodyTooLarge(f"bad Content-Length (at most {self.server.max_body} bytes)")
        data = self.rfile.read(length) if length else b""
        self._body_left = 0
        return data

    def _drain(self, n: int) -> None:
        left = n
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    def _drain_rest(self) -> None:
        """Discard an unread body so it does not become the next request."""
        left, self._body_left = self._body_left, 0
        if left <= 0:
            return
        if left > self.server.drain_limit:
            self.close_connection = True
            return
        try:
            self._drain(left)
        except OSError:
            self.close_connection = True


def redact_request_line(text: str) -> str:
    """``"GET /x?token=abc HTTP/1.1" 200 -`` -> ``"GET /x?… HTTP/1.1" 200 -``."""
    out = []
    for word in text.split(" "):
        if "?" in word:
            word = word.split("?", 1)[0] + "?…"
        out.append(word)
    return " ".join(out)


class LabHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server, TLS optional, with the guarantees in the module doc."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], handler: type[BaseHandler], *,
                 ssl_context: ssl.SSLContext | None = None,
                 max_body: int = DEFAULT_MAX_BODY, drain_limit: int = DEFAULT_DRAIN_LIMIT,
                 header_timeout: float = 10.0, idle_timeout: float = 30.0,
                 handshake_timeout: float = 10.0, max_connections: int = 64) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.max_body = max_body
        self.drain_limit = drain_limit
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self._slots = threading.BoundedSemaphore(max_connections)
        self.head_watchdog = HeadWatchdog(header_timeout)
        super().__init__(addr, handler)

    @property
    def https(self) -> bool:
        return self.ssl_context is not None

    def process_request(self, request: Any, client_address: Any) -> None:
        # in the accept thread: only the connection cap, nothing that can block
        if not self._slots.acquire(blocking=False):
            log.debug("connection cap (%d) reached; closing %s", self.max_connections,
                      client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # in the worker thread: the TLS handshake, then the HTTP exchange
        if self.ssl_context is not None:
            try:
                request.settimeout(self.handshake_timeout)
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                log.debug("TLS handshake with %s failed", client_address, exc_info=True)
                try:
                    request.close()
                except OSError:
                    pass
                return
        handler: Any = self.RequestHandlerClass
        try:
            handler(request, client_address, self)
        finally:
            try:
                request.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address, exc_info=True)

    def start(self, name: str = "labctl-http", poll_interval: float = 0.05
              ) -> threading.Thread:
        """Serve in a daemon thread; stop with :meth:`stop`."""
        t = threading.Thread(target=self.serve_forever, args=(poll_interval,), name=name,
                             daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.head_watchdog.stop()
        self.shutdown()
        self.server_close()
