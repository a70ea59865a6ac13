"""The embedded sensor's HTTPS API, following the documented D4IoT sensor API.

Paths, parameters and shapes come from ../shared/reference/defender-for-iot.md §1:

* ``GET /api/v1/alerts`` and ``/api/v2/alerts`` with ``state=handled|unhandled``,
  ``fromTime``, ``toTime`` (epoch ms) and ``type`` (only "unexpected new devices" and
  "disconnections" have a meaning; other values are ignored, as documented). v2 adds
  ``sourceDeviceAddress``, ``destinationDeviceAddress`` and ``remediationSteps``;
* ``GET /api/v1/devices`` (``authorized=true|false``), ``/api/v1/devices/connections`` and
  ``/api/v1/devices/<id>/connections`` (``discoveredBefore``, ``discoveredAfter``,
  ``lastActiveInMinutes``);
* ``GET /api/v1/events`` (``minutesTimeFrame``: a value above 4320 is treated as 4320, with
  no error; ``type``: one of the documented event types, any other value is ignored and the
  unfiltered list comes back): the latest 100 events, newest first. The real sensor caches
  an identical query for an hour; this one does not;
* ``POST /api/external/authentication/validation``, ``.../set_password`` and
  ``.../set_password_by_admin`` (no token; also under ``/external/authentication/``, the
  URI the reference's headings print), with the documented success and failure messages
  (sensor-auth-apis.md, ms.date 06/13/2022) and a lockout after repeated failures (labctl's
  choice, as the reference documents none: see :class:`LoginGuard`);
* ``GET``/``POST /api/labctl/activation`` (a labctl extension, token required; Microsoft
  documents no activation API): POST the activation ZIP, GET ``{"activated": ...}``. The
  state is kept in ``<state>/activation.json``, so it survives a restart;
* ``GET /api/labctl/status`` (a labctl extension, token required): packet, malformed and
  kernel drop counters (``PACKET_STATISTICS``), devices, alerts, learning mode;
* ``GET /api/labctl/flows?after_seq=N&limit=M`` (a labctl extension, token required; a real
  sensor has no flow API): the stored flows whose ``seq`` is above ``N`` (default 0), in
  ``seq`` order, at most ``M`` (1..10000, default 10000), as a JSON list of
  :class:`labctl.sensor.base.Flow` objects (docs/sensor-flows.md).

Authentication is ``Authorization: <token>`` with no ``Bearer`` prefix; tokens are checked
against the hashes in the store. Bad queries get HTTP 400 with a JSON ``error`` naming the
parameter, a bad device id 400 and an unknown one 404 (never 500); a missing or wrong token
gets 401. HTTPS only, on labctl's one server base (:mod:`labctl.transport.httpserver`: the
TLS handshake in the worker thread, bounded and drained request bodies, a connection cap),
with the self-signed certificate of :mod:`labctl.transport.certs`. The request head has a
whole deadline (:class:`labctl.transport.httpserver.HeadWatchdog`): a client that drips
header bytes is cut off after ``header_timeout`` seconds however often it sends one.

The D4IoT projection of the engine's records (:func:`alert_to_api`, :func:`device_to_api`,
:func:`event_to_api`, :func:`connections_api`) lives here too: the engine keeps its records,
the API decides how they look on the wire.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from labctl.sensor.engine import PROTO_NAMES, SERVICE_NAMES, Sensor
from labctl.sensor.records import Alert, Device, Event
from labctl.sensor.store import SensorStore, password_problems
from labctl.transport.certs import ensure_self_signed, server_context
from labctl.transport.httpserver import BaseHandler, BodyTooLarge, LabHTTPServer

log = logging.getLogger("labctl.sensor.api")

MAX_BODY = 64 * 1024
MAX_FLOWS_PER_PAGE = 10_000
DRAIN_LIMIT = 1024 * 1024
#: the certificate's common name, as a fresh sensor's own self-signed certificate names it
CERT_COMMON_NAME = "labctl embedded sensor"
EVENTS_LIMIT = 100
MAX_MINUTES = 4320
#: the request head (request line and headers) must arrive within this many seconds
HEADER_TIMEOUT = 10.0
#: an idle keep-alive connection is closed after this many seconds
IDLE_TIMEOUT = 30.0
#: connections served at once; more are closed at accept (a sensor API has few clients)
MAX_CONNECTIONS = 32
#: device ids are positive and fit 31 bits; longer digit strings are refused unparsed
MAX_ID_DIGITS = 10
MAX_ID = 2**31 - 1
#: event types of sensor-alert-apis.md (ms.date 05/25/2022), "Event type and title
#: reference"; /api/v1/events filters on these and ignores any other value
EVENT_TYPES = frozenset("""
DEVICE_CREATE DEVICE_UPDATE ALERT_REPORTED ALERT_UPDATED SCAN PROGRAM_DEVICE
MMS_PROGRAM_DEVICE SCL_UPLOADED EXCLUSION_RULE_CREATED EXCLUSION_RULE_REMOVED
EXCLUSION_RULE_UPDATED DEVICE_CONNECTION_CREATED USER_LOGIN FILE_TRANSFER CUSTOM_EVENT
REMOTE_ACCESS BACK_TO_NORMAL MMS_MEMORY_BLOCK_OPERATION MMS_PROGRAM_OPERATION
HTTP_BASIC_AUTHENTICATION SIEMENS_S_7_MEMORY_BLOCK_OPERATION SIEMENS_S_7_AUTHENTICATION
REPORT_CREATED SNMP_TRAP DATABASE_ACTION PLC_MODULE_CHANGE FIRMWARE_UPDATE PLC_START
SRTP_PLC_RESET SRTP_PLC_COPY_FIRMWARE SRTP_LOGIN_PROGRAMMING SRTP_PLC_CHANGE_PASSWORD
OPC_DATA_ACCESS_GROUP_MANAGEMENT_OPERATION OPC_DATA_ACCESS_ITEM_MANAGEMENT_OPERATION
OPC_DATA_ACCESS_IO_SUBSCRIPTION_MANAGEMENT_OPERATION OPC_AE_EVENT_SUBSCRIPTION
OPC_AE_EVENT_CONDITION_MANAGEMENT_OPERATION OPC_AE_EVENT SRTP_CHANGE_PRIVILEGE
SRTP_CHANGE_LEVEL_FAILED SUITELINK_INIT_CONNECTION USER_OPERATION DIP_UPLOADED
FTP_AUTHENTICATION_FAILURE PROFINET_DPC_VALUE_SET S7PLUS_PLC_MODE_CHANGE S7_PLC_MODE_CHANGE
DELETE_DEVICE S7PLUS_PROGRAMMING FIRMWARE_CHANGED DELTAV_PROGRAMMING USER_DEFINED_RULE_CREATED
USER_DEFINED_RULE_EDITED USER_DEFINED_RULE_DELETED USER_DEFINED_RULE_OPERATION
REMOTE_PROCESS_EXECUTION DEVICE_UNIFICATION NOTIFICATION ENIP_CONTROLLER_PROGRAM_DELETE
ENIP_CONTROLLER_PROGRAM_RESET ENIP_CONTROLLER_GENERIC_RESET ENIP_CONTROLLER_GENERIC_STOP
ENIP_CONTROLLER_GENERIC_START TELNET_AUTHENTICATION_FAILURE CONFIGURATION_OF_CLEARTEXT_PASSWORD
CLEARTEXT_AUTHENTICATION PROGRAM_UPLOAD_DEVICE CONFIGURATION_CHANGE CONFIGURATION_READ
SYSLOG_MSG INTERNET_ACCESS CAMP_MEMORY_WRITE_OPERATION MUTED_ALERT DHCP_UPDATE DIP_FAILURE
DELETE_DEVICE_SCHEDULE PLC_OPERATING_MODE_CHANGED HARDWARE_UPDATE_BY_IDENTIFIER
""".split())

# the documented messages of the authentication endpoints (sensor-auth-apis.md, ms.date
# 06/13/2022): "Success - msg" and "Failure - error" rows of each response table
MSG_AUTH_OK = "Authentication succeeded."
MSG_VALIDATION_FAILED = "Credentials validation failed"
MSG_REPLACED = "Password has been replaced"
MSG_USER_AUTH_FAILURE = "User authentication failure"
MSG_POLICY = "Password does not match security policy"
MSG_POLICY_BY_ADMIN = "Password doesn't match security policy"
MSG_NO_PERMISSION = "User does not have the permissions to change password"
#: a fresh sensor's admin/admin works only to set a new password (labctl's reading of the
#: forced change at first sign-in; the reference documents no message for it)
MSG_MUST_CHANGE = ("The password must be changed before first use; call "
                   "/api/external/authentication/set_password.")

#: labctl's lockout of the password endpoints (the reference documents none): this many
#: failures of one user name from one client address within FAIL_WINDOW seconds lock that
#: pair out for LOCK_SECONDS; while locked even the right password is refused (HTTP 429)
MAX_FAILURES = 5
FAIL_WINDOW = 300.0
LOCK_SECONDS = 300.0


class BadQuery(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _one(q: dict[str, list[str]], name: str) -> str | None:
    vals = q.get(name)
    if not vals:
        return None
    if len(vals) > 1:
        raise BadQuery(f"query parameter {name!r} was given {len(vals)} times")
    return vals[0]


def _int_param(q: dict[str, list[str]], name: str, *, lo: int = 0,
               hi: int | None = None, max_digits: int = 16) -> int | None:
    raw = _one(q, name)
    if raw is None:
        return None
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > max_digits:
        raise BadQuery(f"query parameter {name!r} must be an integer of at most {max_digits} "
                       f"ASCII digits (epoch milliseconds for times), got {_short(raw)!r}")
    try:
        v = int(text)
    except ValueError:
        raise BadQuery(f"query parameter {name!r} must be an integer "
                       f"(epoch milliseconds for times), got {raw!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise BadQuery(f"query parameter {name!r} must be between {lo} and "
                       f"{hi if hi is not None else 'infinity'}, got {v}")
    return v


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def parse_device_id(text: str) -> int:
    """A path's device id: ASCII digits, 1..2**31-1. BadQuery (400) otherwise, without
    converting an over-long digit string (int() of 5000 digits raises ValueError)."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > MAX_ID_DIGITS:
        raise BadQuery(f"device id must be a positive integer of at most {MAX_ID_DIGITS} "
                       f"digits, got {_short(text)!r}")
    value = int(text)
    if not 1 <= value <= MAX_ID:
        raise BadQuery(f"device id must be between 1 and {MAX_ID}, got {value}")
    return value


