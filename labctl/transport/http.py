"""HTTP sessions for device APIs (ASUS router, D4IoT sensor): verified TLS or TOFU pins.

Why this exists: lab devices serve self-signed certificates. Turning verification off would
let anyone on the LAN read the admin password, so instead:

* if ``ca_bundle`` is given, or the certificate verifies against the system CAs, ordinary
  CA verification is used (hostname checked);
* otherwise the sha256 fingerprint of the peer certificate is pinned on first use (stored in
  the pin store, ``host:port -> sha256``) and enforced on every later connection. A changed
  fingerprint is a hard :class:`~labctl.core.errors.TransportError`, with a hint how to
  re-pin after a legitimate certificate change;
* an explicit ``fingerprint=`` is always enforced and never stored.

Verification is never switched off: for a pinned peer the CA chain is not consulted but the
exact certificate is (urllib3 ``assert_fingerprint``).

Plain ``http://`` is refused unless ``allow_http=True`` (the caller's configuration must say
so explicitly). Idempotent requests are retried (urllib3 ``Retry``); POSTs never are, since a
repeated apply is not harmless. Every request gets a default timeout. requests/urllib3
errors are translated here into labctl's transport errors.

With ``netns=NAME`` every connection (and the first-use certificate fetch) is made inside
that network namespace; setns(2) is per thread, so the namespace is entered around each
``send`` in the calling thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from labctl.core.errors import ConnectTimeout, HostUnreachable, TransportError, UsageError
from labctl.core.state import pins_file, write_private
from labctl.transport.netns import netns_context

log = logging.getLogger("labctl.transport.http")

DEFAULT_USER_AGENT = "labctl"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_pin_lock = threading.Lock()


def normalize_fingerprint(fp: str) -> str:
    """``AB:CD:..`` or ``abcd..`` -> lowercase hex without colons (64 chars for sha256)."""
    clean = fp.replace(":", "").replace(" ", "").strip().lower()
    if len(clean) != 64 or any(c not in "0123456789abcdef" for c in clean):
        raise UsageError(f"{fp!r} is not a sha256 fingerprint",
                         hint="give 64 hex digits, with or without colons")
    return clean


def cert_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise UsageError(f"{url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname, port


def pin_key(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PinStore:
    """The JSON file of TOFU pins. Writes are atomic (temp file + rename)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise TransportError(f"cannot read the certificate pin store {self.path}: {e}",
                                 hint="fix or delete the file (pins are re-learned on first "
                                      "use)") from None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        return self.load().get(key)

    def set(self, key: str, fingerprint: str) -> None:
        with _pin_lock:
            pins = self.load()
            pins[key] = fingerprint
            self._write(pins)

    def forget(self, key: str) -> bool:
        with _pin_lock:
            pins = self.load()
            if key not in pins:
                return False
            del pins[key]
            self._write(pins)
            return True

    def _write(self, pins: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private((json.dumps(pins, indent=2, sort_keys=True) + "\n").encode("utf-8"),
                      self.path)


def fetch_peer_certificate(host: str, port: int, timeout: float,
                           netns: str | None = None) -> tuple[bytes, bool]:
    """Return (DER certificate, verifies against the system CAs with this hostname).

    The unverified fetch is only used to *learn* a fingerprint for pinning; nothing is sent
    over that connection.
    """
    with netns_context(netns):
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                ctx = ssl.create_default_context()
                try:
                    with ctx.wrap_socket(raw, server_hostname=host) as tls:
                        der = tls.getpeercert(binary_form=True)
                        return der or b"", True
                except ssl.SSLCertVerificationError:
                    pass
            with socket.create_connection((host, port), timeout=timeout) as raw:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE  # learning the pin only; nothing is sent
                with ctx.wrap_socket(raw, server_hostname=host) as tls:
                    der = tls.getpeercert(binary_form=True)
                    if not der:
                        raise TransportError(f"{host}:{port} sent no certificate")
                    return der, False
        except TimeoutError:
            raise ConnectTimeout(f"{host}:{port} did not answer within {timeout:g}s",
                                 hint="check the URL and that the device is up") from None
        except ssl.SSLError as e:
            raise TransportError(f"TLS handshake with {host}:{port} failed: {e}",
                                 hint="is this an HTTPS port? check the URL scheme") from None
        except OSError as e:
            raise HostUnreachable(f"cannot connect to {host}:{port}: {e.strerror or e}",
                                  hint="check the URL and that the device is up") from None


class _DeviceAdapter(HTTPAdapter):
    """HTTPAdapter with a default timeout, a netns, and pinning for self-signed peers."""

    def __init__(self, *, base_url: str, pin_store: PinStore, fingerprint: str | None,
                 trust_on_first_use: bool, ca_bundle: str | None, timeout: float,
                 netns: str | None, retries: int) -> None:
        self.base_url = base_url
        self.pin_store = pin_store
        self.fixed_fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        self.tofu = trust_on_first_use
        self.ca_bundle = ca_bundle
        self.default_timeout = timeout
        self.netns = netns
        # (host, port) -> sha256 to enforce, or None for CA verification
        self._modes: dict[tuple[str, int], str | None] = {}
        self._mode_lock = threading.Lock()
        # other=0: TLS failures (e.g. a pin mismatch) are final, not retried.
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0,
                      backoff_factor=0.2, allowed_methods=IDEMPOTENT_METHODS,
                      status_forcelist=(502, 503, 504), raise_on_status=False,
                      respect_retry_after_header=False)
        super().__init__(max_retries=retry)

    # -- deciding how to verify one peer -------------------------------------------------
    def _mode_for(self, host: str, port: int) -> str | None:
        key = (host, port)
        with self._mode_lock:
            if key in self._modes:
                return self._modes[key]
        if self.fixed_fingerprint:
            mode: str | None = self.fixed_fingerprint
        elif self.ca_bundle:
            mode = None
        else:
            pk = pin_key(host, port)
            mode = self.pin_store.get(pk)
            if mode is None:
                der, ca_ok = fetch_peer_certificate(host, port, self.default_timeout, self.netns)
                if ca_ok:
                    mode = None
                elif not self.tofu:
                    raise TransportError(
                        f"the certificate of {pk} is not trusted and no fingerprint is pinned",
                        hint=f"pin it: its sha256 is {cert_fingerprint(der)}; or allow "
                             "trust on first use")
                else:
                    mode = cert_fingerprint(der)
                    self.pin_store.set(pk, mode)
                    log.info("pinned the certificate of %s (sha256 %s) in %s", pk, mode,
                             self.pin_store.path)
        with self._mode_lock:
            self._modes[key] = mode
        return mode

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        base: Any = super()  # the requests stubs leave cert_verify untyped
        base.cert_verify(conn, url, verify if not self.ca_bundle else self.ca_bundle, cert)
        if not url.lower().startswith("https"):
            return
        host, port = host_port(url)
        fp = self._mode_for(host, port)
        if fp is not None:
            # Exact-certificate check instead of a CA chain: urllib3 compares the sha256 of
            # the peer's DER certificate and refuses the connection on a mismatch.
            conn.cert_reqs = "CERT_NONE"
            conn.ca_certs = None
            conn.ca_cert_dir = None
            conn.assert_fingerprint = fp
        else:
            conn.assert_fingerprint = None

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        if timeout is None:
            timeout = self.default_timeout
        if self.ca_bundle and verify is True:
            verify = self.ca_bundle
        with netns_context(self.netns):
            return super().send(request, stream=stream, timeout=timeout, verify=verify,
                                cert=cert, proxies=proxies)


