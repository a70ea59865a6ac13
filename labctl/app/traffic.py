"""Traffic use cases: build a report from captures (or the sensor's coarse view), keep the
baseline for new-peer and new-port flags, export flows as JSON lines.

No printing here: the CLI renders what comes back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.core.errors import UsageError

if TYPE_CHECKING:
    from labctl.core.context import LabContext
    from labctl.core.playbook import LoadedPlaybook
    from labctl.traffic.flows import FlowTable

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
    """The coarse report from the playbook's sensor (devices and connections), as a real
    Defender for IoT sensor offers it; ``sources.missing`` says what it lacks."""
    from labctl.sensor.oui import default_oui
    from labctl.traffic.ports import default_ports
    from labctl.traffic.report import Names, build_sensor_report

    if driver is None:
        from labctl.app.sensor import open_sensor

        driver = open_sensor(ctx)
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
