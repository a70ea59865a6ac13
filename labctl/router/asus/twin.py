"""The router twin: a stateful ASUSWRT 3.0.0.6-compatible HTTP(S) server.

Why: labctl's router code must be exercised over real sockets against something that
behaves like the device (asus-router-api.md): HTTP 200 with ``error_status`` JSON for
failures, login v1 (``login.cgi``, base64) and v2 (``get_Nonce.cgi`` + ``login_v2.cgi``,
sha256), lockout after 5 failures for 300 s, token expiry, app vs browser User-Agents
(Referer checks for browsers), ``appGet.cgi`` hooks, ``applyapp.cgi``/``apply.cgi`` that
silently ignore unknown keys, write only changed values and echo ``run_service``, and
``Logout.asp``. Faults can be injected (connection dropped mid-apply, 5xx, slow replies,
a mangled write) so the transaction's automatic restore can be proven.

Every request is recorded in :attr:`RouterTwin.log` (method, path, hooks, posted keys,
outcome) so tests can assert, e.g., that validation errors made zero requests or that no
login was attempted after a lockout.

With ``iot_interfaces={vid: ifname}``, applying an enabled SDN network on that VLAN puts its
gateway address on ``ifname`` (``ip addr replace``) and deleting it removes the address: the
Linux twin runs this server in its router namespace.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import ipaddress
import json
import logging
import os
import re
import secrets as pysecrets
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from pydantic import Field

from labctl.core.assets import asset_path
from labctl.core.errors import LabctlError, UsageError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate
from labctl.router.asus import codec

log = logging.getLogger("labctl.router.twin")

LOGIN_MAX_FAIL = 5  # DEFAULT_LOGIN_MAX_NUM
LOCK_SECONDS = 300  # MAX_LOGIN_BLOCK_TIME
APG_MAXINUM = 16
APP_FRAMEWORKS = ("DUTUtil", "ASSIA", "IFTTT", "Alexa", "WebView")
FAULT_KINDS = ("drop", "5xx", "slow", "mangle", "badecho")
_APG_RE = re.compile(r"^apg(\d+)_(.+)$")


class TwinNvram(Model):
    model: str = "ZenWiFi Pro ET12"
    nvram: dict[str, str] = Field(default_factory=dict)


def initial_nvram() -> dict[str, str]:
    doc = load_yaml(asset_path("router", "asus", "twin-nvram.yaml"))
    return dict(validate(TwinNvram, doc).nvram)


def is_app_user_agent(ua: str) -> bool:
    """httpd's check_user_agent: ``asusrouter-<platform>-<framework>-<ver>`` is an app."""
    parts = ua.split("-")
    return len(parts) >= 3 and parts[0] == "asusrouter"


def char_to_ascii(value: str) -> str:
    """nvram_char_to_ascii: everything but letters and digits as %XX (UTF-8 bytes)."""
    return quote(value, safe="")


@dataclass
class Fault:
    endpoint: str  # "apply", "appget", "login"
    kind: str  # drop | 5xx | slow | mangle
    count: int = 1


@dataclass
class Session:
    token: str
    ua: str
    ip: str
    issued: float