def _bool_param(q: dict[str, list[str]], name: str) -> bool | None:
    raw = _one(q, name)
    if raw is None:
        return None
    low = raw.lower()
    if low not in ("true", "false"):
        raise BadQuery(f"query parameter {name!r} must be true or false, got {raw!r}")
    return low == "true"


class SensorApi:
    """Route table and handlers, independent of the HTTP plumbing (easy to test)."""

    def __init__(self, sensor: Sensor, store: SensorStore,
                 status_fn: Callable[[], dict[str, Any]] | None = None,
                 guard: LoginGuard | None = None, state_dir: str | Path | None = None) -> None:
        self.sensor = sensor
        self.store = store
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._activation: dict[str, Any] | None = None
        self.status_fn = status_fn
        self.guard = guard or LoginGuard()

    def status(self) -> tuple[int, Any]:
        """labctl extension (not a D4IoT path): counters incl. kernel drops."""
        with self.sensor.lock:
            doc: dict[str, Any] = self.sensor.summary()
        if self.status_fn is not None:
            doc.update(self.status_fn())
        from labctl import __version__

        doc.setdefault("version", f"labctl-embedded {__version__}")
        return 200, doc

    def flows(self, q: dict[str, list[str]]) -> tuple[int, Any]:
        """labctl extension: stored flows after a ``seq`` cursor (read from the store, so
        only what a flush committed, each once per change)."""
        after = _int_param(q, "after_seq", lo=0, hi=2**62)
        limit = _int_param(q, "limit", lo=1, hi=MAX_FLOWS_PER_PAGE)
        return 200, self.store.flows(after or 0, MAX_FLOWS_PER_PAGE if limit is None else limit)

    # ---- activation (a labctl extension: Microsoft documents no activation API) --------

    def _activation_path(self) -> Path | None:
        return self.state_dir / "activation.json" if self.state_dir is not None else None

    def activation_state(self) -> tuple[int, Any]:
        """``GET /api/labctl/activation``: ``{"activated": bool, ...}``."""
        path = self._activation_path()
        if path is not None and path.is_file():
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                doc = None
            if isinstance(doc, dict):
                return 200, {**doc, "activated": True}
        with self.sensor.lock:
            mem = dict(self._activation) if self._activation else None
        return 200, ({**mem, "activated": True} if mem else {"activated": False})

    def activate(self, raw: bytes) -> tuple[int, Any]:
        """``POST /api/labctl/activation``: the body is the activation ZIP. It must be a ZIP
        with at least one regular file; the sensor keeps its digest and member names."""
        import hashlib
        import io
        import zipfile

        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
                bad = zf.testzip()
        except (zipfile.BadZipFile, ValueError, OSError):
            return 400, {"error": "the activation file is not a ZIP archive"}
        if bad is not None:
            return 400, {"error": f"the activation file is damaged (CRC error in {bad})"}
        if not names:
            return 400, {"error": "the activation file is an empty ZIP"}
        doc = {"activated_at": int(time.time() * 1000),
               "sha256": hashlib.sha256(raw).hexdigest(), "files": names[:20]}
        with self.sensor.lock:
            self._activation = doc
        path = self._activation_path()
        if path is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(path)
        return 200, {**doc, "activated": True}

    # each returns (status, body)
    def alerts(self, version: int, q: dict[str, list[str]]) -> tuple[int, Any]:
        state = _one(q, "state")
        if state is not None and state not in ("handled", "unhandled"):
            raise BadQuery(f"query parameter 'state' must be handled or unhandled, got {state!r}")
        t_from = _int_param(q, "fromTime")
        t_to = _int_param(q, "toTime")
        if t_from is not None and t_to is not None and t_from > t_to:
            raise BadQuery("fromTime is later than toTime")
        atype = (_one(q, "type") or "").lower()
        with self.sensor.lock:
            items = list(self.sensor.alerts)
        out = []
        for a in items:
            if state == "handled" and not a.handled or state == "unhandled" and a.handled:
                continue
            if t_from is not None and a.time < t_from:
                continue
            if t_to is not None and a.time > t_to:
                continue
            if atype == "unexpected new devices" and a.title != self.sensor.det.new_asset.title:
                continue
            if atype == "disconnections" and a.engine != "Operational":
                continue
            out.append(alert_to_api(a, version))
        return 200, out

    def devices(self, q: dict[str, list[str]]) -> tuple[int, Any]:
        auth = _bool_param(q, "authorized")
        with self.sensor.lock:
            self.sensor.fold(self.sensor.last_ts)
            devs = [device_to_api(d)
                    for d in sorted(self.sensor.devices.values(), key=lambda d: d.id)]
        if auth is not None:
            devs = [d for d in devs if d["authorized"] == auth]
        return 200, devs

    def connections(self, q: dict[str, list[str]], device_id: int | None = None
                    ) -> tuple[int, Any]:
        before = _int_param(q, "discoveredBefore")
        after = _int_param(q, "discoveredAfter")
        active = _int_param(q, "lastActiveInMinutes", lo=1)
        with self.sensor.lock:
            if device_id is not None and device_id not in self.sensor.devices:
                raise BadQuery(f"device {device_id} not found", status=404)
            conns = connections_api(self.sensor)
        now_ms = int(time.time() * 1000)
        out = []
        for c in conns:
            if device_id is not None and device_id not in (c["firstDeviceId"],
                                                           c["secondDeviceId"]):
                continue
            if before is not None and c["discovered"] >= before:
                continue
            if after is not None and c["discovered"] <= after:
                continue
            if active is not None and c["lastSeen"] < now_ms - active * 60_000:
                continue
            out.append(c)
        return 200, out

    def events(self, q: dict[str, list[str]]) -> tuple[int, Any]:
        minutes = _int_param(q, "minutesTimeFrame", lo=1, max_digits=20)
        if minutes is not None:
            minutes = min(minutes, MAX_MINUTES)  # "treated as 4320, with no error"
        etype = _one(q, "type")
        if etype not in EVENT_TYPES:
            etype = None  # "Any value other than supported types is ignored"
        cutoff = int(time.time() * 1000) - minutes * 60_000 if minutes else None
        with self.sensor.lock:
            evs = list(self.sensor.events)
        out = []
        for e in reversed(evs):
            if cutoff is not None and e.timestamp < cutoff:
                continue
            if etype and e.type != etype:
                continue
            out.append(event_to_api(e))
            if len(out) >= EVENTS_LIMIT:
                break
        return 200, out

    # ---- authentication endpoints (no token) ------------------------------------------

    def _sign_in(self, client: str, user: str, password: str, failure: str
                 ) -> tuple[tuple[int, Any] | None, bool]:
        """(an error reply or None, must change password): the lockout, the password
        check and the failure count in one place for every authentication endpoint."""
        locked = self.guard.locked(client, user)
        if locked:
            return locked, False
        ok, must_change = self.store.check_password(user, password)
        if not ok:
            return self._failed(client, user, 401, failure), False
        self.guard.succeeded(client, user)
        return None, must_change

    def validation(self, body: dict[str, Any], client: str = "") -> tuple[int, Any]:
        user, password = _creds(body, ("username", "password"))
        refused, must_change = self._sign_in(client, user, password, MSG_VALIDATION_FAILED)
        if refused:
            return refused
        if must_change:
            return 403, _auth_error(MSG_MUST_CHANGE)
        return 200, {"msg": MSG_AUTH_OK}

    def set_password(self, body: dict[str, Any], client: str = "") -> tuple[int, Any]:
        user, password, new = _creds(body, ("username", "password", "new_password"))
        refused, _ = self._sign_in(client, user, password, MSG_USER_AUTH_FAILURE)
        if refused:
            return refused
        if password_problems(new) or new == password:
            return 400, _auth_error(MSG_POLICY, _policy_detail(new, password))
        self.store.set_password(user, new)
        return 200, {"msg": MSG_REPLACED}

    def set_password_by_admin(self, body: dict[str, Any], client: str = ""
                              ) -> tuple[int, Any]:
        # the reference's curl example names the admin field admin_user, its parameter
        # table admin_username: both are accepted
        doc = dict(body)
        if "admin_username" not in doc and "admin_user" in doc:
            doc["admin_username"] = doc["admin_user"]
        admin, admin_pw, user, new = _creds(
            doc, ("admin_username", "admin_password", "username", "new_password"))
        refused, _ = self._sign_in(client, admin, admin_pw, MSG_USER_AUTH_FAILURE)
        if refused:
            return refused
        if not self.store.is_admin(admin):
            return 403, _auth_error(MSG_NO_PERMISSION)
        if not self.store.user_exists(user):
            msg = f"The user '{_short(user)}' doesn't exist"
            return 404, _auth_error(msg, msg)
        if password_problems(new):
            return 400, _auth_error(MSG_POLICY_BY_ADMIN, _policy_detail(new, None))
        self.store.set_password(user, new)
        return 200, {"msg": MSG_REPLACED}

    def _failed(self, client: str, user: str, status: int, msg: str) -> tuple[int, Any]:
        self.guard.failed(client, user)
        return status, _auth_error(msg)


