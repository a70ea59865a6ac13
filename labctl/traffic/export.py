"""Flow export records: one plain document per directed flow (JSON lines today; the same
documents are what syslog and Sentinel export will carry)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.traffic.flows import FlowTable
from labctl.traffic.report import iso, proto_name

if TYPE_CHECKING:
    import socket

    from labctl.sensor.base import Alert, Flow


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


def sensor_flow_documents(flows: list[Flow]) -> Iterator[dict[str, Any]]:
    """One document per sensor flow record (:class:`labctl.sensor.base.Flow`): the same
    keys as :func:`flow_documents` for the opening direction (``Packets``/``Bytes`` are
    ``src -> dst``), plus ``PacketsIn``/``BytesIn`` (``dst -> src``), ``FlowId`` and
    ``FlowSeq``. Counters are cumulative: a later record of the same ``FlowId`` replaces an
    earlier one."""
    for f in flows:
        yield {
            "TimeGenerated": iso(f.last / 1000), "FirstSeen": iso(f.first / 1000),
            "LastSeen": iso(f.last / 1000), "Vlan": f.vlan, "SrcIp": f.src, "DstIp": f.dst,
            "SrcMac": None, "Protocol": proto_name(f.proto),
            "SrcPort": f.sport if f.sport >= 0 else None,
            "DstPort": f.dport if f.dport >= 0 else None,
            "Packets": f.packets_out, "Bytes": f.bytes_out,
            "PacketsIn": f.packets_in, "BytesIn": f.bytes_in,
            "SrcName": None, "DstName": None, "FlowId": f.id, "FlowSeq": f.seq,
        }


# ---- alerts, in the fields of Defender for IoT's own syslog forwarding ----------------

#: D4IoT severity -> the CEF header's severity, as Microsoft documents D4IoT's CEF forwarding
#: ("1=Warning, 4=Minor, 8=Major, or 10=Critical"); --cef-severity changes it
CEF_SEVERITY = {"Warning": 1, "Minor": 4, "Major": 8, "Critical": 10}
#: the CEF Device Event Class ID of every D4IoT alert line
CEF_EVENT_CLASS = "Microsoft Defender for IoT Alert"
#: facility user (1), severity alert (1): D4IoT's forwarding rules send "User.Alert"
PRI_ALERT = 1 * 8 + 1


def _alert_raw(a: Alert, *names: str) -> Any:
    """A key of the alert's own object, in any letter case (v1 and v2 spellings differ)."""
    low = {str(k).lower(): v for k, v in a.raw.items()}
    for n in names:
        v = low.get(n.lower())
        if v not in (None, ""):
            return v
    return None