class DeviceSession(requests.Session):
    """A requests Session whose errors are labctl transport errors."""

    base_url: str
    pin_store: PinStore

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        if not url.lower().startswith(("http://", "https://")):
            url = self.base_url.rstrip("/") + "/" + url.lstrip("/")
        try:
            return super().request(method, url, *args, **kwargs)
        except requests.exceptions.SSLError as e:
            pk = pin_key(*host_port(url))
            if "fingerprint" in str(e).lower():
                raise TransportError(
                    f"the TLS certificate of {pk} changed: it no longer matches the pinned "
                    "sha256 fingerprint (possible interception)",
                    hint=f"if the device's certificate was regenerated on purpose, remove "
                         f"{pk!r} from {self.pin_store.path} to re-pin it on the next run",
                ) from None
            raise TransportError(f"TLS verification with {pk} failed: {_short(e)}",
                                 hint="pass a CA bundle, or let labctl pin the device's "
                                      "self-signed certificate on first use") from None
        except requests.exceptions.ConnectTimeout as e:
            raise ConnectTimeout(f"{_where(url)}: connection timed out ({_short(e)})",
                                 hint="check the URL and that the device is up") from None
        except requests.exceptions.Timeout as e:
            raise ConnectTimeout(f"{_where(url)}: no reply in time ({_short(e)})",
                                 hint="the device is slow or hung; try again later") from None
        except requests.exceptions.ConnectionError as e:
            text = _short(e)
            if any(s in text for s in ("RemoteDisconnected", "Connection aborted",
                                        "ProtocolError", "reset by peer")):
                raise TransportError(f"{_where(url)}: the connection was dropped before a reply",
                                     hint="the device closed the connection mid-request") from None
            raise HostUnreachable(f"cannot reach {_where(url)} ({text})",
                                  hint="check the URL and that the device is up") from None
        except requests.exceptions.ChunkedEncodingError as e:
            raise TransportError(f"{_where(url)}: the reply was cut off ({_short(e)})",
                                 hint="the device closed the connection mid-reply") from None
        except requests.exceptions.RequestException as e:
            raise TransportError(f"{_where(url)}: {_short(e)}") from None


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _short(e: Exception) -> str:
    s = str(e)
    return s if len(s) <= 300 else s[:300] + "..."


