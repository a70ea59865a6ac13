"""Traffic use cases: build a report from captures (or the sensor's coarse view), keep the
baseline for new-peer and new-port flags, export flows as JSON lines.

No printing here: the CLI renders what comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.core.errors import UsageError

if TYPE_CHECKING:
    from labctl.core.context import LabContext
    from labctl.core.playbook import LoadedPlaybook
    from labctl.traffic.flows import FlowRecord, FlowTable

BASELINE_FILE = "traffic-baseline.json"
ADHOC_LAB = "adhoc"

_DURATION = re.compile(r"^(\d+)([smhd]?)$")


def parse_duration(text: str, option: str = "--since") -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``3d`` -> seconds; anything else is exit 2."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"{option} {text!r}: a duration such as 90s, 10m, 2h or 3d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _names(loaded: LoadedPlaybook | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if loaded is None:
        return out
    pb = loaded.model
    for d in pb.devices:
        out[str(d.ip)] = d.name
    if pb.twin is not None:
        for td in pb.twin.devices:
            out[str(td.ip.ip)] = td.name
    return out


def _baseline_path(lab: str) -> Path:
    from labctl.core.state import lab_state_dir

    return lab_state_dir(lab) / BASELINE_FILE


def _read_baseline(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a damaged baseline is replaced by this report's
    devices = doc.get("devices") if isinstance(doc, dict) else None
    return devices if isinstance(devices, dict) else None


def report_from_table(table: FlowTable, loaded: LoadedPlaybook | None, *,
                      device: str | None = None, lab: str | None = None,
                      keep_baseline: bool = True) -> dict[str, Any]:
    from labctl.sensor.oui import default_oui
    from labctl.traffic.ports import default_ports
    from labctl.traffic.report import Names, build_report, iso

    macs = table.mac_of()
    oui = default_oui()
    vendors = {m: v for m in set(macs.values()) if (v := oui.lookup(m))}
    names = Names(devices=_names(loaded), dns=table.dns_names(), macs=macs, vendors=vendors)
    lab_name = lab or (loaded.model.lab if loaded is not None else ADHOC_LAB)
    path = _baseline_path(lab_name)
    previous = _read_baseline(path)
    st = table.stats
    sources = {
        "kind": "pcap", "files": st.files, "packets": st.packets,
        "ip_packets": st.ip_packets, "non_ip": st.non_ip, "malformed": st.malformed,
        "first": iso(st.first), "last": iso(st.last),
        "partial": bool(st.partial),
        "partial_reasons": [{"file": f, "offset": o, "what": w} for f, o, w in st.partial],
        "lab": lab_name, "previous_report": previous is not None,
    }
    doc = build_report(table.records(), names, default_ports(), previous=previous,
                       device=device, sources=sources)
    baseline = doc.pop("baseline")
    if keep_baseline and device is None and not st.partial:
        from labctl.core.state import write_private_json

        write_private_json({"version": 1, "devices": baseline}, path)
    return doc


def traffic_report(pcaps: Sequence[str], loaded: LoadedPlaybook | None, *,
                   since: str | None = None, device: str | None = None,
                   partial: bool = False, lab: str | None = None) -> dict[str, Any]:
    """The report of capture files (see docs/traffic.md)."""
    from labctl.traffic.flows import read_captures

    if not pcaps:
        raise UsageError("give at least one capture: --pcap FILE")
    since_s = parse_duration(since) if since else None
    table = read_captures(pcaps, partial=partial, since_seconds=since_s)
    return report_from_table(table, loaded, device=device, lab=lab)


def export_jsonl(pcaps: Sequence[str], out: str, *, partial: bool = False,
                 since: str | None = None) -> int:
    """Write one JSON object per directed flow to ``out``; returns the number written."""
    from labctl.traffic.export import flow_documents
    from labctl.traffic.flows import read_captures

    since_s = parse_duration(since) if since else None
    table = read_captures(pcaps, partial=partial, since_seconds=since_s)
    n = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for doc in flow_documents(table):
            f.write(json.dumps(doc, sort_keys=True) + "\n")
            n += 1
    return n


def export_syslog(pcaps: Sequence[str], url: str, *, fmt: str = "rfc5424",
                  cafile: str | None = None, partial: bool = False,
                  since: str | None = None, hostname: str | None = None) -> int:
    """Send one syslog message per directed flow; returns the number sent.

    The URL is checked before any capture is read or anything is contacted.
    """
    import socket

    from labctl.traffic.export import (
        SyslogSender,
        flow_documents,
        format_cef,
        format_rfc5424,
        parse_syslog_url,
    )
    from labctl.traffic.flows import read_captures

    parse_syslog_url(url)
    if fmt not in ("cef", "rfc5424"):
        raise UsageError(f"--format {fmt!r}: cef or rfc5424")
    since_s = parse_duration(since) if since else None
    table = read_captures(pcaps, partial=partial, since_seconds=since_s)
    host = hostname or socket.gethostname() or "-"
    render = format_cef if fmt == "cef" else format_rfc5424
    sender = SyslogSender(url, cafile=cafile)
    n = 0
    try:
        for doc in flow_documents(table):
            sender.send(render(doc, host))
            n += 1
    finally:
        sender.close()
    return n


def export_sentinel(pcaps: Sequence[str], loaded: LoadedPlaybook | None, *,
                    credential: Any = None, verify: str | bool = True,
                    partial: bool = False, since: str | None = None) -> int:
    """Upload one record per directed flow to the playbook's ``sentinel:`` data collection
    rule; returns the number uploaded. The playbook is checked before anything is read."""
    from labctl.traffic.export import flow_documents, upload_sentinel
    from labctl.traffic.flows import read_captures

    sec = loaded.model.sentinel if loaded is not None else None
    if sec is None or not sec.data_collection_endpoint or not sec.dcr_immutable_id:
        where = loaded.path if loaded is not None else "the playbook"
        raise UsageError(f"{where}: sentinel.data_collection_endpoint and "
                         "sentinel.dcr_immutable_id are needed for --sentinel",
                         hint="see docs/traffic.md for the DCR and its stream")
    since_s = parse_duration(since) if since else None
    table = read_captures(pcaps, partial=partial, since_seconds=since_s)
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    docs = list(flow_documents(table))
    upload_sentinel(docs, endpoint=sec.data_collection_endpoint,
                    rule_id=sec.dcr_immutable_id, stream=sec.stream_name,
                    credential=credential, verify=verify)
    return len(docs)


#: the longest live capture one command runs
MAX_LIVE_SECONDS = 24 * 3600


def traffic_live(interface: str, duration: str, loaded: LoadedPlaybook | None, *,
                 device: str | None = None, lab: str | None = None,
                 clock: Callable[[], float] | None = None) -> dict[str, Any]:
    """Capture on ``interface`` for ``duration`` (bounded), then report."""
    import time

    from labctl.sensor.capture import open_capture
    from labctl.traffic.flows import FlowTable

    seconds = parse_duration(duration, "--duration")
    if seconds > MAX_LIVE_SECONDS:
        raise UsageError(f"--duration {duration}: at most 24h")
    now = clock or time.monotonic
    table = FlowTable()
    table.stats.files.append(f"interface:{interface}")
    cap = open_capture(interface, ring_mb=0)
    try:
        deadline = now() + seconds
        while now() < deadline:
            table.add_frames(cap.recv_batch())
        stats = cap.stats()
    finally:
        cap.close()
    doc = report_from_table(table, loaded, device=device, lab=lab)
    doc["sources"].update({"kind": "interface", "interface": interface,
                           "duration_seconds": seconds, "capture": stats})
    return doc


def traffic_sensor(ctx: LabContext, *, device: str | None = None,
                   driver: Any = None) -> dict[str, Any]:
    """The report from the playbook's sensor. A sensor that keeps flows (a FlowSource: the
    embedded sensor) gives the full report from its flow records (``sources.kind``
    ``sensor-flows``); one without a flow API (a real Defender for IoT sensor raises
    UnsupportedError) gives the coarse view of its devices and connections, and
    ``sources.missing`` says what that view lacks."""
    from labctl.core.errors import UnsupportedError

    with sensor_driver(ctx, driver) as drv:
        try:
            flows = sensor_flows(drv)
        except UnsupportedError as e:
            doc = _coarse_sensor_report(ctx, drv, device=device)
            doc["sources"]["flows_unsupported"] = e.message
            return doc
        return _sensor_flow_report(ctx, drv, flows, device=device)


def _coarse_sensor_report(ctx: LabContext, driver: Any, *,
                          device: str | None) -> dict[str, Any]:
    from labctl.sensor.oui import default_oui
    from labctl.traffic.ports import default_ports
    from labctl.traffic.report import Names, build_sensor_report

    devices = driver.devices()
    connections = driver.connections()
    oui = default_oui()
    macs = {d.ip_addresses[0]: d.mac_addresses[0].lower() for d in devices
            if d.ip_addresses and d.mac_addresses}
    vendors = {m: v for m in set(macs.values()) if (v := oui.lookup(m))}
    names = Names(devices=_names(ctx.loaded), macs=macs, vendors=vendors)
    sources = {"kind": "sensor", "sensor": driver.name, "devices": len(devices),
               "connections": len(connections), "partial": False, "partial_reasons": [],
               "lab": ctx.playbook.lab, "files": [], "packets": None}
    return build_sensor_report(devices, connections, names, default_ports(),
                               sources=sources, device=device)


def traffic_host_capture(ctx: LabContext, switch: str, duration: str, *,
                         device: str | None = None, runner: Any = None,
                         sleep: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Capture on the Hyper-V host's ``switch`` with pktmon (bounded), fetch the pcapng,
    then report it. ``runner`` replaces the playbook's PowerShell transport (tests)."""
    import tempfile

    from labctl.traffic.flows import read_captures
    from labctl.traffic.hostcapture import host_capture

    seconds = parse_duration(duration, "--duration")
    if seconds > MAX_LIVE_SECONDS:
        raise UsageError(f"--duration {duration}: at most 24h")
    pb = ctx.playbook
    if runner is None:
        if pb.hyperv is None:
            raise UsageError(f"{ctx.loaded.path}: --host-capture needs the hyperv: section")
        from labctl.transport.runners import make_runner

        runner = make_runner(pb.hyperv, ctx.prompt_fn)
    with tempfile.TemporaryDirectory(prefix="labctl-hostcap-") as tmp:
        dest = Path(tmp) / "host.pcapng"
        got = host_capture(runner, switch, seconds, dest, sleep=sleep or ctx.sleep)
        table = read_captures([dest])
        table.stats.files = [f"{pb.hyperv.host if pb.hyperv else 'host'}:{got['remote']}"]
        doc = report_from_table(table, ctx.loaded, device=device)
    doc["sources"].update({"kind": "host-capture", "switch": switch,
                           "duration_seconds": seconds, "sha256": got["sha256"]})
    return doc


