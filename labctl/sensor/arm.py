"""Defender for IoT's Azure side over ARM (``Microsoft.IoTSecurity``, api-version
2021-09-01-preview): the site, the OT sensor in it, and its activation file.

Paths and bodies follow the REST spec (azure-rest-api-specs ``.../2021-09-01-preview/
sites.json``, ``sensors.json`` and their ``examples/``), all subscription-scoped (no
resource group)::

    PUT  /subscriptions/{sub}/providers/Microsoft.IoTSecurity/locations/{loc}/sites/{site}
         {"properties": {"displayName": ..., "tags": {...}}}                -> 200 | 201
    PUT  .../sites/{site}/sensors/{sensor}
         {"properties": {"sensorType": "Ot", "zone": ..., "tiAutomaticUpdates": ...}}
    GET  .../sites/{site}[/sensors/{sensor}]
    POST .../sites/{site}/sensors/{sensor}/downloadActivation  -> 200 application/zip

Idempotence: each resource is read first. Absent (404): PUT, "created". Present with the
desired writable properties: nothing is sent, "noop". Present but different: PUT,
"updated". A PUT answered 409 Conflict (the resource exists, e.g. created concurrently) is
read back and compared the same way. 429 and 503 are retried after ``Retry-After`` seconds
(ARM sends it; capped at 120 s, at most ``max_retries`` times) through the injected sleep.

The bearer token comes from a credential with ``get_token(scope)`` (azure-identity's
``DefaultAzureCredential`` by default); it is never logged or put in an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labctl.core.errors import ApiError, AuthError, TransportError

API_VERSION = "2021-09-01-preview"
DEFAULT_ENDPOINT = "https://management.azure.com"
MAX_RETRY_AFTER = 120.0


def location_prefix(subscription: str, location: str) -> str:
    """The subscription-scoped path every resource of this module lives under."""
    return f"/subscriptions/{subscription}/providers/Microsoft.IoTSecurity/locations/{location}"


def site_path(site: str) -> str:
    return f"/sites/{site}"


def sensor_path(site: str, sensor: str) -> str:
    return f"/sites/{site}/sensors/{sensor}"


def activation_path(site: str, sensor: str) -> str:
    return f"/sites/{site}/sensors/{sensor}/downloadActivation"


@dataclass(frozen=True)
class ArmResult:
    resource: str  # "site" | "sensor"
    name: str
    action: str  # created | updated | noop | would-create | would-update
    properties: Mapping[str, Any]
    #: what ARM has now, for an update (a dry run's would-update shows both)
    before: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"resource": self.resource, "name": self.name, "action": self.action,
             "properties": dict(self.properties)}
        if self.before is not None:
            d["before"] = dict(self.before)
        return d


class ArmClient:
    def __init__(self, subscription: str, location: str, *, credential: Any = None,
                 endpoint: str = DEFAULT_ENDPOINT, verify: Any = True,
                 sleep: Callable[[float], None] = time.sleep, max_retries: int = 4,
                 timeout: float = 30.0) -> None:
        import requests

        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self.credential = credential
        self.endpoint = endpoint.rstrip("/")
        self.scope = self.endpoint + "/.default"
        self.prefix = location_prefix(subscription, location)
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False
        self.sleep = sleep
        self.max_retries = max_retries
        self.timeout = timeout

    # ---- plumbing --------------------------------------------------------------------

    def _token(self) -> str:
        try:
            tok = self.credential.get_token(self.scope)
        except Exception as e:  # azure-identity's CredentialUnavailableError and friends
            raise AuthError(f"no Azure token for {self.scope}: {type(e).__name__}",
                            hint="sign in with `az login`, or set AZURE_CLIENT_ID, "
                                 "AZURE_TENANT_ID and AZURE_CLIENT_SECRET") from None
        return str(tok.token)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One ARM call with retries on 429/503; returns the response (status < 400 or 404,
        409). Other errors are ApiError/AuthError naming the path, never the token."""
        import requests

        url = f"{self.endpoint}{self.prefix}{path}"
        for attempt in range(self.max_retries + 1):
            headers = {"Authorization": f"Bearer {self._token()}",
                       "Accept": "application/json"}
            try:
                r = self.session.request(method, url, params={"api-version": API_VERSION},
                                         json=body, headers=headers, timeout=self.timeout)
            except requests.RequestException as e:
                raise TransportError(f"{method} {self.endpoint}{self.prefix}{path}: "
                                     f"{type(e).__name__}",
                                     hint="check the network path to Azure Resource "
                                          "Manager") from None
            if r.status_code in (429, 503) and attempt < self.max_retries:
                self.sleep(_retry_after(r.headers.get("Retry-After"), attempt))
                continue
            if r.status_code in (401, 403):
                raise AuthError(f"{method} {path}: HTTP {r.status_code} {_arm_error(r)}",
                                hint="the identity needs Microsoft.IoTSecurity/locations/sites"
                                     "/sensors/* permissions on the subscription")
            if r.status_code >= 400 and r.status_code not in (404, 409):
                raise ApiError(f"{method} {path}: HTTP {r.status_code} {_arm_error(r)}",
                               status=r.status_code, endpoint=path)
            return r
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- resources -------------------------------------------------------------------

    def _ensure(self, resource: str, name: str, path: str, desired: dict[str, Any],
                dry_run: bool) -> ArmResult:
        cur = self.request("GET", path)
        if cur.status_code != 404:
            props = dict((cur.json() or {}).get("properties") or {})
            if _same(props, desired):
                return ArmResult(resource, name, "noop", props)
            if dry_run:
                return ArmResult(resource, name, "would-update", desired,
                                 before={k: props.get(k) for k in desired})
            action = "updated"
        else:
            if dry_run:
                return ArmResult(resource, name, "would-create", desired)
            action = "created"
        r = self.request("PUT", path, {"properties": desired})
        if r.status_code == 409:
            # it exists (made meanwhile, or the service refuses a re-PUT): read it back
            now = self.request("GET", path)
            props = dict((now.json() or {}).get("properties") or {}) \
                if now.status_code != 404 else {}
            if _same(props, desired):
                return ArmResult(resource, name, "noop", props)
            raise ApiError(f"PUT {path}: HTTP 409 {_arm_error(r)}, and the existing "
                           f"{resource} differs from the playbook", status=409, endpoint=path,
                           hint=f"change the {resource} in the Azure portal, or the playbook")
        props = dict((r.json() or {}).get("properties") or {}) if r.content else desired
        return ArmResult(resource, name, action, props)

    def ensure_site(self, site: str, display_name: str, tags: Mapping[str, str] | None = None,
                    *, dry_run: bool = False) -> ArmResult:
        desired: dict[str, Any] = {"displayName": display_name, "tags": dict(tags or {})}
        return self._ensure("site", site, site_path(site), desired, dry_run)

    def ensure_sensor(self, site: str, sensor: str, *, zone: str,
                      ti_automatic_updates: bool = True, dry_run: bool = False) -> ArmResult:
        desired = {"sensorType": "Ot", "zone": zone, "tiAutomaticUpdates": ti_automatic_updates}
        return self._ensure("sensor", sensor, sensor_path(site, sensor), desired,
                            dry_run)

    def get_sensor(self, site: str, sensor: str) -> dict[str, Any] | None:
        r = self.request("GET", sensor_path(site, sensor))
        if r.status_code == 404:
            return None
        doc = r.json() or {}
        return dict(doc.get("properties") or {})

    def download_activation(self, site: str, sensor: str) -> bytes:
        path = activation_path(site, sensor)
        r = self.request("POST", path)
        if r.status_code in (404, 409):
            raise ApiError(f"POST {path}: HTTP {r.status_code} {_arm_error(r)}",
                           status=r.status_code, endpoint=path,
                           hint="create the sensor first (labctl sensor azure)")
        data: bytes = r.content
        if not data.startswith(b"PK"):
            raise ApiError(f"POST {path}: the reply is not a ZIP "
                           f"({r.headers.get('Content-Type', 'no content type')})",
                           status=r.status_code, endpoint=path)
        return data


def _same(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """The writable properties labctl sets are equal (read-only ones are ignored)."""
    return all(current.get(k) == v for k, v in desired.items())


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        secs = float(value) if value is not None else 2.0 ** attempt
    except ValueError:  # an HTTP date: wait a bounded default
        secs = 2.0 ** attempt
    return max(0.0, min(secs, MAX_RETRY_AFTER))


def _arm_error(r: Any) -> str:
    try:
        err = (r.json() or {}).get("error") or {}
    except ValueError:
        return str(r.reason or "")
    if isinstance(err, dict):
        return f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    return str(err)
