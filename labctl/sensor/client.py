"""A client for the D4IoT sensor REST API; works against a real sensor and the embedded one.

Why keys are parsed case-insensitively: Microsoft's own example spells
``additionalInformation`` two ways (``additionalinformation`` in one record). Every record
is returned with the documented camelCase keys (unknown keys are kept as sent).

TLS: by default the session comes from :func:`labctl.transport.http.make_session`, which
verifies the certificate or pins a self-signed one on first use; verification is never
turned off. Pass ``session`` to use another (e.g. one whose ``verify`` is the sensor's
certificate file).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from labctl.core.emulator import EmulatorProcess, EmulatorRequest
from labctl.core.errors import (
    ApiError,
    AuthError,
    ConvergenceError,
    LabctlError,
    TransportError,
    UnsupportedError,
    UsageError,
)
from labctl.core.secrets import Secret
from labctl.core.waiting import WaitTimeout, wait_until
from labctl.sensor.base import (
    Alert,
    Connection,
    CredentialsRejected,
    Device,
    Flow,
    PrepareResult,
    SensorStatus,
    SensorTarget,
)

Record = dict[str, Any]
#: the factory defaults of a fresh sensor, tried in this order: admin/admin on 24.1.x,
#: support/support on 23.x (defender-for-iot.md §4.2)
FACTORY_DEFAULTS = (("admin", "admin"), ("support", "support"))

ALERT_KEYS = ["id", "time", "title", "message", "severity", "engine", "sourceDevice",
              "destinationDevice", "additionalInformation", "sourceDeviceAddress",
              "destinationDeviceAddress", "remediationSteps", "handled", "sensorId",
              "zoneId", "siteId"]
DEVICE_KEYS = ["id", "name", "type", "ipAddresses", "macAddresses", "vendor",
               "operatingSystem", "engineeringStation", "scanner", "authorized", "protocols",
               "firmware", "hasDynamicAddress"]
CONNECTION_KEYS = ["firstDeviceId", "secondDeviceId", "lastSeen", "discovered", "ports",
                   "protocols"]
EVENT_KEYS = ["timestamp", "type", "title", "severity", "owner", "content"]
_CANON = {k.lower(): k for k in ALERT_KEYS + DEVICE_KEYS + CONNECTION_KEYS + EVENT_KEYS +
          ["description", "information", "name", "commands"]}


def normalize_keys(obj: Any) -> Any:
    """Documented keys in their canonical spelling, recursively."""
    if isinstance(obj, dict):
        return {_CANON.get(str(k).lower(), k): normalize_keys(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalize_keys(v) for v in obj]
    return obj


class PasswordChangeRequired(AuthError):
    """The sensor accepted the credentials but demands a new password (first sign-in)."""


def _reveal(v: Secret | str) -> str:
    return v.reveal() if isinstance(v, Secret) else str(v)


class D4IoTClient:
    """``D4IoTClient(base_url, token)``; every method returns parsed JSON with canonical keys."""

    def __init__(self, base_url: str, token: Secret | None = None, session: Any = None,
                 timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        if session is None:
            from labctl.transport.http import make_session

            session = make_session(self.base_url)
        self.session = session

    # ---- plumbing --------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                 json_body: dict[str, Any] | None = None, auth: bool = True,
                 data: bytes | None = None, content_type: str | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if auth:
            if self.token is None:
                raise AuthError(f"no access token for {self.base_url}",
                                hint="create one on the sensor (System Settings > "
                                     "Integrations > Access Tokens, or `labctl sensor token "
                                     "create`) and set LABCTL_SENSOR_TOKEN")
            headers["Authorization"] = _reveal(self.token)  # raw token, no "Bearer"
        url = self.base_url + path
        try:
            r = self.session.request(method, url, params=params, json=json_body, data=data,
                                     headers=headers, timeout=self.timeout)
        except LabctlError:  # already translated (labctl's HTTP session)
            raise
        except Exception as e:  # requests errors from a plain session
            raise TransportError(f"{method} {url}: {type(e).__name__}: {e}",
                                 hint="check the sensor URL and that it is up") from None
        try:
            body = r.json() if r.content else None
        except ValueError:
            body = None
        if r.status_code >= 400:
            msg = _error_text(body) or (r.text[:200] if r.text else r.reason)
            if r.status_code in (401, 403):
                raise AuthError(f"{method} {path}: {r.status_code} {msg}",
                                hint="check the access token (sent raw, without Bearer)"
                                if auth else "check the user name and password")
            raise ApiError(f"{method} {path}: HTTP {r.status_code}: {msg}",
                           status=r.status_code, endpoint=path)
        if body is None:
            raise ApiError(f"{method} {path}: the reply is not JSON", status=r.status_code,
                           endpoint=path)
        return normalize_keys(body)

    # ---- data APIs -------------------------------------------------------------------

    def alerts(self, version: int = 1, state: str | None = None, from_time: int | None = None,
               to_time: int | None = None) -> list[dict[str, Any]]:
        """``/api/v{1,2}/alerts``; times are epoch milliseconds."""
        if version not in (1, 2):
            raise ValueError("version must be 1 or 2")
        params: dict[str, Any] = {}
        if state:
            params["state"] = state
        if from_time is not None:
            params["fromTime"] = int(from_time)
        if to_time is not None:
            params["toTime"] = int(to_time)
        return cast("list[Record]",
                    self._request("GET", f"/api/v{version}/alerts", params=params))

    def devices(self, authorized: bool | None = None) -> list[dict[str, Any]]:
        params = {} if authorized is None else {"authorized": str(authorized).lower()}
        return cast("list[Record]", self._request("GET", "/api/v1/devices", params=params))

    def connections(self, device_id: int | None = None, discovered_before: int | None = None,
                    discovered_after: int | None = None,
                    last_active_minutes: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        if discovered_before is not None:
            params["discoveredBefore"] = discovered_before
        if discovered_after is not None:
            params["discoveredAfter"] = discovered_after
        if last_active_minutes is not None:
            params["lastActiveInMinutes"] = last_active_minutes
        path = "/api/v1/devices/connections" if device_id is None else \
            f"/api/v1/devices/{int(device_id)}/connections"
        return cast("list[Record]", self._request("GET", path, params=params))

    def events(self, minutes: int = 60, type: str | None = None  # noqa: A002 (API name)
               ) -> list[dict[str, Any]]:
        """``/api/v1/events``: the latest 100 events within ``minutes`` (max 4320).

        A real sensor caches an identical query for an hour; vary ``minutes`` when polling.
        """
        params: dict[str, Any] = {"minutesTimeFrame": int(minutes)}
        if type:
            params["type"] = type
        return cast("list[Record]", self._request("GET", "/api/v1/events", params=params))

    def labctl_status(self) -> dict[str, Any]:
        """``/api/labctl/status``: the embedded sensor's counters (a labctl extension; a real
        sensor answers 404, raised as ApiError)."""
        doc = self._request("GET", "/api/labctl/status")
        return doc if isinstance(doc, dict) else {}

    def flows(self, after_seq: int = 0, limit: int = 10_000) -> list[dict[str, Any]]:
        """``GET /api/labctl/flows``: the embedded sensor's stored flows with ``seq`` above
        ``after_seq``, in ``seq`` order (a labctl extension, token required; a real sensor
        answers 404, raised as ApiError)."""
        doc = self._request("GET", "/api/labctl/flows",
                            params={"after_seq": int(after_seq), "limit": int(limit)})
        if not isinstance(doc, list):
            raise ApiError("GET /api/labctl/flows: the reply is not a JSON list",
                           endpoint="/api/labctl/flows")
        return cast("list[Record]", doc)

    def labctl_activation(self) -> dict[str, Any]:
        """``GET /api/labctl/activation``: the embedded sensor's activation state (a labctl
        extension, token required; a real sensor answers 404, raised as ApiError)."""
        doc = self._request("GET", "/api/labctl/activation")
        return doc if isinstance(doc, dict) else {}

    def upload_activation(self, zip_bytes: bytes) -> dict[str, Any]:
        """``POST /api/labctl/activation`` with the activation ZIP as the body (labctl's
        endpoint on the embedded sensor; Microsoft documents no activation API)."""
        doc = self._request("POST", "/api/labctl/activation", data=zip_bytes,
                            content_type="application/zip")
        return doc if isinstance(doc, dict) else {}

    # ---- authentication APIs (no token) ----------------------------------------------

    def validate_credentials(self, user: str, password: Secret | str) -> bool:
        """True if the sensor accepts ``user``/``password``; False if it refuses them.

        Raises :class:`PasswordChangeRequired` when the credentials are right but the
        password must be changed first (a fresh sensor's admin/admin).
        """
        try:
            body = self._request("POST", "/api/external/authentication/validation",
                                 json_body={"username": user, "password": _reveal(password)},
                                 auth=False)
        except AuthError as e:
            if "must be changed" in e.message or "expired" in e.message.lower():
                raise PasswordChangeRequired(
                    f"the sensor requires a new password for {user!r}",
                    hint="labctl sets it via /api/external/authentication/set_password") \
                    from None
            return False
        return isinstance(body, dict) and "succeeded" in str(body.get("msg", "")).lower()

    def set_password(self, user: str, old: Secret | str, new: Secret | str) -> None:
        """Change ``user``'s password (also the forced change at first sign-in)."""
        try:
            self._request("POST", "/api/external/authentication/set_password",
                          json_body={"username": user, "password": _reveal(old),
                                     "new_password": _reveal(new)}, auth=False)
        except ApiError as e:
            raise ApiError(f"the sensor refused the new password: {e.message}",
                           status=e.status, endpoint=e.endpoint,
                           hint="use 8+ characters with upper and lower case, digits and "
                                "symbols") from None


def _error_text(body: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            text = str(err.get("userDisplayErrorMessage") or err.get("message") or err)
            internal = err.get("internalSystemErrorMessage")
            if internal and str(internal) != text:
                text += f" ({internal})"
            return text
        if err:
            return str(err)
        if body.get("msg"):
            return str(body["msg"])
    return None


# ---- the sensor driver ---------------------------------------------------------------------

def _int_or_none(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def alert_from_api(doc: Mapping[str, Any]) -> Alert:
    """A D4IoT alert object (v1 or v2, keys canonicalised) -> :class:`Alert`.

    v1 has no addresses; they are None then.
    """
    return Alert(id=int(doc.get("id") or 0), time=int(doc.get("time") or 0),
                 title=str(doc.get("title") or ""), message=str(doc.get("message") or ""),
                 severity=str(doc.get("severity") or ""), engine=str(doc.get("engine") or ""),
                 source_address=doc.get("sourceDeviceAddress"),
                 destination_address=doc.get("destinationDeviceAddress"),
                 handled=bool(doc.get("handled", False)), raw=dict(doc))


def device_from_api(doc: Mapping[str, Any]) -> Device:
    protocols = doc.get("protocols") or []
    return Device(id=int(doc.get("id") or 0), name=str(doc.get("name") or ""),
                  ip_addresses=tuple(str(a) for a in doc.get("ipAddresses") or ()),
                  mac_addresses=tuple(str(a) for a in doc.get("macAddresses") or ()),
                  vendor=doc.get("vendor"), authorized=bool(doc.get("authorized", False)),
                  scanner=bool(doc.get("scanner", False)),
                  protocols=tuple(str(p.get("name") if isinstance(p, dict) else p)
                                  for p in protocols))


def connection_from_api(doc: Mapping[str, Any]) -> Connection:
    protocols = doc.get("protocols") or []
    return Connection(first_device_id=_int_or_none(doc.get("firstDeviceId")),
                      second_device_id=_int_or_none(doc.get("secondDeviceId")),
                      discovered=_int_or_none(doc.get("discovered")),
                      last_seen=_int_or_none(doc.get("lastSeen")),
                      ports=tuple(int(p) for p in doc.get("ports") or ()),
                      protocols=tuple(str(p.get("name") if isinstance(p, dict) else p)
                                      for p in protocols))


def flow_from_api(doc: Mapping[str, Any]) -> Flow:
    """One ``/api/labctl/flows`` object as a :class:`~labctl.sensor.base.Flow`."""
    try:
        return Flow(id=int(doc["id"]), seq=int(doc["seq"]), vlan=int(doc["vlan"]),
                    proto=int(doc["proto"]), src=str(doc["src"]), sport=int(doc["sport"]),
                    dst=str(doc["dst"]), dport=int(doc["dport"]),
                    packets_out=int(doc["packets_out"]), bytes_out=int(doc["bytes_out"]),
                    packets_in=int(doc["packets_in"]), bytes_in=int(doc["bytes_in"]),
                    first=int(doc["first"]), last=int(doc["last"]),
                    minutes={int(m): int(n) for m, n in (doc.get("minutes") or {}).items()})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ApiError(f"GET /api/labctl/flows: a flow object is malformed ({e!r})",
                       endpoint="/api/labctl/flows") from None


class D4IoTDriver:
    """The sensor driver for anything that speaks the D4IoT sensor API: a real Defender for
    IoT OT sensor (``kind: d4iot``) and the twin's embedded sensor (``kind: embedded``).

    Built on :class:`D4IoTClient`; implements :class:`labctl.sensor.base.SensorDriver` and
    :class:`~labctl.sensor.base.AlertSource`.
    """

    kind = "d4iot"

    def __init__(self, target: SensorTarget, *, session: Any = None) -> None:
        self.target = target
        if session is None:
            from labctl.transport.http import make_session

            session = make_session(target.base_url, fingerprint=target.fingerprint,
                                   timeout=target.timeout, netns=target.netns, retries=0)
        self.client = D4IoTClient(target.base_url, token=target.token, session=session,
                                  timeout=target.timeout)

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def name(self) -> str:
        return f"{self.kind} {self.base_url}"

    # ---- first sign-in ---------------------------------------------------------------

    def prepare(self, user: str, password: Secret, *, wait_seconds: float,
                dry_run: bool = False, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> PrepareResult:
        """Wait for the API, then sign in; set ``password`` over a factory default."""
        waited = self._wait_for_api(user, password, timeout=wait_seconds, clock=clock,
                                    sleep=sleep)
        c = self.client
        try:
            ok = c.validate_credentials(user, password)
        except AuthError:
            ok = False
        if ok:
            return PrepareResult("noop", False, waited)
        default = self._factory_default(user)
        if default is None:
            raise CredentialsRejected(
                f"the sensor rejected the password for {user!r}, and the factory default is "
                "not set either", hint="set the sensor admin password to the sensor's "
                                       "current password")
        if dry_run:
            return PrepareResult("would-set-password", False, waited)
        c.set_password(default[0], default[1], password)
        if not c.validate_credentials(user, password):
            raise ConvergenceError("the sensor still rejects the new admin password after the "
                                   "change", hint="sign in to the sensor's web UI")
        return PrepareResult("set-password", True, waited)

    def _wait_for_api(self, user: str, password: Secret, *, timeout: float,
                      clock: Callable[[], float], sleep: Callable[[float], None],
                      interval: float = 2.0) -> float:
        """Poll the (token-free) validation endpoint until the sensor answers at all."""
        def answered() -> bool:
            try:
                self.client.validate_credentials(user, password)
            except AuthError:
                pass  # it answered; whether the credentials work is prepare's next step
            return True

        start = clock()
        try:
            wait_until(answered, timeout=timeout, interval=interval, clock=clock, sleep=sleep,
                       ignore=(TransportError,))
        except WaitTimeout as w:
            why = w.error.message if isinstance(w.error, LabctlError) else str(w.error)
            raise TransportError(
                f"the sensor at {self.base_url} did not answer within {timeout:g} s ({why})",
                hint="a fresh D4IoT install takes 20-30 minutes; check the VM console, or "
                     "raise sensor.wait_seconds") from None
        return clock() - start

    def _factory_default(self, user: str) -> tuple[str, str] | None:
        candidates = [d for d in FACTORY_DEFAULTS if d[0] == user] or list(FACTORY_DEFAULTS)
        for u, p in candidates:
            try:
                if self.client.validate_credentials(u, p):
                    return (u, p)
            except PasswordChangeRequired:
                return (u, p)
            except AuthError:
                continue
        return None

    # ---- reading ---------------------------------------------------------------------

    def alerts(self, since: int | None = None) -> list[Alert]:
        """v2 alerts (with addresses); a sensor without v2 is read through v1."""
        try:
            docs = self.client.alerts(version=2, from_time=since)
        except ApiError as e:
            if e.status != 404:
                raise
            docs = self.client.alerts(version=1, from_time=since)
        return [alert_from_api(d) for d in docs]

    def devices(self) -> list[Device]:
        return [device_from_api(d) for d in self.client.devices()]

    def connections(self) -> list[Connection]:
        return [connection_from_api(d) for d in self.client.connections()]

    def flows(self, after_seq: int = 0, limit: int = 10_000) -> list[Flow]:
        """The embedded sensor's flows after the ``after_seq`` cursor (the
        :class:`~labctl.sensor.base.FlowSource` protocol). A real D4IoT sensor has no flow
        API: its 404 becomes UnsupportedError."""
        try:
            docs = self.client.flows(after_seq, limit)
        except ApiError as e:
            if e.status != 404:
                raise
            raise UnsupportedError(
                f"{self.base_url} has no flow API (GET /api/labctl/flows: HTTP 404)",
                hint="a real Defender for IoT sensor keeps no per-flow records: use its "
                     "devices and connections, or capture traffic (--pcap, --interface, "
                     "--host-capture)") from None
        return [flow_from_api(d) for d in docs]

    def status(self) -> SensorStatus:
        """The embedded sensor's counters; a real sensor (no such endpoint) just answered."""
        try:
            doc = self.client.labctl_status()
        except ApiError as e:
            if e.status != 404:
                raise
            return SensorStatus(url=self.base_url, reachable=True)
        return SensorStatus(url=self.base_url, reachable=True,
                            learning_mode=doc.get("learning_mode"),
                            packets=_int_or_none(doc.get("packets")),
                            devices=_int_or_none(doc.get("devices")),
                            alerts=_int_or_none(doc.get("alerts")),
                            kernel_drops=_int_or_none(doc.get("kernel_drops")), details=doc)

    # ---- the twin --------------------------------------------------------------------

    @classmethod
    def emulator_process(cls, req: EmulatorRequest) -> EmulatorProcess:
        """``labctl sensor serve``: the embedded sensor speaks the D4IoT API for both kinds."""
        if not req.https:
            raise UsageError("the embedded sensor serves its API over HTTPS only",
                             hint="the D4IoT API is HTTPS; request https for the sensor")
        if not req.capture_interface:
            raise UsageError("the embedded sensor needs an interface to capture on",
                             hint="give the sensor VM a monitor NIC that receives the mirror")
        host = f"[{req.listen_ip}]" if ":" in req.listen_ip else req.listen_ip
        args: tuple[str, ...] = ("sensor", "serve", "--interface", req.capture_interface,
                                 "--listen", f"{host}:{req.port}",
                                 "--state", str(req.state_path))
        if req.config_file is not None:
            # the twin's engines file: the playbook's sensor.engines, learning_mode and
            # authorized_scanners over the shipped engines.yaml
            args += ("--config", str(req.config_file))
        return EmulatorProcess(args=args, ready=(req.listen_ip, req.port))