# ---- the sensor as a source: flows (FlowSource) and alerts (AlertSource) -------------

CURSOR_FILE = "traffic-export-cursor.json"
DEFAULT_ALERT_STREAM = "Custom-LabctlAlerts_CL"
#: the most flows asked for in one FlowSource.flows call (then again from the last seq)
FLOW_PAGE = 10_000


@contextlib.contextmanager
def sensor_driver(ctx: LabContext, driver: Any = None) -> Iterator[Any]:
    """The playbook's sensor through its access path (``labctl.app.sensor.sensor_session``:
    direct, NetNat or an SSH tunnel, closed afterwards); ``driver`` (tests) is used as
    given."""
    if driver is not None:
        yield driver
        return
    from labctl.app.sensor import sensor_session

    with sensor_session(ctx) as d:
        yield d


def sensor_flows(driver: Any, after_seq: int = 0, page: int = FLOW_PAGE) -> list[Any]:
    """Every flow record of a FlowSource after ``after_seq``, paged, in seq order. Raises
    UnsupportedError for a driver without a flow API."""
    from labctl.core.errors import UnsupportedError

    fetch = getattr(driver, "flows", None)
    if fetch is None:
        raise UnsupportedError(f"{getattr(driver, 'name', 'the sensor')} has no flow API")
    out: list[Any] = []
    while True:
        got = fetch(after_seq=after_seq, limit=page)
        out.extend(got)
        if len(got) < page or not got:
            return out
        after_seq = max(f.seq for f in got)