@dataclass
class RouterTwin:
    """State and behaviour of the twin; :class:`TwinServer` serves it over HTTP(S)."""

    user: str = "admin"
    password: str = "admin"
    login_mode: str = "both"  # v1 | v2 | both
    model: str = "ZenWiFi Pro ET12"
    state_file: Path | None = None
    token_ttl: float = 3600.0
    slow_seconds: float = 3.0
    iot_interfaces: dict[int, str] = field(default_factory=dict)
    nvram: dict[str, str] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.sessions: dict[str, Session] = {}
        self.nonces: dict[str, str] = {}
        self.fail_count: dict[str, int] = {}
        self.locked_until: dict[str, float] = {}
        self.applied_addrs: dict[int, str] = {}
        if not self.nvram:
            if self.state_file and Path(self.state_file).exists():
                try:
                    self.nvram = {str(k): str(v) for k, v in
                                  json.loads(Path(self.state_file).read_text()).items()}
                except (OSError, ValueError) as e:
                    raise UsageError(f"cannot read router twin state {self.state_file}: {e}",
                                     hint="fix or delete the file to start from defaults")
            else:
                self.nvram = initial_nvram()
                self.save()

    # -- state ---------------------------------------------------------------------------
    def save(self) -> None:
        if not self.state_file:
            return
        p = Path(self.state_file)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nvram.", dir=str(p.parent))
        with os.fdopen(fd, "w") as f:
            json.dump(self.nvram, f, indent=1, sort_keys=True)
        os.replace(tmp, p)

    def get(self, key: str) -> str:
        return self.nvram.get(key, "")

    def sdn_snapshot(self) -> dict[str, str]:
        """Every SDN-related key (tables and apg0..15 fields), unset keys as ""."""
        with self.lock:
            keys = list(codec.SDN_TABLE_KEYS) + [f"apg{n}_{f}" for n in range(APG_MAXINUM)
                                                  for f in codec.APG_FIELDS]
            return {k: self.nvram.get(k, "") for k in keys}

    def add_fault(self, endpoint: str, kind: str, count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise UsageError(f"unknown fault {kind!r}", hint=f"one of {', '.join(FAULT_KINDS)}")
        with self.lock:
            self.faults.append(Fault(endpoint, kind, count))

    def take_fault(self, endpoint: str) -> str | None:
        with self.lock:
            for f in self.faults:
                if f.endpoint == endpoint and f.count > 0:
                    f.count -= 1
                    if f.count == 0:
                        self.faults.remove(f)
                    return f.kind
        return None

    def record(self, **entry: Any) -> dict[str, Any]:
        entry.setdefault("t", time.time())
        with self.lock:
            self.log.append(entry)
        return entry

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.log if e.get("path") == path]

    # -- auth ----------------------------------------------------------------------------
    def lock_remaining(self, ip: str) -> int:
        until = self.locked_until.get(ip, 0.0)
        return max(0, int(until - time.time() + 0.999))

    def login_failed(self, ip: str) -> None:
        n = self.fail_count.get(ip, 0) + 1
        self.fail_count[ip] = n
        if n >= LOGIN_MAX_FAIL:
            self.locked_until[ip] = time.time() + LOCK_SECONDS
            self.fail_count[ip] = 0

    def new_session(self, ua: str, ip: str) -> str:
        token = pysecrets.token_hex(16)  # 32 characters, like httpd's token[33]
        self.sessions[token] = Session(token, ua, ip, time.time())
        self.fail_count[ip] = 0
        return token

    def check_token(self, token: str | None) -> int:
        """0 if valid, else the error_status: 1 no token, 2 bad or expired token."""
        if not token:
            return 1
        s = self.sessions.get(token)
        if s is None:
            return 2
        if time.time() - s.issued > self.token_ttl:
            del self.sessions[token]
            return 2
        return 0

    def expire_all_tokens(self) -> None:
        with self.lock:
            for s in self.sessions.values():
                s.issued = 0.0

    # -- apply ---------------------------------------------------------------------------
    def accepts_key(self, key: str) -> bool:
        """validate_apply(): known defaults or an apg<N>_<field> instance; else ignored."""
        m = _APG_RE.match(key)
        if m:
            return int(m.group(1)) < APG_MAXINUM and m.group(2) in codec.APG_FIELDS
        return key in self.nvram or key in codec.SDN_TABLE_KEYS

    def write(self, values: dict[str, str]) -> list[str]:
        """Write accepted keys whose value differs (strcmp guard); return the changed keys."""
        changed = []
        with self.lock:
            for k, v in values.items():
                if self.accepts_key(k) and self.nvram.get(k, "") != v:
                    self.nvram[k] = v
                    changed.append(k)
            if changed:
                self.save()
        return changed

    def sync_interfaces(self) -> None:
        """Bring IoT gateway addresses up/down on the configured interfaces."""
        if not self.iot_interfaces:
            return
        with self.lock:
            want = self._gateway_addrs()
        for vid, ifname in self.iot_interfaces.items():
            old, new = self.applied_addrs.get(vid), want.get(vid)
            if old == new:
                continue
            if old:
                _ip(["ip", "addr", "del", old, "dev", ifname], check=False)
                self.applied_addrs.pop(vid, None)
            if new:
                _ip(["ip", "addr", "replace", new, "dev", ifname], check=True)
                self.applied_addrs[vid] = new

    def _gateway_addrs(self) -> dict[int, str]:
        sdn = codec.parse_sdn(self.get("sdn_rl"))
        vlans = codec.parse_vlan(self.get("vlan_rl"))
        subnets = codec.parse_subnet(self.get("subnet_rl"))
        out: dict[int, str] = {}
        for row in sdn:
            if row["idx"] == "0" or row["enable"] != "1" or row["vlan_idx"] in ("", "0"):
                continue
            v = vlans.find("vlan_idx", row["vlan_idx"])
            s = subnets.find("subnet_idx", row["subnet_idx"])
            if v is None or s is None:
                continue
            try:
                vid = int(v["vid"])
                iface = ipaddress.IPv4Interface(f"{s['addr']}/{s['netmask']}")
            except ValueError:
                continue
            out[vid] = str(iface)
        return out


