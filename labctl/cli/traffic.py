"""``labctl traffic``: who talks to whom, when, on which ports (report), and export.

rich and the traffic modules are imported only when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from labctl.cli._common import CliState, echo, emit_json, json_option, playbook_option

if TYPE_CHECKING:
    from labctl.core.playbook import LoadedPlaybook


def _load_playbook(path: str | None) -> LoadedPlaybook | None:
    import os
    from pathlib import Path

    from labctl.core.playbook import load_playbook

    if path or os.environ.get("LABCTL_PLAYBOOK") or Path("labctl.yaml").exists():
        return load_playbook(path)
    return None


@click.group(no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
def traffic() -> None:
    """Who talks to whom, when and on which ports; export flows.

    \b
    labctl traffic report --pcap lab.pcap
    labctl traffic report --pcap a.pcap.gz b.pcapng --since 2h --device feeder1 --json
    labctl traffic export --pcap lab.pcap --jsonl flows.jsonl
    """


def _sources(f: Any) -> Any:
    f = click.option("--pcap", "pcaps", multiple=True, metavar="FILE",
                     help="A pcap or pcapng file, plain or gzip (repeatable).")(f)
    f = click.option("--since", metavar="DURATION", default=None,
                     help="Only packets this recent (90s, 10m, 2h, 3d), counted back from "
                          "the newest packet of the captures.")(f)
    f = click.option("--partial", is_flag=True,
                     help="Report what a truncated or corrupt capture held before the "
                          "damage, flagged as partial, instead of failing.")(f)
    return playbook_option(f)


@traffic.command("report")
@_sources
@click.option("--device", metavar="ADDR|NAME", default=None,
              help="Only this device (IP, MAC or name).")
@click.option("--lab", default=None, help="Lab name for the baseline (default: the "
              "playbook's lab, else 'adhoc').")
@click.option("--interface", metavar="IFACE", default=None,
              help="Capture live on IFACE (Linux, root) instead of reading captures.")
@click.option("--duration", metavar="D", default=None,
              help="How long to capture on --interface (10s, 10m, 2h; at most 24h).")
@click.option("--host-capture", is_flag=True,
              help="Capture on the Hyper-V host with pktmon (Windows Server 2022+).")
@click.option("--switch", metavar="NAME", default=None,
              help="The virtual switch for --host-capture.")
@click.option("--sensor", is_flag=True,
              help="Use the playbook's sensor: its flow records (embedded sensor), else its "
                   "devices and connections (a coarse view).")
@click.option("--html", "html", metavar="FILE", default=None,
              help="Also write the report as one self-contained HTML file.")
@json_option
def report_cmd(pcaps: tuple[str, ...], since: str | None, partial: bool,
               playbook: str | None, device: str | None, lab: str | None,
               interface: str | None, duration: str | None, host_capture: bool,
               switch: str | None, sensor: bool,
               html: str | None, as_json: bool) -> None:
    """Per device, per conversation and fleet-wide view of the traffic, with flags."""
    from labctl.core.errors import UsageError

    if sensor:
        if pcaps or interface:
            raise UsageError("give one source: --pcap, --interface or --sensor")
        from labctl.app.traffic import traffic_sensor
        from labctl.core.context import LabContext

        loaded = _load_playbook(playbook)
        if loaded is None:
            raise UsageError("--sensor needs a playbook with a sensor: section (-f FILE)")
        state = click.get_current_context().find_object(CliState)
        overrides = state.overrides if state is not None else {}
        doc = traffic_sensor(LabContext(loaded=loaded, **overrides), device=device)
    elif host_capture:
        if pcaps or interface or not switch or duration is None:
            raise UsageError("--host-capture needs --switch NAME and --duration D, and no "
                             "other source")
        from labctl.app.traffic import traffic_host_capture
        from labctl.core.context import LabContext

        loaded = _load_playbook(playbook)
        if loaded is None:
            raise UsageError("--host-capture needs a playbook with a hyperv: section")
        state = click.get_current_context().find_object(CliState)
        overrides = state.overrides if state is not None else {}
        doc = traffic_host_capture(LabContext(loaded=loaded, **overrides), switch, duration,
                                   device=device)
    elif interface is not None:
        if pcaps:
            raise UsageError("give --pcap FILE or --interface IFACE, not both")
        if duration is None:
            raise UsageError("--interface needs --duration (a live capture is bounded)")
        from labctl.app.traffic import traffic_live

        doc = traffic_live(interface, duration, _load_playbook(playbook), device=device,
                           lab=lab)
    else:
        from labctl.app.traffic import traffic_report

        doc = traffic_report(list(pcaps), _load_playbook(playbook), since=since,
                             device=device, partial=partial, lab=lab)
    if html:
        from labctl.traffic.html import render_html

        try:
            with open(html, "w", encoding="utf-8") as f:
                f.write(render_html(doc))
        except OSError as e:
            from labctl.core.errors import UsageError

            raise UsageError(f"--html {html}: cannot write: {e.strerror}") from None
        echo(f"HTML report written to {html}", err=True)
    if as_json:
        emit_json(doc)
        return
    _render(doc)


@traffic.command("export")
@_sources
@click.option("--sensor", is_flag=True,
              help="Export the playbook's sensor: its flows (embedded sensor) and alerts.")
@click.option("--alerts", is_flag=True,
              help="With --pcap: also export the playbook's sensor's alerts.")
@click.option("--follow", is_flag=True,
              help="With --sensor: keep exporting new alerts and flows until interrupted "
                   "(a cursor in the lab's state directory: a restart neither loses nor "
                   "repeats records).")
@click.option("--poll", "poll", type=float, default=10.0, show_default=True,
              metavar="SECONDS", help="How often --follow asks the sensor.")
@click.option("--max-polls", type=click.IntRange(min=1), default=None, metavar="N",
              help="--follow stops after N polls.")
@click.option("--until-idle", is_flag=True,
              help="--follow stops at the first poll that finds nothing new.")
@click.option("--jsonl", "jsonl", metavar="FILE", default=None,
              help="Write one JSON object per record to FILE (--follow appends).")
@click.option("--syslog", "syslog", metavar="URL", default=None,
              help="Send one message per record to udp://HOST:PORT, tcp://HOST:PORT or "
                   "tls://HOST:PORT.")
@click.option("--format", "fmt", type=click.Choice(["rfc5424", "cef"]), default="rfc5424",
              show_default=True, help="Syslog message format.")
@click.option("--ca", "cafile", metavar="FILE", default=None,
              help="CA certificate(s) that sign the tls:// collector's (or the Sentinel "
                   "endpoint's) certificate. Without it a tls:// collector is verified "
                   "against the system's trust store, else pinned on first use.")
@click.option("--fingerprint", metavar="SHA256", default=None,
              help="The tls:// collector's certificate must have this SHA-256.")
@click.option("--sentinel", is_flag=True,
              help="Upload to Microsoft Sentinel through the playbook's sentinel: data "
                   "collection rule (Logs Ingestion API, azure-identity sign-in).")
@click.option("--alert-stream", metavar="NAME", default=None,
              help="The DCR stream for alerts (default Custom-LabctlAlerts_CL).")
@click.option("--cef-vendor", default="Microsoft Defender for IoT/CyberX", show_default=True,
              help="CEF device vendor of alert lines.")
@click.option("--cef-product", default=None, metavar="NAME",
              help="CEF device product of alert lines (default: the sensor's name, as "
                   "D4IoT writes it).")
@click.option("--cef-version", default=None, metavar="VERSION",
              help="CEF device version of alert lines (default: labctl's version).")
@click.option("--cef-severity", default=None, metavar="LEVEL=N,...",
              help="CEF severity of each D4IoT level (default Warning=1,Minor=4,Major=8,"
                   "Critical=10, as Microsoft documents).")
@click.option("--cef-address-keys", type=click.Choice(["src", "src_ip"]), default="src_ip",
              show_default=True, help="Alert address keys: src/dst or src_ip/dst_ip.")
def export_cmd(pcaps: tuple[str, ...], since: str | None, partial: bool,
               playbook: str | None, sensor: bool, alerts: bool, follow: bool,
               poll: float, max_polls: int | None, until_idle: bool, jsonl: str | None,
               syslog: str | None, fmt: str, cafile: str | None, fingerprint: str | None,
               sentinel: bool, alert_stream: str | None, cef_vendor: str,
               cef_product: str | None, cef_version: str | None, cef_severity: str | None,
               cef_address_keys: str) -> None:
    """Export flows and sensor alerts: JSON lines, syslog or Microsoft Sentinel.

    \b
    labctl traffic export --pcap lab.pcap --syslog tls://siem:6514 --format cef
    labctl traffic export --sensor -f lab.yaml --follow --jsonl records.jsonl

    --follow ends on Ctrl-C or SIGTERM after the current poll, with the cursor saved and
    exit code 130.
    """
    import signal

    from labctl.app.traffic import SinkSpec, export_traffic
    from labctl.core.errors import UsageError
    from labctl.traffic.export import CEF_SEVERITY, CefOptions

    if [jsonl is not None, syslog is not None, sentinel].count(True) != 1:
        raise UsageError("give exactly one of --jsonl FILE, --syslog URL or --sentinel")
    if not pcaps and not sensor:
        raise UsageError("give a source: --pcap FILE... or --sensor")
    if follow and not sensor:
        raise UsageError("--follow reads a running sensor: give --sensor")
    if alerts and not pcaps:
        raise UsageError("--alerts adds the sensor's alerts to a --pcap export (--sensor "
                         "exports them anyway)")
    if fingerprint:
        from labctl.transport.http import normalize_fingerprint

        fingerprint = normalize_fingerprint(fingerprint)
    sev = dict(CEF_SEVERITY)
    if cef_severity:
        for part in cef_severity.split(","):
            level, eq, num = part.partition("=")
            if not eq or not num.strip().isdigit() or int(num) > 10:
                raise UsageError(f"--cef-severity {cef_severity!r}: LEVEL=N pairs, N from "
                                 "0 to 10, e.g. Warning=1,Minor=4,Major=8,Critical=10")
            sev[level.strip()] = int(num)
    cef = CefOptions(vendor=cef_vendor, product=cef_product, version=cef_version,
                     severity=sev, address_keys=cef_address_keys)
    spec = SinkSpec(jsonl=jsonl, syslog=syslog, fmt=fmt, cafile=cafile,
                    fingerprint=fingerprint, sentinel=sentinel, alert_stream=alert_stream,
                    cef=cef)
    loaded = _load_playbook(playbook)
    ctx = None
    if sensor or alerts:
        from labctl.core.context import LabContext

        if loaded is None:
            raise UsageError("--sensor and --alerts need a playbook with a sensor: section "
                             "(-f FILE)")
        state = click.get_current_context().find_object(CliState)
        overrides = state.overrides if state is not None else {}
        ctx = LabContext(loaded=loaded, **overrides)

    interrupted: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        del frame
        interrupted.append(signum)

    def progress(ev: dict[str, Any]) -> None:
        if ev["event"] == "flows-unsupported":
            echo(f"flows: {ev['detail']}; exporting alerts only", err=True)
        elif follow:
            echo(f"poll {ev['poll']}: {ev['new']} new; {ev['alerts']} alerts, "
                 f"{ev['flows']} flow records sent (cursor: alert {ev['alert_id']}, "
                 f"flow seq {ev['flow_seq']})", err=True)

    old: list[Any] = []
    if follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old.append((sig, signal.signal(sig, on_signal)))
    try:
        got = export_traffic(spec, loaded, ctx=ctx, pcaps=list(pcaps), partial=partial,
                             since=since, sensor=sensor, alerts=alerts, follow=follow,
                             poll_seconds=poll, max_polls=max_polls, until_idle=until_idle,
                             progress=progress, stop=lambda: bool(interrupted),
                             verify=cafile or True)
    finally:
        for sig, handler in old:
            signal.signal(sig, handler)
    where = jsonl or syslog or "Sentinel"
    fmt_note = f" ({fmt})" if syslog else ""
    echo(f"{got['flows']} flows and {got['alerts']} alerts exported to {where}{fmt_note}",
         err=True)
    if got["stopped"]:
        echo("stopped; the cursor is saved", err=True)
        raise click.exceptions.Exit(130)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return str(n)


def _render(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    src = doc["sources"]
    if src.get("kind") == "sensor-flows":
        head = (f"{src.get('flows')} flows from {src.get('sensor')}, {src.get('packets')} "
                f"packets, {src.get('first')} .. {src.get('last')}")
    elif src.get("kind") == "sensor":
        head = (f"{src.get('devices')} devices and {src.get('connections')} connections "
                f"from {src.get('sensor')}")
    else:
        head = (f"{len(src.get('files', []))} capture(s), {src.get('packets', 0)} packets, "
                f"{src.get('first')} .. {src.get('last')}")
    con.print(head)
    if src.get("missing"):
        con.print(f"[yellow]coarse view from {src.get('sensor')}[/]: the sensor's devices and "
                  f"connections give no {', '.join(src['missing'])}")
    if src.get("partial"):
        for r in src.get("partial_reasons", []):
            con.print(f"[bold yellow]PARTIAL[/]: {r['file']}: {r['what']} at byte "
                      f"{r['offset']}; the report covers what came before it")
    t = Table(title="Devices", show_lines=False)
    for col in ("device", "mac / vendor", "out", "in", "peers", "first .. last"):
        t.add_column(col)
    t.add_column("00h" + " " * 18 + "23h", no_wrap=True, min_width=24)
    t.add_column("flags")
    for d in doc["devices"]:
        name = f"{d['name']} " if d["name"] else ""
        flags = sorted({f["flag"] for f in d["flags"]})
        t.add_row(f"{name}{d['ip']}", f"{d['mac'] or '-'}\n{d['vendor'] or ''}",
                  f"{d['packets_out'] if d['packets_out'] is not None else '-'} pk\n"
                  f"{_size(d['bytes_out'])}",
                  f"{d['packets_in'] if d['packets_in'] is not None else '-'} pk\n"
                  f"{_size(d['bytes_in'])}",
                  str(len(d["peers"])), f"{d['first_seen']}\n{d['last_seen']}",
                  f"[cyan]{d['sparkline'] or ''}[/]", ", ".join(flags))
    con.print(t)
    for d in doc["devices"]:
        if not (d["periodicity"] or d["flags"]):
            continue
        con.print(f"[bold]{d['name'] or d['ip']}[/] ({d['ip']})")
        for p in d["periodicity"]:
            con.print(f"  schedule: {p['text']}")
        for f in d["flags"]:
            con.print(f"  [yellow]{f['flag']}[/]: {f['detail']}")
        outs = [p for p in d["peers"] if p["outbound"]]
        for p in outs[:10]:
            nm = f" ({p['name']})" if p["name"] else ""
            con.print(f"  -> {p['ip']}{nm} {p['scope']} {', '.join(p['ports'])} "
                      f"{p['packets_out']}/{p['packets_in']} pk")
        if src.get("missing"):
            for p in d["peers"]:
                con.print(f"  <-> {p['ip']} {p['scope']} ports {', '.join(p['ports'])}")
    fleet = doc["fleet"]
    t = Table(title="Top external destinations")
    for col in ("destination", "name", "ports", "devices", "packets", "bytes"):
        t.add_column(col)
    for e in fleet["top_external"]:
        t.add_row(e["ip"], e["name"] or "", ", ".join(e["ports"]), ", ".join(e["devices"]),
                  str(e["packets"]), _size(e["bytes"]))
    con.print(t)
    t = Table(title="Port usage (outbound)")
    for col in ("port", "service", "devices", "packets", "bytes"):
        t.add_column(col)
    for u in fleet["ports"][:20]:
        t.add_row(f"{(u['proto'] or '?').lower()}/{u['port']}", u["service"] or "?",
                  str(len(u["devices"])), str(u["packets"]), _size(u["bytes"]))
    con.print(t)
    t = Table(title=f"Conversations ({len(doc['conversations'])})")
    for col in ("a", "b", "a->b", "b->a", "first .. last"):
        t.add_column(col)
    for c in doc["conversations"][:20]:
        t.add_row(c["a"], c["b"], f"{c['packets_a_to_b'] or '-'} pk "
                  f"{_size(c['bytes_a_to_b'])}",
                  f"{c['packets_b_to_a'] or '-'} pk {_size(c['bytes_b_to_a'])}",
                  f"{c['first_seen']} .. {c['last_seen']}")
    con.print(t)