def make_session(
    base_url: str,
    *,
    pin_store: Path | None = None,
    fingerprint: str | None = None,
    trust_on_first_use: bool = True,
    ca_bundle: str | None = None,
    user_agent: str | None = None,
    retries: int = 2,
    timeout: float = 10.0,
    netns: str | None = None,
    allow_http: bool = False,
) -> requests.Session:
    """A session for one device. Relative URLs are resolved against ``base_url``.

    ``allow_http`` must be True for an ``http://`` base URL; callers pass their
    configuration's explicit opt-in (e.g. the playbook's ``router.allow_http``).
    """
    scheme = urlsplit(base_url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"{base_url!r} must start with https:// (or http://)")
    if scheme == "http" and not allow_http:
        raise UsageError(f"plain HTTP to {base_url} is not allowed",
                         hint="use https://, or allow plain HTTP explicitly in the "
                              "configuration (the password would travel in clear text)")
    s = DeviceSession()
    s.base_url = base_url
    s.pin_store = PinStore(pin_store or pins_file())
    s.headers["User-Agent"] = user_agent or DEFAULT_USER_AGENT
    adapter = _DeviceAdapter(base_url=base_url, pin_store=s.pin_store, fingerprint=fingerprint,
                             trust_on_first_use=trust_on_first_use, ca_bundle=ca_bundle,
                             timeout=timeout, netns=netns, retries=retries)
    s.verify = ca_bundle or True
    s.mount("https://", adapter)
    if allow_http:
        s.mount("http://", adapter)
    else:
        s.mount("http://", _RefuseHttp())
    return s


class _RefuseHttp(HTTPAdapter):
    def send(self, request: requests.PreparedRequest, *a: Any, **kw: Any) -> requests.Response:
        raise UsageError(f"plain HTTP to {_where(request.url or '')} is not allowed",
                         hint="use https://, or allow plain HTTP explicitly in the "
                              "configuration")