def _is_ip(text: str | None) -> bool:
    import ipaddress

    if not text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def alert_document(a: Alert, *, sensor: str, macs: Mapping[str, str] | None = None,
                   names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One alert as a plain document (JSON lines, Sentinel's alert stream, and the source of
    both syslog formats). ``macs``/``names``: the sensor's inventory, IP -> MAC / name.

    The D4IoT alert object has no protocol, MAC or alert-group keys: ``Protocol`` is taken
    from the alert's own object when it has one (``protocol``), else None; MACs come from
    the inventory, or from the address itself when the v2 address is a MAC.
    """
    macs = macs or {}
    names = names or {}

    def split(addr: str | None) -> tuple[str | None, str | None]:
        if addr is None or addr == "":
            return None, None
        if _is_ip(addr):
            return addr, macs.get(addr)
        return None, addr.lower() if addr.count(":") == 5 else None

    src_ip, src_mac = split(a.source_address)
    dst_ip, dst_mac = split(a.destination_address)
    info = _alert_raw(a, "additionalInformation")
    return {
        "TimeGenerated": iso(a.time / 1000), "AlertId": a.id, "Title": a.title,
        "Message": a.message, "Severity": a.severity, "Engine": a.engine,
        "Protocol": _alert_raw(a, "protocol"),
        "SrcIp": src_ip, "SrcMac": src_mac, "SrcName": names.get(src_ip or ""),
        "DstIp": dst_ip, "DstMac": dst_mac, "DstName": names.get(dst_ip or ""),
        "Category": _alert_raw(a, "alertGroup", "category"),
        "Description": info.get("description") if isinstance(info, dict) else None,
        "Handled": a.handled, "Sensor": sensor,
    }


def _cef_time(iso_text: str) -> str:
    """CEF's ``MMM dd yyyy HH:mm:ss`` (UTC), the form of D4IoT's ``start`` example."""
    import datetime as _dt

    t = _dt.datetime.fromisoformat(iso_text.replace("Z", "+00:00")).astimezone(_dt.UTC)
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
              "Dec")
    return f"{months[t.month - 1]} {t.day:02d} {t.year} {t:%H:%M:%S}"


@dataclass(frozen=True)
class CefOptions:
    """The parts of the alert CEF line that are not certain (docs/traffic.md "Alerts"):
    configurable, with Microsoft's documented values as defaults."""

    #: the page lists the vendor part as "Microsoft Defender for IoT/CyberX"; sent as written
    vendor: str = "Microsoft Defender for IoT/CyberX"
    #: the CEF product field: the sensor's name (None: the playbook's sensor name)
    product: str | None = None
    #: the CEF version field: the sensor's version; labctl sends its own unless told
    version: str | None = None
    severity: Mapping[str, int] = field(default_factory=lambda: dict(CEF_SEVERITY))
    #: ``src_ip``/``dst_ip`` (Microsoft's page) or ``src``/``dst`` (ArcSight's names)
    address_keys: str = "src_ip"


def format_alert_cef(doc: Mapping[str, Any], hostname: str,
                     opts: CefOptions | None = None, sensor_name: str | None = None) -> str:
    """One alert as D4IoT's CEF forwarding sends it (Microsoft Learn, "Forward on-premises
    OT alert information", Syslog CEF output fields):
    ``CEF:0|Microsoft Defender for IoT/CyberX|<sensor name>|<version>|Microsoft Defender for
    IoT Alert|<title>|<1, 4, 8 or 10>|`` then ``msg protocol severity type start src_ip src_mac
    dst_ip dst_mac cat`` (optional ones left out when unknown; the sensor API gives no
    ``UUID``, so none is sent), then labctl's own
    ``externalId`` (the alert id, for de-duplication) and ``dvchost``; inside an RFC 5424
    header with PRI user.alert (9)."""
    from labctl import __version__

    o = opts or CefOptions()
    sev = o.severity.get(str(doc["Severity"]), 1)
    a_src, a_dst = ("src", "dst") if o.address_keys == "src" else ("src_ip", "dst_ip")
    ext = [("msg", doc["Message"]), ("protocol", doc["Protocol"]),
           ("severity", doc["Severity"]), ("type", doc["Engine"]),
           ("start", _cef_time(doc["TimeGenerated"])), (a_src, doc["SrcIp"]),
           ("src_mac", doc["SrcMac"]), (a_dst, doc["DstIp"]), ("dst_mac", doc["DstMac"]),
           ("cat", doc["Category"]), ("externalId", doc["AlertId"]), ("dvchost", hostname)]
    body = " ".join(f"{k}={_cef_ext(v)}" for k, v in ext if v is not None)
    product = o.product or sensor_name or doc.get("Sensor") or "sensor"
    head = "|".join(_cef_header(x) for x in (
        "CEF:0", o.vendor, product, o.version or __version__, CEF_EVENT_CLASS, doc["Title"],
        sev))
    return (f"<{PRI_ALERT}>1 {doc['TimeGenerated']} {hostname} {APP} - alert - "
            f"{head}|{body}")


ALERT_SD_ID = "labctl-alert@32473"


def format_alert_rfc5424(doc: Mapping[str, Any], hostname: str,
                         sensor_name: str | None = None) -> str:
    """One alert as D4IoT's "Syslog text message": the labels of Microsoft's table in its
    order (``CyberX platform name``, ``Microsoft Defender for IoT Alert`` (the title),
    ``Type``, ``Severity``, ``Source``, ``Source IP``, ``Destination``, ``Destination IP``,
    ``Message``, ``Alert group``; the optional ``Protocol`` only when known (the API gives
    no ``Address`` or ``UUID``); ``N/A`` for a missing required one), joined by ``; ``.
    The fields also travel as RFC 5424 structured data."""
    def na(v: Any) -> str:
        return "N/A" if v is None or v == "" else str(v)

    keys = ("AlertId", "Title", "Severity", "Engine", "Protocol", "SrcIp", "SrcMac", "DstIp",
            "DstMac", "Category", "Sensor")
    sd = " ".join(f'{k}="{_sd_value(doc[k])}"' for k in keys if doc.get(k) is not None)
    parts = [("CyberX platform name", sensor_name or doc.get("Sensor")),
             ("Microsoft Defender for IoT Alert", doc["Title"]),
             ("Type", doc["Engine"]), ("Severity", doc["Severity"]),
             ("Source", doc.get("SrcName") or doc["SrcIp"] or doc["SrcMac"]),
             ("Source IP", doc["SrcIp"])]
    if doc.get("Protocol"):
        parts.append(("Protocol", doc["Protocol"]))
    parts += [("Destination", doc.get("DstName") or doc["DstIp"] or doc["DstMac"]),
              ("Destination IP", doc["DstIp"]), ("Message", doc["Message"]),
              ("Alert group", doc["Category"])]
    text = "; ".join(f"{k}: {na(v)}" for k, v in parts)
    text = text.replace("\r", " ").replace("\n", " ")
    return (f"<{PRI_ALERT}>1 {doc['TimeGenerated']} {hostname} {APP} - alert "
            f"[{ALERT_SD_ID} {sd}] {text}")


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
            "FirstSeen", "LastSeen", "SrcMac", "SrcName", "DstName", "PacketsIn", "BytesIn",
            "FlowId", "FlowSeq")
    return [(k, doc[k]) for k in keys if doc.get(k) is not None]


