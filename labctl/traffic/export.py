"""Flow export records: one plain document per directed flow (JSON lines today; the same
documents are what syslog and Sentinel export will carry)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from labctl.traffic.flows import FlowTable
from labctl.traffic.report import iso, proto_name


def flow_documents(table: FlowTable) -> Iterator[dict[str, Any]]:
    """Directed flows, oldest first, with the DNS name of each end when the capture had one."""
    names = table.dns_names()
    macs = table.mac_of()
    for f in sorted(table.records(), key=lambda r: (r.first, r.src, r.dst, r.sport)):
        yield {
            "TimeGenerated": iso(f.last), "FirstSeen": iso(f.first), "LastSeen": iso(f.last),
            "Vlan": f.vlan, "SrcIp": f.src, "DstIp": f.dst, "SrcMac": macs.get(f.src),
            "Protocol": proto_name(f.proto),
            "SrcPort": f.sport if f.sport >= 0 else None,
            "DstPort": f.dport if f.dport >= 0 else None,
            "Packets": f.packets, "Bytes": f.bytes,
            "SrcName": names.get(f.src), "DstName": names.get(f.dst),
        }


# ---- syslog --------------------------------------------------------------------------

#: facility local0 (16), severity informational (6): RFC 5424 section 6.2.1
PRI_FLOW = 16 * 8 + 6
#: structured-data id: IANA's example enterprise number (RFC 5612) until labctl has its own
SD_ID = "labctl@32473"
APP = "labctl"


def _sd_value(v: object) -> str:
    """An SD-PARAM value: ``"``, ``\\`` and ``]`` escaped (RFC 5424 section 6.3.3)."""
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _cef_header(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|")


def _cef_ext(v: object) -> str:
    return (str(v).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r")
            .replace("\n", "\\n"))


def _epoch_ms(text: str) -> int:
    import datetime as _dt

    return int(_dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def format_rfc5424(doc: dict[str, Any], hostname: str) -> str:
    """One flow as an RFC 5424 message; the fields travel as structured data."""
    sd = " ".join(f'{k}="{_sd_value(v)}"' for k, v in _fields(doc))
    text = (f"flow {doc['SrcIp']}:{doc['SrcPort'] if doc['SrcPort'] is not None else '-'} -> "
            f"{doc['DstIp']}:{doc['DstPort'] if doc['DstPort'] is not None else '-'} "
            f"{doc['Protocol']} {doc['Packets']} packets {doc['Bytes']} bytes")
    return (f"<{PRI_FLOW}>1 {doc['TimeGenerated']} {hostname} {APP} - flow "
            f"[{SD_ID} {sd}] {text}")


def _fields(doc: dict[str, Any]) -> list[tuple[str, object]]:
    keys = ("SrcIp", "SrcPort", "DstIp", "DstPort", "Protocol", "Vlan", "Packets", "Bytes",
            "FirstSeen", "LastSeen", "SrcMac", "SrcName", "DstName")
    return [(k, doc[k]) for k in keys if doc.get(k) is not None]


def format_cef(doc: dict[str, Any], hostname: str) -> str:
    """One flow as CEF:0 inside an RFC 5424 envelope (ArcSight extension keys)."""
    from labctl import __version__

    ext = [("rt", _epoch_ms(doc["TimeGenerated"])), ("start", _epoch_ms(doc["FirstSeen"])),
           ("end", _epoch_ms(doc["LastSeen"])), ("src", doc["SrcIp"]), ("dst", doc["DstIp"]),
           ("spt", doc["SrcPort"]), ("dpt", doc["DstPort"]), ("proto", doc["Protocol"]),
           ("cnt", doc["Packets"]), ("out", doc["Bytes"]), ("smac", doc["SrcMac"]),
           ("shost", doc["SrcName"]), ("dhost", doc["DstName"]),
           ("cn1", doc["Vlan"]), ("cn1Label", "Vlan")]
    body = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext if v is not None)
    head = "|".join(_cef_header(x) for x in ("CEF:0", "labctl", "traffic", __version__,
                                              "flow", "Flow", 1))
    return f"<{PRI_FLOW}>1 {doc['TimeGenerated']} {hostname} {APP} - flow - {head}|{body}"


def parse_syslog_url(url: str) -> tuple[str, str, int]:
    """``udp://HOST:PORT``, ``tcp://...`` or ``tls://...`` -> (scheme, host, port)."""
    from urllib.parse import urlsplit

    from labctl.core.errors import UsageError

    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise UsageError(f"--syslog {url!r}: {e}") from None
    if u.scheme not in ("udp", "tcp", "tls") or not u.hostname or port is None:
        raise UsageError(f"--syslog {url!r}: give udp://HOST:PORT, tcp://HOST:PORT or "
                         "tls://HOST:PORT")
    if u.username or u.password or u.path not in ("", "/") or u.query or u.fragment:
        raise UsageError(f"--syslog {url!r}: only a scheme, a host and a port")
    return u.scheme, u.hostname, port


class SyslogSender:
    """Send messages over UDP (one per datagram), TCP or TLS (RFC 6587 / RFC 5425
    octet-counting framing: ``LEN SP MSG``). TLS verifies the server's certificate against
    ``cafile`` (default: the system's trust store) and its host name."""

    def __init__(self, url: str, *, cafile: str | None = None, timeout: float = 10.0) -> None:
        import socket

        from labctl.core.errors import TransportError

        self.scheme, self.host, self.port = parse_syslog_url(url)
        try:
            if self.scheme == "udp":
                self.sock = socket.socket(socket.AF_INET6 if ":" in self.host
                                          else socket.AF_INET, socket.SOCK_DGRAM)
                self.sock.connect((self.host, self.port))
            else:
                raw = socket.create_connection((self.host, self.port), timeout=timeout)
                if self.scheme == "tls":
                    import ssl

                    ctx = ssl.create_default_context(cafile=cafile)
                    self.sock = ctx.wrap_socket(raw, server_hostname=self.host)
                else:
                    self.sock = raw
        except OSError as e:
            raise TransportError(f"syslog {url}: {e}",
                                 hint="is the collector listening, and is its certificate "
                                      "signed by --ca?") from None

    def send(self, msg: str) -> None:
        data = msg.encode("utf-8")
        if self.scheme == "udp":
            self.sock.send(data[:65000])
        else:
            self.sock.sendall(str(len(data)).encode() + b" " + data)

    def close(self) -> None:
        import socket

        try:
            if self.scheme != "udp":
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ---- Microsoft Sentinel (Azure Monitor Logs Ingestion API) ---------------------------

#: the API's limit per call is "1 MB" of uncompressed JSON. azure-monitor-ingestion splits
#: a list into chunks of up to 1 MiB (1,048,576 bytes); labctl batches to 1,000,000 bytes
#: itself, so a batch is one request under either reading of the limit
SENTINEL_BATCH_MAX = 1_000_000
SENTINEL_RECORD_MAX = 64 * 1024


def batches(docs: list[dict[str, Any]], limit: int = SENTINEL_BATCH_MAX
            ) -> list[list[dict[str, Any]]]:
    """Split ``docs`` into lists whose JSON array (``json.dumps`` default separators, as
    the client serialises) stays within ``limit`` bytes."""
    import json as _json

    out: list[list[dict[str, Any]]] = []
    cur: list[dict[str, Any]] = []
    size = 2  # "[" and "]"
    for d in docs:
        n = len(_json.dumps(d).encode("utf-8")) + (2 if cur else 0)  # ", " between items
        if cur and size + n > limit:
            out.append(cur)
            cur, size = [], 2
            n -= 2
        cur.append(d)
        size += n
    if cur:
        out.append(cur)
    return out


def upload_sentinel(docs: list[dict[str, Any]], *, endpoint: str, rule_id: str, stream: str,
                    credential: Any, verify: str | bool = True, retries: int = 5,
                    backoff: float = 0.8) -> dict[str, int]:
    """Upload flow documents through ``LogsIngestionClient``; returns counts.

    Batching: :func:`batches` of at most :data:`SENTINEL_BATCH_MAX` bytes of JSON, each one
    gzip-compressed request. Retries: azure-core's retry policy resends a chunk that got
    408, 429 (honouring Retry-After), 500, 502, 503 or 504, up to ``retries`` times; a chunk
    is sent again only when the service did not accept it, so accepted records are not
    duplicated. A record larger than :data:`SENTINEL_RECORD_MAX` is refused before sending.
    A chunk that still fails raises :class:`~labctl.core.errors.ApiError` naming how many
    records were not accepted.
    """
    import json as _json

    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
    )
    from azure.monitor.ingestion import LogsIngestionClient

    from labctl.core.errors import ApiError, AuthError, TransportError, UsageError

    for i, d in enumerate(docs):
        if len(_json.dumps(d)) > SENTINEL_RECORD_MAX:
            raise UsageError(f"flow record {i} is larger than {SENTINEL_RECORD_MAX} bytes")
    failed: list[tuple[int, str]] = []

    def on_error(err: Any) -> None:
        failed.append((len(err.failed_logs), str(err.error).splitlines()[0]))

    client = LogsIngestionClient(endpoint=endpoint, credential=credential,
                                 connection_verify=verify, retry_total=retries,
                                 retry_status=retries, retry_backoff_factor=backoff,
                                 retry_backoff_max=30)
    try:
        with client:
            for batch in batches(docs):
                logs: list[MutableMapping[str, Any]] = list(batch)
                client.upload(rule_id=rule_id, stream_name=stream, logs=logs,
                              on_error=on_error)
    except ClientAuthenticationError as e:
        raise AuthError(f"Logs Ingestion {endpoint}: sign-in failed: {e.message}") from None
    except ServiceRequestError as e:
        raise TransportError(f"Logs Ingestion {endpoint}: {e.message}") from None
    except HttpResponseError as e:
        raise ApiError(f"Logs Ingestion {endpoint}: {e.message}", status=e.status_code,
                       endpoint=endpoint) from None
    if failed:
        lost = sum(n for n, _ in failed)
        raise ApiError(f"Logs Ingestion {endpoint}: {lost} of {len(docs)} records were not "
                       f"accepted after {retries} retries ({failed[0][1]})", endpoint=endpoint)
    return {"records": len(docs)}
