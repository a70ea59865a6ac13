"""The ASUS router emulator's httpd: ASUSWRT 3.0.0.6 web endpoints over HTTP(S).

Why it is built like the device (asuswrt-merlin.ng ``release/src/router/httpd``: httpd.c,
cgi.c, web.c): failures are HTTP 200 with an ``error_status`` JSON body
(``send_login_page``); every query string and form body is read by the firmware's one parser
(:mod:`.cgi`, ``init_cgi``), the query's fields and the body's together; login v1
(``login.cgi``, base64) and v2 (``get_Nonce.cgi`` + ``login_v2.cgi``, sha256); app vs
browser User-Agents (Referer checks for browsers); ``appGet.cgi`` hooks;
``applyapp.cgi``/``apply.cgi`` echoing ``run_service``; ``Logout.asp``. Faults can be
injected (connection dropped mid-apply, 5xx, slow replies, a mangled write, a wrong echo) so
the driver's automatic restore can be proven.

The server is :class:`labctl.transport.httpserver.LabHTTPServer`: the TLS handshake runs in
each connection's worker thread (a client that connects and sends nothing delays nobody
else) and request bodies are bounded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets as pysecrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from labctl.core.errors import LabctlError
from labctl.router.asus.emulator.cgi import (
    JsonError,
    form_fields,
    lenient_json,
    merged_fields,
    unescape,
)
from labctl.router.asus.emulator.state import (
    AIHOME_API_LEVEL,
    HTTPD_AIHOME_VER,
    RouterEmulator,
    char_to_ascii,
    is_app_user_agent,
    is_dututil,
)
from labctl.transport.certs import ensure_self_signed, server_context
from labctl.transport.httpserver import BaseHandler, BodyTooLarge, LabHTTPServer

log = logging.getLogger("labctl.router.emulator")

#: the request bodies the emulator reads (an SDN apply is a few kB)
MAX_BODY = 256 * 1024

#: httpd.c send_error(404, "Not Found", 0, "File not found."), byte for byte
NOT_FOUND = (b'<HTML><HEAD><TITLE>404 Not Found</TITLE></HEAD>\n<BODY BGCOLOR="#cc9999">'
             b"<H4>404 Not Found</H4>\nFile not found.\n</BODY></HTML>\n")

#: Pages that the device serves and this emulator does not (docs/router.md lists them):
#: they are refused like a file the firmware does not have (404).
UNSUPPORTED_PAGES = ("ajax_status.xml", "state.js", "detect_firmware.asp", "update_clients.asp")

Fields = dict[str, str]


class _Handler(BaseHandler):
    server_version = "httpd/2.0"
    emulator: RouterEmulator  # set on the subclass made per server

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, ctype: str = "application/json;charset=UTF-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        if is_dututil(self.headers.get("User-Agent", "")):
            # send_headers(), httpd.c: only for fromapp == FROM_DUTUtil
            self.send_header("AiHOMEAPILevel", str(AIHOME_API_LEVEL))
            self.send_header("Httpd_AiHome_Ver", str(HTTPD_AIHOME_VER))
            self.send_header("Model_Name", self.emulator.product_id)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(200, json.dumps(obj).encode(), headers=headers)

    def _is_app(self) -> bool:
        return is_app_user_agent(self.headers.get("User-Agent", ""))

    def _login_page(self, status: int, **extra: Any) -> None:
        """send_login_page(): JSON error_status for apps, a JS redirect for browsers."""
        if self._is_app():
            body = {"error_status": str(status), "captcha_on": "0",
                    "last_time_lock_warning": "0"}
            body.update({k: str(v) for k, v in extra.items()})
            self._json(body)
        else:
            self._send(200, b"<script>window.top.location.href='/Main_Login.asp';</script>",
                       "text/html")

    def _token(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k in ("asus_token", "asus_s_token") and v:
                return v
        return None

    def _referer_ok(self) -> int:
        """Browser-only Referer check: 0 ok, else error_status 4/6."""
        ref = self.headers.get("Referer")
        if not ref:
            return 4
        host = self.headers.get("Host", "")
        if urlsplit(ref).netloc != host:
            return 6
        return 0

    def _authorised(self, entry: dict[str, Any]) -> bool:
        if not self._is_app():
            bad = self._referer_ok()
            if bad:
                entry["outcome"] = f"error_status {bad}"
                self._login_page(bad)
                return False
        with self.emulator.lock:
            status = self.emulator.check_token(self._token())
        if status:
            entry["outcome"] = f"error_status {status}"
            self._login_page(status)
            return False
        return True

    # -- dispatch ------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path.lstrip("/")
        try:
            body = self.read_body() if method == "POST" else b""
        except BodyTooLarge as e:
            self.emulator.record(method=method, path=path, outcome="400 (body too large)",
                                 ip=self.client_address[0])
            self._send(400, str(e).encode(), "text/plain")
            return
        entry = self.emulator.record(method=method, path=path,
                                     ua=self.headers.get("User-Agent", ""),
                                     ip=self.client_address[0])
        if not self._is_app() and path != "Main_Login.asp" and not path.endswith(".png"):
            # handle_request(), httpd.c: while logins are locked, a browser gets LOGINLOCK
            # on every page but the login page (apps meet the lock at login only)
            if self._locked(entry):
                return
        handlers: dict[str, Any] = {
            "login.cgi": self._login_v1,
            "get_Nonce.cgi": self._nonce,
            "login_v2.cgi": self._login_v2,
            "appGet.cgi": self._app_get,
            "applyapp.cgi": self._apply,
            "apply.cgi": self._apply,
            "Logout.asp": self._logout,
            "check_Auth.cgi": self._check_auth,
            "Main_Login.asp": self._main_login,
        }
        h = handlers.get(path)
        if h is None:
            entry["outcome"] = "404" + (" (unsupported)" if path in UNSUPPORTED_PAGES else "")
            self._send(404, NOT_FOUND, "text/html")
            return
        if path in ("applyapp.cgi", "apply.cgi"):
            self._apply(entry, parts.query, body)
            return
        h(entry, merged_fields(parts.query, body), body)

    # -- endpoints -----------------------------------------------------------------------
    def _main_login(self, entry: dict[str, Any], fields: Fields, body: bytes) -> None:
        action = "login_v2.cgi" if self.emulator.login_mode == "v2" else "login.cgi"
        page = (f'<html><form name="form" method="post" action="{action}">'
                '<input type="hidden" name="login_authorization" value=""></form></html>')
        entry["outcome"] = "page"
        self._send(200, page.encode(), "text/html")

    def _locked(self, entry: dict[str, Any]) -> bool:
        ip = self.client_address[0]
        remaining = self.emulator.lock_remaining(ip)
        if remaining:
            entry["outcome"] = "error_status 7"
            self._login_page(7, remaining_lock_time=remaining)
            return True
        return False

    def _finish_login(self, entry: dict[str, Any], ok: bool) -> None:
        ip = self.client_address[0]
        if not ok:
            with self.emulator.lock:
                self.emulator.login_failed(ip)
            entry["outcome"] = "error_status 3"
            self._login_page(3)
            return
        with self.emulator.lock:
            token = self.emulator.new_session(self.headers.get("User-Agent", ""), ip)
        entry["outcome"] = "login ok"
        cookie = {"Set-Cookie": f"asus_token={token}; HttpOnly;"}
        if self._is_app():
            self._json({"asus_token": token}, headers=cookie)
        else:
            self._send(200, b'<meta http-equiv="refresh" content="0; url=index.asp">',
                       "text/html", headers=cookie)

    def _login_v1(self, entry: dict[str, Any], fields: Fields, body: bytes) -> None:
        entry["kind"] = "login"
        if self._locked(entry):
            return
        if self.emulator.login_mode == "v2":
            # This build only takes the challenge login; the old form no longer exists.
            entry["outcome"] = "v1 unsupported"
            self._main_login(entry, fields, body)
            entry["outcome"] = "v1 unsupported"
            return
        raw = fields.get("login_authorization", "")
        user: str | None
        try:
            user, _, pw = base64.b64decode(raw, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user, pw = None, ""
        self._finish_login(entry, user == self.emulator.user and pw == self.emulator.password)

    def _nonce(self, entry: dict[str, Any], fields: Fields, body: bytes) -> None:
        if self.emulator.login_mode == "v1":
            entry["outcome"] = "404"
            self._send(404, NOT_FOUND, "text/html")
            return
        try:
            obj = lenient_json(body.decode("utf-8", "replace"))
            cid = str(obj.get("id", "")) if isinstance(obj, dict) else ""
        except JsonError:
            cid = ""
        if not cid:
            cid = fields.get("id", "")
        nonce = pysecrets.token_hex(16)
        with self.emulator.lock:
            self.emulator.nonces[cid] = nonce
        entry["outcome"] = "nonce"
        self._json({"nonce": nonce})

    def _login_v2(self, entry: dict[str, Any], fields: Fields, body: bytes) -> None:
        entry["kind"] = "login"
        if self.emulator.login_mode == "v1":
            entry["outcome"] = "404"
            self._send(404, NOT_FOUND, "text/html")
            return
        if self._locked(entry):
            return
        form = fields
        with self.emulator.lock:
            nonce = self.emulator.nonces.pop(form.get("id", ""), None)
        ok = False
        if nonce:
            want = hashlib.sha256(
                f"{self.emulator.user}:{nonce}:{self.emulator.password}:{form.get('cnonce', '')}"
                .encode()).hexdigest()
            ok = pysecrets.compare_digest(want, form.get("login_authorization", ""))
        self._finish_login(entry, ok)

    def _logout(self, entry: dict[str, Any], fields: Fields, body: bytes) -> None:
        tok = self._token()
        with self.emulator.lock:
            if tok:
                self.emulator.sessions.pop(tok, None)
        entry["outcome"] = "logout"
        self._login_page(8)

    def _check_auth(self, entry: dict[str, Any], fields: Fields, body: bytes) -> None:
        if self._authorised(entry):
            entry["outcome"] = "ok"
            self._json({"asus_auth": "OK"})

    def _app_get(self, entry: dict[str, Any], fields: Fields, body: bytes) -> None:
        # the hook list is one field: a raw ";" in the query already split it into other
        # (nameless, dropped) assignments, which is why the UI sends ";" as %3B
        hooks = [h for h in fields.get("hook", "").split(";") if h]
        entry["hooks"] = hooks
        if not self._authorised(entry):
            return
        fault = self.emulator.take_fault("appget")
        if fault == "slow":
            time.sleep(self.emulator.slow_seconds)
        if fault == "5xx":
            entry["outcome"] = "500 (injected)"
            self._send(500, b"Internal Server Error", "text/plain")
            return
        if fault == "drop":
            entry["outcome"] = "dropped (injected)"
            self.close_connection = True
            return
        out: dict[str, Any] = {}
        with self.emulator.lock:
            for h in hooks:
                m = re.match(r"^([A-Za-z0-9_]+)\((.*)\)$", h)
                if not m:
                    continue
                name, arg = m.group(1), m.group(2)
                if name == "nvram_get":
                    out[arg] = self.emulator.get(arg)
                elif name == "nvram_char_to_ascii":
                    key = arg.split(",")[0]
                    out[key] = char_to_ascii(self.emulator.get(key))
                elif name == "get_ui_support":
                    out[name] = {"sdn": 1, "mtlan": 1, "MaxRule_SDN": 6,
                                 "SMART_HOME_MASTER_UI": 1}
                elif name == "cpu_usage" and arg == "appobj":
                    out[name] = self.emulator.cpu_usage()
                elif name == "memory_usage" and arg == "appobj":
                    out[name] = self.emulator.memory_usage()
                else:
                    out[name] = {}
        entry["outcome"] = "ok"
        self._json(out)

    @staticmethod
    def _decode_apply(query: str, body: bytes) -> dict[str, str]:
        """The 3006 UI posts encodeURIComponent(JSON), parsed by json-c after the body is
        unescaped (single-quoted strings accepted); anything else takes the form path
        (init_cgi). Query-string fields are read too, the body's win."""
        fields = form_fields(query)
        try:
            obj = lenient_json(form_unescaped(body))
        except JsonError:
            obj = None
        if isinstance(obj, dict):
            fields.update({str(k): _json_str(v) for k, v in obj.items()})
            return fields
        return form_fields(body, fields)

    def _apply(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        values = self._decode_apply(query, body)
        entry["keys"] = sorted(values)
        if not self._authorised(entry):
            return
        action = values.pop("action_mode", "")
        service = values.pop("rc_service", None) or values.pop("action_script", "")
        for k in ("action_wait", "current_page", "next_page", "group_id", "modified"):
            values.pop(k, None)
        fault = self.emulator.take_fault("apply")
        entry["fault"] = fault
        if fault in ("drop", "5xx"):
            # Die half-way through the write: some keys are committed, the rest are not.
            keys = sorted(values)
            self.emulator.write({k: values[k] for k in keys[: max(1, len(keys) // 2)]})
            self.emulator.sync_interfaces()
            if fault == "drop":
                entry["outcome"] = "dropped (injected)"
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            entry["outcome"] = "500 (injected)"
            self._send(500, b"Internal Server Error", "text/plain")
            return
        if fault == "mangle":
            values = {k: (v[:-1] if k.endswith("_ssid") or k == "subnet_rl" else v)
                      for k, v in values.items()}
        changed = self.emulator.write(values) if action in ("apply", "") else []
        entry["changed"] = changed
        self.emulator.sync_interfaces()
        if fault == "slow":
            time.sleep(self.emulator.slow_seconds)
        if fault == "badecho":  # applied, but the reply names another service
            service = "restart_wireless;"
        entry["outcome"] = "ok"
        self._json({"modify": "1" if changed else "0", "run_service": service,
                    "restart_needed_time": "20"})


def form_unescaped(body: bytes) -> str:
    """The whole body through cgi.c's unescape, as applyapp.cgi hands it to json-c."""
    return unescape(body)


def _json_str(v: Any) -> str:
    """json_object_get_string(): strings as they are, null as "", others as JSON text."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return json.dumps(v)


class EmulatorServer:
    """Serve a :class:`RouterEmulator` on ``host:port`` (HTTP, or HTTPS with ``certfile``
    and ``keyfile``); :meth:`start` serves in a background thread, :meth:`serve_forever`
    in the caller's."""

    def __init__(self, emulator: RouterEmulator, host: str = "127.0.0.1", port: int = 0, *,
                 https: bool = False, certfile: str | Path | None = None,
                 keyfile: str | Path | None = None) -> None:
        self.emulator = emulator
        handler = type("BoundHandler", (_Handler,), {"emulator": emulator})
        ctx = None
        if https:
            if not certfile or not keyfile:
                raise LabctlError("HTTPS needs a certificate and its key")
            ctx = server_context(certfile, keyfile)
        try:
            self.httpd = LabHTTPServer((host, port), handler, ssl_context=ctx,
                                       max_body=MAX_BODY)
        except OSError as e:
            raise LabctlError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                              hint="is the port in use, or the address not on this host?"
                              ) from None
        self.https = https
        self.host, self.port = str(self.httpd.server_address[0]), int(
            self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}"

    def start(self) -> EmulatorServer:
        # A short poll interval makes stop() quick (tests start many emulators).
        self.httpd.start(name="router-emulator", poll_interval=0.05)
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        """Close the listening socket (after :meth:`serve_forever` returned)."""
        self.httpd.server_close()

    def stop(self) -> None:
        self.httpd.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_certificate(directory: Path, host: str | None = None) -> tuple[Path, Path]:
    """The emulator's self-signed certificate and key (0600), kept in ``directory`` so the
    client's pin stays valid across restarts. CN router.asus.com, like the device's."""
    names = [host] if host else []
    return ensure_self_signed(directory, stem="router-emulator", common_name="router.asus.com",
                              names=names)
