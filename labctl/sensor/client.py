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

from typing import Any

from labctl.core.errors import ApiError, AuthError, LabctlError, TransportError
from labctl.core.secrets import Secret

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
                 json_body: dict[str, Any] | None = None, auth: bool = True) -> Any:
        headers = {"Accept": "application/json"}
        if auth:
            if self.token is None:
                raise AuthError(f"no access token for {self.base_url}",
                                hint="create one on the sensor (System Settings > "
                                     "Integrations > Access Tokens, or `labctl sensor token "
                                     "create`) and set LABCTL_SENSOR_TOKEN")
            headers["Authorization"] = _reveal(self.token)  # raw token, no "Bearer"
        url = self.base_url + path
        try:
            r = self.session.request(method, url, params=params, json=json_body,
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
        return self._request("GET", f"/api/v{version}/alerts", params=params)

    def devices(self, authorized: bool | None = None) -> list[dict[str, Any]]:
        params = {} if authorized is None else {"authorized": str(authorized).lower()}
        return self._request("GET", "/api/v1/devices", params=params)

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
        return self._request("GET", path, params=params)

    def events(self, minutes: int = 60, type: str | None = None) -> list[dict[str, Any]]:
        """``/api/v1/events``: the latest 100 events within ``minutes`` (max 4320).

        A real sensor caches an identical query for an hour; vary ``minutes`` when polling.
        """
        params: dict[str, Any] = {"minutesTimeFrame": int(minutes)}
        if type:
            params["type"] = type
        return self._request("GET", "/api/v1/events", params=params)

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
            return str(err.get("userDisplayErrorMessage") or err.get("message") or err)
        if err:
            return str(err)
        if body.get("msg"):
            return str(body["msg"])
    return None
