"""Microsoft Sentinel as an alert source: Defender for IoT alerts from Log Analytics.

Why: a cloud-connected Defender for IoT sensor forwards its alerts to Azure, and Sentinel's
``SecurityAlert`` table is where a SOC sees them. verify-alerts can prove they arrived there
too (``--source sentinel|both``).

Facts used (../shared/reference/defender-for-iot.md section 5, from Microsoft's docs):

- alerts are rows of ``SecurityAlert`` with ``ProviderName == "IoTSecurity"`` (older rows:
  ``ProductName`` has "Defender for IoT", so both are OR-ed in the query);
- ``AlertName`` is the D4IoT title, ``ProductComponentName`` the engine in upper snake case
  (``PROTOCOL_VIOLATION``), ``AlertSeverity`` the portal's High/Medium/Low,
  ``VendorOriginalId`` the sensor's alert id, ``StartTime`` the first detection;
  ``ExtendedProperties`` holds ``SourceDeviceAddress``/``DestinationDeviceAddress``;
- one row per create or update, updates aggregated for up to 12 h: rows are deduplicated on
  ``VendorOriginalId`` (in the query with ``arg_max``, and again here);
- a query can answer 200 with a partial error: the rows that came are used and the error is
  kept in :attr:`SentinelSource.last_error`;
- the delay from sensor to Sentinel is not documented (an old page said about 15 minutes),
  hence the long default deadline (``sentinel.alert_deadline_seconds``, 30 minutes).

The query goes through azure-monitor-query's ``LogsQueryClient`` with azure-identity's
``DefaultAzureCredential`` (environment, managed identity, Azure CLI ...). Azure errors are
translated here into labctl's: sign-in problems are AuthError (exit 5), unreachable
endpoints TransportError (exit 5), other HTTP errors ApiError.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from labctl.core.errors import ApiError, AuthError, TransportError, UsageError
from labctl.sensor.base import Alert

ENGINES = {"MALWARE": "Malware", "ANOMALY": "Anomaly", "PROTOCOL_VIOLATION":
           "Protocol Violation", "POLICY_VIOLATION": "Policy Violation",
           "OPERATIONAL": "Operational"}
#: portal severity -> the sensor's scale (High = Critical, Medium = Major, Low = Minor)
SEVERITIES = {"high": "Critical", "medium": "Major", "low": "Minor",
              "informational": "Warning"}
DEFAULT_SCOPE_AUDIENCE = "https://api.loganalytics.io"

QUERY = """SecurityAlert
| where TimeGenerated >= datetime({since})
| where ProviderName == "IoTSecurity" or ProductName has "Defender for IoT"
| extend Props = parse_json(ExtendedProperties)
| extend Src = tostring(Props.SourceDeviceAddress), Dst = tostring(Props.DestinationDeviceAddress)
| summarize arg_max(TimeGenerated, *) by VendorOriginalId
| project VendorOriginalId, AlertName, AlertSeverity, ProductComponentName, StartTime,
          TimeGenerated, Src, Dst, Description"""


def _ms(value: Any) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, str) and value:
        text = value.replace("Z", "+00:00")
        return _ms(dt.datetime.fromisoformat(text))
    if isinstance(value, int | float):
        return int(value)
    return 0


def row_to_alert(row: Mapping[str, Any]) -> Alert:
    """One ``SecurityAlert`` row (column name -> value) as a labctl Alert."""
    vendor_id = str(row.get("VendorOriginalId") or "")
    try:
        numeric = int(vendor_id.rsplit("-", 1)[-1]) if vendor_id else 0
    except ValueError:
        numeric = abs(hash(vendor_id)) % (10 ** 12)
    engine = str(row.get("ProductComponentName") or "")
    sev = str(row.get("AlertSeverity") or "")
    return Alert(
        id=numeric,
        time=_ms(row.get("StartTime") or row.get("TimeGenerated")),
        title=str(row.get("AlertName") or ""),
        message=str(row.get("Description") or ""),
        severity=SEVERITIES.get(sev.lower(), sev),
        engine=ENGINES.get(engine.upper(), engine.replace("_", " ").title()),
        source_address=(str(row["Src"]) or None) if row.get("Src") else None,
        destination_address=(str(row["Dst"]) or None) if row.get("Dst") else None,
        raw={"VendorOriginalId": vendor_id, **{k: _plain(v) for k, v in row.items()}},
    )


def _plain(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dict | list):
        return json.loads(json.dumps(v, default=str))
    return v


class SentinelSource:
    """An :class:`~labctl.sensor.base.AlertSource` reading Defender for IoT alerts from a
    Log Analytics workspace."""

    def __init__(self, workspace_id: str, *, credential: Any = None,
                 endpoint: str = DEFAULT_SCOPE_AUDIENCE, client: Any = None,
                 connection_verify: str | bool = True, timeout: float = 60.0) -> None:
        self.workspace_id = workspace_id
        self.endpoint = endpoint
        self._credential = credential
        self._client = client
        self._verify = connection_verify
        self._timeout = timeout
        self.last_error: str | None = None
        self._ids: set[str] = set()

    @classmethod
    def from_playbook(cls, section: Any, *, environ: Mapping[str, str] | None = None
                      ) -> SentinelSource:
        if section is None or not section.workspace_id:
            raise UsageError("Sentinel needs sentinel.workspace_id in the playbook")
        return cls(section.workspace_id, endpoint=section.query_endpoint)

    @property
    def name(self) -> str:
        return f"sentinel workspace {self.workspace_id}"

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        try:
            from azure.monitor.query import LogsQueryClient
        except ImportError:
            raise UsageError("reading alerts from Sentinel needs azure-monitor-query and "
                             "azure-identity", hint="pip install 'labctl[azure]'") from None
        cred = self._credential
        if cred is None:
            from azure.identity import DefaultAzureCredential

            cred = DefaultAzureCredential()
        self._client = LogsQueryClient(cred, endpoint=self.endpoint,
                                       audience=DEFAULT_SCOPE_AUDIENCE,
                                       connection_verify=self._verify,
                                       connection_timeout=self._timeout,
                                       read_timeout=self._timeout)
        return self._client

    def query(self, since_ms: int | None) -> list[dict[str, Any]]:
        """Rows of the alert query since ``since_ms`` (epoch ms), as column -> value."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        start = dt.datetime.fromtimestamp((since_ms or 0) / 1000.0, dt.UTC)
        since = start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        span = dt.datetime.now(dt.UTC) - start + dt.timedelta(minutes=5)
        try:
            res = self._get_client().query_workspace(self.workspace_id,
                                                     QUERY.format(since=since),
                                                     timespan=span)
        except ClientAuthenticationError as e:
            raise AuthError(f"Sentinel refused the credentials: {_first_line(e)}",
                            hint="sign in for azure-identity (az login, or the AZURE_* "
                                 "environment variables) with Log Analytics Reader on the "
                                 "workspace") from None
        except (ServiceRequestError, ServiceResponseError) as e:
            raise TransportError(f"cannot reach Log Analytics at {self.endpoint}: "
                                 f"{_first_line(e)}",
                                 hint="check the network and sentinel.query_endpoint") from None
        except HttpResponseError as e:
            status = getattr(e, "status_code", None) or 0
            if status in (401, 403):
                raise AuthError(f"Log Analytics answered {status}: {_first_line(e)}",
                                hint="the identity needs Log Analytics Reader on the "
                                     "workspace") from None
            raise ApiError(f"Log Analytics query failed: {_first_line(e)}", status=status,
                           endpoint="query") from None
        except Exception as e:
            if type(e).__name__ == "CredentialUnavailableError":
                raise AuthError(f"no Azure credential is available: {_first_line(e)}",
                                hint="run `az login`, or set AZURE_CLIENT_ID, "
                                     "AZURE_TENANT_ID and AZURE_CLIENT_SECRET") from None
            raise
        tables = getattr(res, "tables", None)
        self.last_error = None
        if tables is None:  # a partial result: use what came, keep the error
            tables = getattr(res, "partial_data", None) or []
            err = getattr(res, "partial_error", None)
            self.last_error = str(getattr(err, "message", err) or "partial result")
        rows: list[dict[str, Any]] = []
        for table in tables:
            cols = [c if isinstance(c, str) else getattr(c, "name", str(c))
                    for c in table.columns]
            for row in table.rows:
                rows.append(dict(zip(cols, list(row), strict=False)))
        return rows

    def alerts(self, since: int | None = None) -> list[Alert]:
        """Defender for IoT alerts first detected at or after ``since`` (epoch ms), one per
        ``VendorOriginalId``."""
        out: dict[str, Alert] = {}
        for row in self.query(since):
            a = row_to_alert(row)
            key = str(row.get("VendorOriginalId") or a.id)
            if since is not None and a.time < since:
                continue
            prev = out.get(key)
            if prev is None or a.time < prev.time:
                out[key] = a
        return list(out.values())


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e)
    return text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