def format_cef(doc: dict[str, Any], hostname: str) -> str:
    """One flow as CEF:0 inside an RFC 5424 envelope (ArcSight extension keys)."""
    from labctl import __version__

    ext = [("rt", _epoch_ms(doc["TimeGenerated"])), ("start", _epoch_ms(doc["FirstSeen"])),
           ("end", _epoch_ms(doc["LastSeen"])), ("src", doc["SrcIp"]), ("dst", doc["DstIp"]),
           ("spt", doc["SrcPort"]), ("dpt", doc["DstPort"]), ("proto", doc["Protocol"]),
           ("cnt", doc["Packets"]), ("out", doc["Bytes"]), ("smac", doc["SrcMac"]),
           ("shost", doc["SrcName"]), ("dhost", doc["DstName"]),
           ("cn1", doc["Vlan"]), ("cn1Label", "Vlan"), ("in", doc.get("BytesIn")),
           ("cn2", doc.get("FlowId")),
           ("cn2Label", "FlowId" if doc.get("FlowId") is not None else None),
           ("cn3", doc.get("FlowSeq")),
           ("cn3Label", "FlowSeq" if doc.get("FlowSeq") is not None else None)]
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
    octet-counting framing: ``LEN SP MSG``).

    TLS is always verified, one of three ways (docs/traffic.md "TLS"):

    * ``fingerprint`` given: the server's certificate must have exactly that SHA-256;
    * ``cafile`` given: the chain must verify against it, and the host name must match;
    * neither: the system's trust store and the host name; a certificate that does not
      verify there (a self-signed collector) is pinned by SHA-256 on first use in labctl's
      pin store (:class:`labctl.transport.http.PinStore`, ``host:port`` -> sha256) and
      enforced from then on. A pinned certificate that changed is refused before anything
      is sent, with a hint how to re-pin.
    """

    def __init__(self, url: str, *, cafile: str | None = None, fingerprint: str | None = None,
                 pin_store: Path | None = None, timeout: float = 10.0) -> None:
        import socket

        from labctl.core.errors import TransportError

        self.scheme, self.host, self.port = parse_syslog_url(url)
        self.pinned: str | None = None
        try:
            if self.scheme == "udp":
                self.sock = socket.socket(socket.AF_INET6 if ":" in self.host
                                          else socket.AF_INET, socket.SOCK_DGRAM)
                self.sock.connect((self.host, self.port))
            elif self.scheme == "tls":
                self.sock = self._tls(url, cafile, fingerprint, pin_store, timeout)
            else:
                self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise TransportError(f"syslog {url}: {e}",
                                 hint="is the collector listening, and is its certificate "
                                      "signed by --ca?") from None

    def _tls(self, url: str, cafile: str | None, fingerprint: str | None,
             pin_store: Path | None, timeout: float) -> socket.socket:
        import socket
        import ssl

        from labctl.core.errors import TransportError
        from labctl.core.state import pins_file
        from labctl.transport.http import (
            PinStore,
            cert_fingerprint,
            fetch_peer_certificate,
            normalize_fingerprint,
            pin_key,
        )

        key = pin_key(self.host, self.port)
        store = PinStore(pin_store or pins_file())
        want = normalize_fingerprint(fingerprint) if fingerprint else None
        learn = False
        if want is None and cafile is None:
            want = store.get(key)
            if want is None:
                der, ca_ok = fetch_peer_certificate(self.host, self.port, timeout)
                if not ca_ok:
                    want, learn = cert_fingerprint(der), True
        raw = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            if want is None:
                ctx = ssl.create_default_context(cafile=cafile)
                return ctx.wrap_socket(raw, server_hostname=self.host)
            # Exact-certificate check instead of a CA chain (as urllib3's
            # assert_fingerprint does for the HTTPS pins): the handshake completes, the
            # peer's DER certificate is hashed, and nothing is sent unless it matches.
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            tls = ctx.wrap_socket(raw, server_hostname=self.host)
            got = cert_fingerprint(tls.getpeercert(binary_form=True) or b"")
            if got != want:
                tls.close()
                if fingerprint:
                    raise TransportError(
                        f"syslog {url}: the collector's certificate (sha256 {got}) is not "
                        f"the one given by --fingerprint",
                        hint="check --fingerprint against the collector's certificate")
                raise TransportError(
                    f"syslog {url}: the TLS certificate of {key} changed: it no longer "
                    f"matches the pinned sha256 fingerprint (now {got}; possible "
                    "interception)",
                    hint=f"if the collector's certificate was replaced on purpose, remove "
                         f"{key!r} from {store.path} to pin the new one on the next run, "
                         "or give --ca FILE")
            if learn:
                store.set(key, got)
            self.pinned = got
            return tls
        except ssl.SSLCertVerificationError as e:
            raw.close()
            raise TransportError(f"syslog {url}: TLS verification failed: {e.verify_message}",
                                 hint="give the CA that signs the collector's certificate "
                                      "with --ca FILE") from None
        except BaseException:
            raw.close()
            raise

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


# ---- sinks: where export sends documents ---------------------------------------------

class JsonlSink:
    """JSON lines, one object per record with ``RecordType`` ``flow`` or ``alert``. A
    one-shot export truncates the file; ``append`` (``--follow``) adds to it. Each batch is
    flushed and fsync'd before :meth:`send` returns, so a cursor saved after it never
    points past what is on disk."""

    def __init__(self, path: str, *, append: bool = False) -> None:
        import os

        from labctl.core.errors import UsageError

        self.path = path
        self.key = f"jsonl:{os.path.abspath(path)}"
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise UsageError(f"--jsonl {path}: cannot write: {e.strerror}") from None
        self.f = os.fdopen(fd, "w", encoding="utf-8")

    def send(self, kind: str, docs: list[dict[str, Any]]) -> None:
        import json
        import os

        for d in docs:
            self.f.write(json.dumps({"RecordType": kind, **d}, sort_keys=True) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


class SyslogSink:
    """Syslog messages: flows as :func:`format_rfc5424`/:func:`format_cef`, alerts as
    :func:`format_alert_rfc5424`/:func:`format_alert_cef`."""

    def __init__(self, url: str, fmt: str, hostname: str, *, cafile: str | None = None,
                 fingerprint: str | None = None, cef: CefOptions | None = None,
                 sensor_name: str | None = None) -> None:
        self.key = f"syslog:{url}"
        self.sensor_name = sensor_name
        self.fmt = fmt
        self.hostname = hostname
        self.cef = cef
        self.sender = SyslogSender(url, cafile=cafile, fingerprint=fingerprint)

    def send(self, kind: str, docs: list[dict[str, Any]]) -> None:
        for d in docs:
            if kind == "alert":
                msg = (format_alert_cef(d, self.hostname, self.cef, self.sensor_name)
                       if self.fmt == "cef"
                       else format_alert_rfc5424(d, self.hostname, self.sensor_name))
            else:
                msg = (format_cef(d, self.hostname) if self.fmt == "cef"
                       else format_rfc5424(d, self.hostname))
            self.sender.send(msg)

    def close(self) -> None:
        self.sender.close()


class SentinelSink:
    """Two streams of one data collection rule: flows and alerts (docs/traffic.md)."""

    def __init__(self, *, endpoint: str, rule_id: str, flow_stream: str, alert_stream: str,
                 credential: Any, verify: str | bool = True) -> None:
        self.key = f"sentinel:{endpoint}/{rule_id}"
        self.endpoint, self.rule_id = endpoint, rule_id
        self.streams = {"flow": flow_stream, "alert": alert_stream}
        self.credential, self.verify = credential, verify

    def send(self, kind: str, docs: list[dict[str, Any]]) -> None:
        if docs:
            upload_sentinel(docs, endpoint=self.endpoint, rule_id=self.rule_id,
                            stream=self.streams[kind], credential=self.credential,
                            verify=self.verify)

    def close(self) -> None:
        return None