def _latest(flows: list[Any]) -> list[Any]:
    """The newest record of each flow id (counters are cumulative)."""
    by_id: dict[int, Any] = {}
    for f in flows:
        old = by_id.get(f.id)
        if old is None or f.seq > old.seq:
            by_id[f.id] = f
    return sorted(by_id.values(), key=lambda f: f.seq)


def flow_records(flows: list[Any]) -> list[FlowRecord]:
    """Sensor flows (:class:`labctl.sensor.base.Flow`, bidirectional) -> the report's
    directed records: ``src -> dst`` carries the opener's counters and the per-minute
    activity (both directions, as the sensor keeps it), ``dst -> src`` the reply's.

    Who is the client: for TCP the sensor's opener (the SYN sender); for UDP and other port
    protocols the same rule as for captures (the higher port), since the opener of a UDP
    flow is only its first packet's sender (a DNS answer whose query was missed).
    A flow whose per-minute counts have aged out of the sensor's window (``minutes`` empty)
    counts its packets in its first-seen minute, so hour-of-day activity and the daily
    detector still see it (docs/traffic.md)."""
    from labctl.traffic.flows import FlowRecord

    out: list[FlowRecord] = []
    for f in _latest(flows):
        first, last = f.first / 1000, f.last / 1000
        minutes = {int(m): int(c) for m, c in f.minutes.items()}
        total = f.packets_out + f.packets_in
        if not minutes and total:
            minutes = {f.first // 60_000: total}
        opener = f.proto == 6 and f.sport >= 0
        out.append(FlowRecord(vlan=f.vlan, src=f.src, dst=f.dst, proto=f.proto,
                              sport=f.sport, dport=f.dport, packets=f.packets_out,
                              bytes=f.bytes_out, first=first, last=last, minutes=minutes,
                              syn=opener))
        if f.packets_in:
            out.append(FlowRecord(vlan=f.vlan, src=f.dst, dst=f.src, proto=f.proto,
                                  sport=f.dport, dport=f.sport, packets=f.packets_in,
                                  bytes=f.bytes_in, first=first, last=last, minutes={},
                                  syn=False))
    return out


def _inventory(driver: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The sensor's inventory: IP -> MAC and IP -> name."""
    macs: dict[str, str] = {}
    names: dict[str, str] = {}
    for d in driver.devices():
        for ip in d.ip_addresses:
            if d.mac_addresses:
                macs.setdefault(ip, d.mac_addresses[0].lower())
            if d.name and d.name != ip:
                names.setdefault(ip, d.name)
    return macs, names


def _sensor_flow_report(ctx: LabContext, driver: Any, flows: list[Any], *,
                        device: str | None) -> dict[str, Any]:
    from labctl.sensor.oui import default_oui
    from labctl.traffic.ports import default_ports
    from labctl.traffic.report import Names, build_report, iso

    records = flow_records(flows)
    macs, inv_names = _inventory(driver)
    oui = default_oui()
    vendors = {m: v for m in set(macs.values()) if (v := oui.lookup(m))}
    names = Names(devices={**inv_names, **_names(ctx.loaded)}, macs=macs, vendors=vendors)
    lab_name = ctx.playbook.lab
    path = _baseline_path(lab_name)
    previous = _read_baseline(path)
    latest = _latest(flows)
    first = min((f.first for f in latest), default=None)
    last = max((f.last for f in latest), default=None)
    sources = {"kind": "sensor-flows", "sensor": driver.name, "flows": len(latest),
               "packets": sum(f.packets_out + f.packets_in for f in latest),
               "files": [], "partial": False, "partial_reasons": [],
               "first": iso(first / 1000) if first is not None else None,
               "last": iso(last / 1000) if last is not None else None,
               "lab": lab_name, "previous_report": previous is not None,
               "missing": []}
    doc = build_report(records, names, default_ports(), previous=previous, device=device,
                       sources=sources)
    baseline = doc.pop("baseline")
    if device is None:
        from labctl.core.state import write_private_json

        write_private_json({"version": 1, "devices": baseline}, path)
    return doc


# ---- export: flows and alerts, once or --follow ---------------------------------------

@dataclass(frozen=True)
class SinkSpec:
    """Where ``labctl traffic export`` sends records: exactly one of ``jsonl``, ``syslog``
    or ``sentinel``."""

    jsonl: str | None = None
    syslog: str | None = None
    fmt: str = "rfc5424"
    cafile: str | None = None
    fingerprint: str | None = None
    sentinel: bool = False
    alert_stream: str | None = None
    cef: Any = None  # labctl.traffic.export.CefOptions
    hostname: str | None = None


def sensor_name(loaded: LoadedPlaybook | None) -> str | None:
    """The sensor's name as D4IoT's forwarding writes it (its appliance name): the Azure
    sensor name, else the sensor VM's name, else None."""
    s = loaded.model.sensor if loaded is not None else None
    if s is None:
        return None
    if s.azure is not None:
        return str(s.azure.sensor_name)
    return str(s.vm) if s.vm else None


def open_sink(spec: SinkSpec, loaded: LoadedPlaybook | None, *, append: bool = False,
              credential: Any = None, verify: str | bool = True) -> Any:
    """The sink of ``spec`` (checked before anything is read or contacted)."""
    import socket

    from labctl.traffic import export as ex

    if [spec.jsonl is not None, spec.syslog is not None, spec.sentinel].count(True) != 1:
        raise UsageError("give exactly one of --jsonl FILE, --syslog URL or --sentinel")
    if spec.jsonl is not None:
        return ex.JsonlSink(spec.jsonl, append=append)
    if spec.syslog is not None:
        ex.parse_syslog_url(spec.syslog)
        if spec.fmt not in ("cef", "rfc5424"):
            raise UsageError(f"--format {spec.fmt!r}: cef or rfc5424")
        host = spec.hostname or socket.gethostname() or "-"
        return ex.SyslogSink(spec.syslog, spec.fmt, host, cafile=spec.cafile,
                             fingerprint=spec.fingerprint, cef=spec.cef,
                             sensor_name=sensor_name(loaded))
    sec = loaded.model.sentinel if loaded is not None else None
    if sec is None or not sec.data_collection_endpoint or not sec.dcr_immutable_id:
        where = loaded.path if loaded is not None else "the playbook"
        raise UsageError(f"{where}: sentinel.data_collection_endpoint and "
                         "sentinel.dcr_immutable_id are needed for --sentinel",
                         hint="see docs/traffic.md for the DCR and its streams")
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    alert_stream = spec.alert_stream or sec.alert_stream_name
    return ex.SentinelSink(endpoint=sec.data_collection_endpoint,
                           rule_id=sec.dcr_immutable_id, flow_stream=sec.stream_name,
                           alert_stream=alert_stream, credential=credential,
                           verify=verify)


class Cursor:
    """Where ``--follow`` stopped, per sink: the highest alert id and the highest flow seq
    sent (``<lab state>/traffic-export-cursor.json``, written atomically, mode 0600, after
    each successful send)."""

    def __init__(self, lab: str, key: str) -> None:
        from labctl.core.state import lab_state_dir

        self.path = lab_state_dir(lab) / CURSOR_FILE
        self.key = key
        self.alert_id = 0
        self.flow_seq = 0
        doc = self._read()
        mine = doc.get(key) if isinstance(doc, dict) else None
        if isinstance(mine, dict):
            self.alert_id = int(mine.get("alert_id") or 0)
            self.flow_seq = int(mine.get("flow_seq") or 0)

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise UsageError(f"{self.path}: the export cursor is damaged ({e})",
                             hint="fix it, or remove it to export everything again") from None
        sinks = doc.get("sinks") if isinstance(doc, dict) else None
        return sinks if isinstance(sinks, dict) else {}

    def save(self) -> None:
        from labctl.core.state import write_private_json

        sinks = self._read()
        sinks[self.key] = {"alert_id": self.alert_id, "flow_seq": self.flow_seq}
        write_private_json({"version": 1, "sinks": sinks}, self.path)


def export_traffic(spec: SinkSpec, loaded: LoadedPlaybook | None, *,
                   ctx: LabContext | None = None, pcaps: Sequence[str] = (),
                   partial: bool = False, since: str | None = None,
                   sensor: bool = False, alerts: bool = False, follow: bool = False,
                   poll_seconds: float = 10.0, max_polls: int | None = None,
                   until_idle: bool = False,
                   progress: Callable[[dict[str, Any]], None] | None = None,
                   stop: Callable[[], bool] | None = None, driver: Any = None,
                   credential: Any = None, verify: str | bool = True,
                   sleep: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Export to one sink: the flows of ``pcaps``, and with ``sensor`` the sensor's flows
    (FlowSource) and alerts (AlertSource); ``alerts`` alone adds the sensor's alerts to a
    capture export. ``follow`` polls the sensor every ``poll_seconds`` until ``stop()``
    says so (or ``max_polls`` polls, or with ``until_idle`` the first poll that found
    nothing), sending only what is past the cursor and saving the cursor after each send.
    Returns counts: alerts, flows, polls, the cursor, and ``flows_unsupported`` when the
    sensor has no flow API (its alerts are still exported)."""
    import time

    from labctl.core.errors import UnsupportedError
    from labctl.traffic.export import alert_document, flow_documents, sensor_flow_documents

    if follow and not sensor:
        raise UsageError("--follow reads a running sensor: give --sensor")
    if (sensor or alerts) and ctx is None:
        raise UsageError("--sensor and --alerts need a playbook with a sensor: section "
                         "(-f FILE)")
    if sensor and pcaps:
        raise UsageError("give one source: --pcap FILE... or --sensor")
    if poll_seconds <= 0:
        raise UsageError("--poll: a positive number of seconds")
    table = None
    if pcaps:
        from labctl.traffic.flows import read_captures

        since_s = parse_duration(since) if since else None
        table = read_captures(pcaps, partial=partial, since_seconds=since_s)
    elif not sensor:
        raise UsageError("give a source: --pcap FILE... or --sensor")
    stopped = stop or (lambda: False)
    nap = sleep or time.sleep
    say = progress or (lambda ev: None)
    sink = open_sink(spec, loaded, append=follow, credential=credential, verify=verify)
    out: dict[str, Any] = {"alerts": 0, "flows": 0, "polls": 0, "sink": sink.key,
                           "flows_unsupported": None, "stopped": False}
    try:
        if table is not None:
            docs = list(flow_documents(table))
            sink.send("flow", docs)
            out["flows"] += len(docs)
        if not (sensor or alerts):
            return out
        assert ctx is not None
        cursor = Cursor(ctx.playbook.lab, sink.key) if follow else None
        after_alert = cursor.alert_id if cursor else 0
        after_seq = cursor.flow_seq if cursor else 0
        want_flows = sensor
        with sensor_driver(ctx, driver) as drv:
            while True:
                out["polls"] += 1
                inv: tuple[dict[str, str], dict[str, str]] | None = None
                new = 0
                got = sorted((a for a in drv.alerts() if a.id > after_alert),
                             key=lambda a: a.id)
                if got:
                    inv = _inventory(drv)
                    docs = [alert_document(a, sensor=drv.name, macs=inv[0],
                                           names={**inv[1], **_names(ctx.loaded)})
                            for a in got]
                    sink.send("alert", docs)
                    after_alert = got[-1].id
                    out["alerts"] += len(got)
                    new += len(got)
                    if cursor:
                        cursor.alert_id = after_alert
                        cursor.save()
                if want_flows:
                    try:
                        flows = sensor_flows(drv, after_seq)
                    except UnsupportedError as e:
                        want_flows = False
                        out["flows_unsupported"] = e.message
                        say({"event": "flows-unsupported", "detail": e.message})
                        flows = []
                    if flows:
                        if inv is None:
                            inv = _inventory(drv)
                        names = {**inv[1], **_names(ctx.loaded)}
                        docs = list(sensor_flow_documents(flows))
                        for d in docs:
                            d["SrcMac"] = inv[0].get(d["SrcIp"])
                            d["SrcName"] = names.get(d["SrcIp"])
                            d["DstName"] = names.get(d["DstIp"])
                        sink.send("flow", docs)
                        after_seq = max(f.seq for f in flows)
                        out["flows"] += len(flows)
                        new += len(flows)
                        if cursor:
                            cursor.flow_seq = after_seq
                            cursor.save()
                say({"event": "poll", "poll": out["polls"], "new": new,
                     "alerts": out["alerts"], "flows": out["flows"],
                     "alert_id": after_alert, "flow_seq": after_seq})
                if not follow:
                    break
                if (max_polls is not None and out["polls"] >= max_polls) or \
                        (until_idle and new == 0):
                    break
                if _wait(poll_seconds, stopped, nap):
                    out["stopped"] = True
                    break
        out["cursor"] = {"alert_id": after_alert, "flow_seq": after_seq}
    finally:
        sink.close()
    return out


def _wait(seconds: float, stop: Callable[[], bool], sleep: Callable[[float], None]) -> bool:
    """Sleep ``seconds`` in short steps; True as soon as ``stop()`` says so."""
    import time

    end = time.monotonic() + seconds
    while True:
        if stop():
            return True
        left = end - time.monotonic()
        if left <= 0:
            return stop()
        sleep(min(0.2, left))
