"""The sentinel section: Microsoft Sentinel's Log Analytics workspace (read alerts) and its
Logs Ingestion path (export flows and alerts).

Facts (../shared/reference/defender-for-iot.md section 5): Defender for IoT alerts land in
the ``SecurityAlert`` table with ``ProviderName == "IoTSecurity"``; the query API lives at
``https://api.loganalytics.io/v1/workspaces/{id}/query`` (``api.loganalytics.azure.com`` is
the newer host name; both are accepted), with tokens for ``https://api.loganalytics.io``.
"""

from __future__ import annotations

from pydantic import Field, StrictInt, field_validator

from labctl.core.playbook.common import Model

GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


def _https(v: str | None) -> str | None:
    if v is None:
        return v
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in v):
        raise ValueError("control characters are not allowed in a URL")
    from urllib.parse import urlsplit

    try:
        u = urlsplit(v)
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"{v!r} is not a valid URL ({e})") from None
    if u.scheme != "https" or not u.hostname:
        raise ValueError(f"{v!r} must be an https:// URL")
    if u.username or u.password:
        raise ValueError("URLs carry no credentials (use azure-identity's sign-in)")
    return v.rstrip("/")


class SentinelSection(Model):
    #: the Log Analytics workspace id (a GUID) that Sentinel runs on
    workspace_id: str | None = Field(default=None, pattern=GUID)
    #: the Log Analytics query endpoint
    query_endpoint: str = "https://api.loganalytics.io"
    #: how long verify-alerts waits for an alert to reach Sentinel (seconds)
    alert_deadline_seconds: StrictInt = Field(default=1800, ge=10, le=86400)
    #: Logs Ingestion (traffic export): data collection endpoint, DCR immutable id, stream
    data_collection_endpoint: str | None = None
    dcr_immutable_id: str | None = Field(default=None, pattern=r"^dcr-[0-9a-fA-F]{32}$")
    stream_name: str = Field(default="Custom-LabctlFlows_CL",
                             pattern=r"^Custom-[A-Za-z0-9_]{1,60}$")
    #: the DCR stream that takes the sensor's alerts (traffic export --sensor --sentinel)
    alert_stream_name: str = Field(default="Custom-LabctlAlerts_CL",
                                   pattern=r"^Custom-[A-Za-z0-9_]{1,60}$")

    @field_validator("query_endpoint", "data_collection_endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _https(v)