class LoginGuard:
    """The lockout of the password endpoints: per (client address, user name).

    Why this scope: the reference documents no lockout for these endpoints, so labctl
    chooses one that stops guessing without letting one client lock out another: a client
    that fails MAX_FAILURES times for one user within FAIL_WINDOW seconds is refused for
    that user for LOCK_SECONDS (HTTP 429 with Retry-After), even with the right password.
    Other addresses, and other user names from the same address, are not affected. A
    success clears the count. Memory is bounded: at most ``max_keys`` pairs are tracked.
    """

    def __init__(self, *, max_failures: int = MAX_FAILURES, window: float = FAIL_WINDOW,
                 lock_seconds: float = LOCK_SECONDS,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lock_seconds = lock_seconds
        self.clock = clock
        self.max_keys = max_keys
        self._fails: dict[tuple[str, str], list[float]] = {}
        self._until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def locked(self, client: str, user: str) -> tuple[int, Any] | None:
        """The 429 reply while ``(client, user)`` is locked out, else None."""
        now = self.clock()
        with self._lock:
            until = self._until.get((client, user))
            if until is None:
                return None
            if now >= until:
                del self._until[(client, user)]
                return None
        left = max(1, int(until - now + 0.999))
        return 429, {**_auth_error(
            f"Too many failed sign-in attempts for user '{_short(user)}' from this address; "
            f"try again in {left} seconds."), "retryAfter": left}

    def failed(self, client: str, user: str) -> None:
        now = self.clock()
        key = (client, user)
        with self._lock:
            recent = [t for t in self._fails.get(key, []) if now - t < self.window]
            recent.append(now)
            if len(recent) >= self.max_failures:
                self._fails.pop(key, None)
                self._until[key] = now + self.lock_seconds
                log.warning("password endpoints: %s locked out for user %r for %g s after "
                            "%d failures", client, _short(user), self.lock_seconds,
                            len(recent))
            else:
                self._fails[key] = recent
            if len(self._fails) > self.max_keys:  # drop the oldest counts
                for k in sorted(self._fails, key=lambda k: self._fails[k][-1])[
                        :len(self._fails) - self.max_keys]:
                    del self._fails[k]
            if len(self._until) > self.max_keys:
                for k in [k for k, u in self._until.items() if u <= now]:
                    del self._until[k]

    def succeeded(self, client: str, user: str) -> None:
        with self._lock:
            self._fails.pop((client, user), None)


def _policy_detail(new: str, old: str | None) -> str:
    problems = password_problems(new)
    if problems:
        return "the new password must contain " + ", ".join(problems)
    if old is not None and new == old:
        return "the new password must differ from the current one"
    return ""


def _auth_error(msg: str, internal: str = "") -> dict[str, Any]:
    """The documented error shape; ``internalSystemErrorMessage`` as in the set_password_by_
    admin example, when there is more to say."""
    err: dict[str, Any] = {"userDisplayErrorMessage": msg}
    if internal:
        err["internalSystemErrorMessage"] = internal
    return {"error": err}


def _creds(body: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for k in keys:
        v = body.get(k)
        if not isinstance(v, str):
            raise BadQuery(f"body field {k!r} is required and must be a string")
        out.append(v)
    return tuple(out)


class _Handler(BaseHandler):
    server_version = "labctl-sensor"
    api: SensorApi  # set on the subclass made by make_server

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429 and isinstance(body, dict) and "retryAfter" in body:
            self.send_header("Retry-After", str(body["retryAfter"]))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        token = (self.headers.get("Authorization") or "").strip()
        if self.api.store.check_token(token):
            return True
        if token.lower().startswith("bearer "):
            msg = "invalid token: send `Authorization: <token>` without the Bearer prefix"
        elif token:
            msg = "invalid token"
        else:
            msg = "missing Authorization header (an access token is required)"
        self._send(401, {"error": msg})
        return False

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        try:
            q = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            self._send(400, {"error": "malformed query string"})
            return
        routes: dict[str, Callable[[], tuple[int, Any]]] = {
            "/api/v1/alerts": lambda: self.api.alerts(1, q),
            "/api/v2/alerts": lambda: self.api.alerts(2, q),
            "/api/v1/devices": lambda: self.api.devices(q),
            "/api/v1/devices/connections": lambda: self.api.connections(q),
            "/api/v1/events": lambda: self.api.events(q),
            "/api/labctl/status": self.api.status,
            "/api/labctl/flows": lambda: self.api.flows(q),
            "/api/labctl/activation": self.api.activation_state,
        }
        handler = routes.get(path)
        if handler is None and path.startswith("/api/v1/devices/") and \
                path.endswith("/connections"):
            mid = path[len("/api/v1/devices/"):-len("/connections")]
            if "/" not in mid:
                handler = lambda: self.api.connections(q, parse_device_id(mid))  # noqa: E731
        if handler is None:
            self._send(404, {"error": f"no such endpoint: GET {path}"})
            return
        if not self._authorized():
            return
        self._run(handler)

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path.rstrip("/")
        if path.startswith("/external/"):  # the URI the reference's headings print
            path = "/api" + path
        routes: dict[str, Callable[[dict[str, Any], str], tuple[int, Any]]] = {
            "/api/external/authentication/validation": self.api.validation,
            "/api/external/authentication/set_password": self.api.set_password,
            "/api/external/authentication/set_password_by_admin":
                self.api.set_password_by_admin,
        }
        if path == "/api/labctl/activation":
            self._post_activation()
            return
        fn = routes.get(path)
        if fn is None:
            self._send(404, {"error": f"no such endpoint: POST {path}"})
            return
        try:
            raw = self.read_body()
        except BodyTooLarge:
            self._send(400, {"error": f"bad Content-Length (at most {MAX_BODY} bytes)"})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(400, _auth_error("The request body is not valid JSON."))
            return
        if not isinstance(body, dict):
            self._send(400, _auth_error("The request body must be a JSON object."))
            return
        client = str(self.client_address[0])
        self._run(lambda: fn(body, client))

    def _post_activation(self) -> None:
        if not self._authorized():
            return
        try:
            raw = self.read_body()
        except BodyTooLarge:
            self._send(400, {"error": f"bad Content-Length (at most {MAX_BODY} bytes)"})
            return
        self._run(lambda: self.api.activate(raw))

    def _not_allowed(self) -> None:
        self._send(405, {"error": f"method {self.command} is not supported on "
                                  f"{urlsplit(self.path).path}"})

    # no sensor-side PUT, DELETE or PATCH is documented
    do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815

    def _run(self, fn: Callable[[], tuple[int, Any]]) -> None:
        try:
            status, body = fn()
        except BadQuery as e:
            status, body = e.status, {"error": str(e)}
        except Exception:  # never let one request take the sensor down
            log.exception("API handler failed")
            status, body = 500, {"error": "internal error"}
        self._send(status, body)


def ensure_certificate(state_dir: str | Path, names: list[str]) -> tuple[Path, Path]:
    """The sensor's self-signed certificate and key in ``<state>/tls``, made at first start.

    Files: ``tls/cert.pem`` and ``tls/cert.key``. A state folder written before the shared
    helper has its key in ``tls/key.pem``: that pair is kept (renamed to ``cert.key``), so a
    client that pinned the certificate's fingerprint still trusts the restarted sensor.
    """
    tls = Path(state_dir) / "tls"
    cert, old_key, key = tls / "cert.pem", tls / "key.pem", tls / "cert.key"
    if cert.exists() and old_key.exists() and not key.exists():
        old_key.replace(key)
    return ensure_self_signed(tls, stem="cert", common_name=CERT_COMMON_NAME, names=names)


def make_server(sensor: Sensor, store: SensorStore, listen: tuple[str, int],
                state_dir: str | Path,
                status_fn: Callable[[], dict[str, Any]] | None = None, *,
                header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                max_connections: int = MAX_CONNECTIONS,
                guard: LoginGuard | None = None) -> LabHTTPServer:
    """Build (bind) the HTTPS server; start it with :func:`start_in_thread`.

    The limits default to the sensor's (HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS);
    tests pass small ones.
    """
    cert, key = ensure_certificate(state_dir, [listen[0]])
    api = SensorApi(sensor, store, status_fn, guard=guard, state_dir=state_dir)
    handler = type("Handler", (_Handler,), {"api": api})
    server = LabHTTPServer(listen, handler, ssl_context=server_context(cert, key),
                           max_body=MAX_BODY, drain_limit=DRAIN_LIMIT,
                           header_timeout=header_timeout, idle_timeout=idle_timeout,
                           handshake_timeout=header_timeout,
                           max_connections=max_connections)
    return server


def start_in_thread(server: LabHTTPServer) -> threading.Thread:
    return server.start(name="sensor-api")


# ---- the D4IoT projection of the engine's records ----------------------------------------

def alert_to_api(a: Alert, version: int = 2) -> dict[str, Any]:
    """The D4IoT alert object; v2 adds the addresses and remediation steps."""
    out: dict[str, Any] = {
        "id": a.id,
        "time": a.time,
        "title": a.title,
        "message": a.message,
        "severity": a.severity,
        "engine": a.engine,
        "sourceDevice": a.source_device,
        "destinationDevice": a.destination_device,
        "additionalInformation": (
            {"description": a.description, "information": list(a.information)}
            if a.description or a.information else None),
    }
    if version >= 2:
        out["sourceDeviceAddress"] = a.source_address
        out["destinationDeviceAddress"] = a.destination_address
        out["remediationSteps"] = list(a.remediation)
    return out


def device_to_api(d: Device) -> dict[str, Any]:
    """The D4IoT /api/v1/devices object, plus the embedded sensor's extras.

    ``type`` is ``Unknown`` for a lab device (the embedded sensor does not classify
    devices), ``Internet`` or ``Multicast/Broadcast`` for an endpoint record.
    """
    return {
        "id": d.id,
        "name": d.ip,
        "type": d.kind,
        "ipAddresses": [d.ip],
        "macAddresses": [d.mac] if d.mac else [],
        "vendor": d.vendor,
        "operatingSystem": None,
        "engineeringStation": False,
        "scanner": d.scanner,
        "authorized": d.authorized,
        "protocols": [{"id": i + 1, "name": n, "ipAddresses": [d.ip]}
                      for i, n in enumerate(sorted(d.protocols))],
        "firmware": [],
        "hasDynamicAddress": False,
        # extras (not in the D4IoT schema; a client ignores unknown keys)
        "firstSeen": int(d.first_seen * 1000),
        "lastSeen": int(d.last_seen * 1000),
        "ports": sorted(d.ports),
        "vlans": sorted(d.vlans),
    }


def event_to_api(e: Event) -> dict[str, Any]:
    """The D4IoT /api/v1/events object."""
    return {"timestamp": e.timestamp, "type": e.type, "title": e.title,
            "severity": e.severity, "owner": e.owner, "content": e.content}


def connections_api(sensor: Sensor) -> list[dict[str, Any]]:
    """Connections grouped per device pair, in the D4IoT /devices/connections shape."""
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for c in sensor.connections.values():
        a, b = sorted((c.client, c.server))
        ent = pairs.get((a, b))
        if ent is None:
            da, db = sensor.device_by_ip(a), sensor.device_by_ip(b)
            ent = pairs[(a, b)] = {
                "firstDeviceId": da.id if da else None,
                "secondDeviceId": db.id if db else None,
                "lastSeen": 0, "discovered": None, "ports": set(), "protocols": set(),
                "firstDeviceAddress": a, "secondDeviceAddress": b,
            }
        ent["lastSeen"] = max(ent["lastSeen"], int(c.last_seen * 1000))
        first = int(c.first_seen * 1000)
        ent["discovered"] = first if ent["discovered"] is None else min(ent["discovered"],
                                                                         first)
        ent["ports"] |= c.ports
        ent["protocols"].add(PROTO_NAMES.get(c.proto, str(c.proto)))
        for port in c.ports:
            name = SERVICE_NAMES.get((c.proto, port))
            if name:
                ent["protocols"].add(name)
    out = []
    for ent in pairs.values():
        ent["ports"] = sorted(ent["ports"])
        ent["protocols"] = [{"name": n, "commands": []} for n in sorted(ent["protocols"])]
        out.append(ent)
    out.sort(key=lambda e: (e["discovered"] or 0, e["firstDeviceAddress"]))
    return out