def _ip(argv: list[str], check: bool) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"{' '.join(argv)}: {r.stderr.strip()}"
        if check:
            log.error("%s", msg)
        else:
            log.debug("%s", msg)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "httpd/2.0"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # One write per reply (headers + body): avoids Nagle/delayed-ACK stalls of ~40 ms.
    wbufsize = 65536
    disable_nagle_algorithm = True
    twin: RouterTwin  # set on the subclass made per server

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.client_address[0], *args)

    # -- plumbing ------------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status: int, body: bytes, ctype: str = "application/json;charset=UTF-8",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        if self._is_app() and "DUTUtil" in self.headers.get("User-Agent", ""):
            self.send_header("AiHOMEAPILevel", "2")
            self.send_header("Httpd_AiHome_Ver", "3006")
            self.send_header("Model_Name", self.twin.model)
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
        with self.twin.lock:
            status = self.twin.check_token(self._token())
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
        body = self._body() if method == "POST" else b""
        entry = self.twin.record(method=method, path=path, ua=self.headers.get("User-Agent", ""),
                                 ip=self.client_address[0])
        handlers = {
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
            entry["outcome"] = "404"
            self._send(404, b"Not Found", "text/plain")
            return
        h(entry, parts.query, body)

    # -- endpoints -----------------------------------------------------------------------
    def _main_login(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        action = "login_v2.cgi" if self.twin.login_mode == "v2" else "login.cgi"
        page = (f'<html><form name="form" method="post" action="{action}">'
                '<input type="hidden" name="login_authorization" value=""></form></html>')
        entry["outcome"] = "page"
        self._send(200, page.encode(), "text/html")

    def _locked(self, entry: dict[str, Any]) -> bool:
        ip = self.client_address[0]
        remaining = self.twin.lock_remaining(ip)
        if remaining:
            entry["outcome"] = "error_status 7"
            self._login_page(7, remaining_lock_time=remaining)
            return True
        return False

    def _finish_login(self, entry: dict[str, Any], ok: bool) -> None:
        ip = self.client_address[0]
        if not ok:
            with self.twin.lock:
                self.twin.login_failed(ip)
            entry["outcome"] = "error_status 3"
            self._login_page(3)
            return
        with self.twin.lock:
            token = self.twin.new_session(self.headers.get("User-Agent", ""), ip)
        entry["outcome"] = "login ok"
        cookie = {"Set-Cookie": f"asus_token={token}; HttpOnly;"}
        if self._is_app():
            self._json({"asus_token": token}, headers=cookie)
        else:
            self._send(200, b'<meta http-equiv="refresh" content="0; url=index.asp">',
                       "text/html", headers=cookie)

    def _login_v1(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        entry["kind"] = "login"
        if self._locked(entry):
            return
        if self.twin.login_mode == "v2":
            # This build only takes the challenge login; the old form no longer exists.
            entry["outcome"] = "v1 unsupported"
            self._main_login(entry, query, body)
            entry["outcome"] = "v1 unsupported"
            return
        form = parse_qs(body.decode("utf-8", "replace"))
        raw = (form.get("login_authorization") or [""])[0]
        try:
            user, _, pw = base64.b64decode(raw, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user, pw = "", None  # type: ignore[assignment]
        self._finish_login(entry, user == self.twin.user and pw == self.twin.password)

    def _nonce(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        if self.twin.login_mode == "v1":
            entry["outcome"] = "404"
            self._send(404, b"Not Found", "text/plain")
            return
        try:
            cid = str(json.loads(body or b"{}").get("id", ""))
        except (ValueError, AttributeError):
            cid = ""
        if not cid:
            cid = (parse_qs(body.decode("utf-8", "replace")).get("id") or [""])[0]
        nonce = pysecrets.token_hex(16)
        with self.twin.lock:
            self.twin.nonces[cid] = nonce
        entry["outcome"] = "nonce"
        self._json({"nonce": nonce})

    def _login_v2(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        entry["kind"] = "login"
        if self.twin.login_mode == "v1":
            entry["outcome"] = "404"
            self._send(404, b"Not Found", "text/plain")
            return
        if self._locked(entry):
            return
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                               keep_blank_values=True).items()}
        with self.twin.lock:
            nonce = self.twin.nonces.pop(form.get("id", ""), None)
        ok = False
        if nonce:
            want = hashlib.sha256(
                f"{self.twin.user}:{nonce}:{self.twin.password}:{form.get('cnonce', '')}"
                .encode()).hexdigest()
            ok = pysecrets.compare_digest(want, form.get("login_authorization", ""))
        self._finish_login(entry, ok)

    def _logout(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        tok = self._token()
        with self.twin.lock:
            if tok:
                self.twin.sessions.pop(tok, None)
        entry["outcome"] = "logout"
        self._login_page(8)

    def _check_auth(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        if self._authorised(entry):
            entry["outcome"] = "ok"
            self._json({"asus_auth": "OK"})

    def _app_get(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        q = parse_qs(query, keep_blank_values=True)
        hooks = [h for h in (q.get("hook") or [""])[0].split(";") if h]
        entry["hooks"] = hooks
        if not self._authorised(entry):
            return
        fault = self.twin.take_fault("appget")
        if fault == "slow":
            time.sleep(self.twin.slow_seconds)
        if fault == "5xx":
            entry["outcome"] = "500 (injected)"
            self._send(500, b"Internal Server Error", "text/plain")
            return
        if fault == "drop":
            entry["outcome"] = "dropped (injected)"
            self.close_connection = True
            return
        out: dict[str, Any] = {}
        with self.twin.lock:
            for h in hooks:
                m = re.match(r"^([A-Za-z0-9_]+)\((.*)\)$", h)
                if not m:
                    continue
                name, arg = m.group(1), m.group(2)
                if name == "nvram_get":
                    out[arg] = self.twin.get(arg)
                elif name == "nvram_char_to_ascii":
                    key = arg.split(",")[0]
                    out[key] = char_to_ascii(self.twin.get(key))
                elif name == "get_ui_support":
                    out[name] = {"sdn": 1, "mtlan": 1, "MaxRule_SDN": 6,
                                 "SMART_HOME_MASTER_UI": 1}
                else:
                    out[name] = {}
        entry["outcome"] = "ok"
        self._json(out)

    def _decode_apply(self, body: bytes) -> dict[str, str]:
        """The 3006 UI posts encodeURIComponent(JSON); older pages post k=v forms."""
        text = body.decode("utf-8", "replace")
        try:
            obj = json.loads(unquote(text))
            if isinstance(obj, dict):
                return {str(k): "" if v is None else str(v) for k, v in obj.items()}
        except ValueError:
            pass
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}

    def _apply(self, entry: dict[str, Any], query: str, body: bytes) -> None:
        values = self._decode_apply(body)
        entry["keys"] = sorted(values)
        if not self._authorised(entry):
            return
        action = values.pop("action_mode", "")
        service = values.pop("rc_service", None) or values.pop("action_script", "")
        for k in ("action_wait", "current_page", "next_page", "group_id", "modified"):
            values.pop(k, None)
        fault = self.twin.take_fault("apply")
        entry["fault"] = fault
        if fault in ("drop", "5xx"):
            # Die half-way through the write: some keys are committed, the rest are not.
            keys = sorted(values)
            self.twin.write({k: values[k] for k in keys[: max(1, len(keys) // 2)]})
            self.twin.sync_interfaces()
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
        changed = self.twin.write(values) if action in ("apply", "") else []
        entry["changed"] = changed
        self.twin.sync_interfaces()
        if fault == "slow":
            time.sleep(self.twin.slow_seconds)
        if fault == "badecho":  # applied, but the reply names another service
            service = "restart_wireless;"
        entry["outcome"] = "ok"
        self._json({"modify": "1" if changed else "0", "run_service": service,
                    "restart_needed_time": "20"})


class TwinServer:
    """Serve a :class:`RouterTwin` on ``host:port`` (HTTP or HTTPS) in a background thread."""

    def __init__(self, twin: RouterTwin, host: str = "127.0.0.1", port: int = 0, *,
                 https: bool = False, certfile: str | None = None,
                 keyfile: str | None = None) -> None:
        self.twin = twin
        handler = type("BoundHandler", (_Handler,), {"twin": twin})
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise LabctlError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                              hint="is the port in use, or the address not on this host?")
        self.httpd.daemon_threads = True
        self.https = https
        if https:
            if not certfile:
                raise UsageError("HTTPS needs a certificate")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.host, self.port = self.httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.host}:{self.port}"

    def start(self) -> "TwinServer":
        # A short poll interval makes stop() quick (tests start many twins).
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True, name="router-twin")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "TwinServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def ensure_certificate(directory: Path, cn: str = "router.asus.com") -> tuple[str, str]:
    """A self-signed certificate for the twin, kept in ``directory`` so its pin is stable."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    cert_p, key_p = directory / "router-twin.crt", directory / "router-twin.key"
    if cert_p.exists() and key_p.exists():
        return str(cert_p), str(key_p)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    key_p.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    os.chmod(key_p, 0o600)
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_p), str(key_p)
