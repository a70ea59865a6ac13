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
              help="Use the playbook's sensor (devices and connections: a coarse view).")
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
@click.option("--jsonl", "jsonl", metavar="FILE", default=None,
              help="Write one JSON object per directed flow to FILE.")
@click.option("--syslog", "syslog", metavar="URL", default=None,
              help="Send one message per flow to udp://HOST:PORT, tcp://HOST:PORT or "
                   "tls://HOST:PORT.")
@click.option("--format", "fmt", type=click.Choice(["rfc5424", "cef"]), default="rfc5424",
              show_default=True, help="Syslog message format.")
@click.option("--ca", "cafile", metavar="FILE", default=None,
              help="CA certificate(s) that sign the tls:// collector's certificate "
                   "(default: the system's trust store).")
@click.option("--sentinel", is_flag=True,
              help="Upload to Microsoft Sentinel through the playbook's sentinel: data "
                   "collection rule (Logs Ingestion API, azure-identity sign-in).")
def export_cmd(pcaps: tuple[str, ...], since: str | None, partial: bool,
               playbook: str | None, jsonl: str | None, syslog: str | None, fmt: str,
               cafile: str | None, sentinel: bool) -> None:
    """Export flows: JSON lines, syslog or Microsoft Sentinel."""
    from labctl.core.errors import UsageError

    if [jsonl is not None, syslog is not None, sentinel].count(True) != 1:
        raise UsageError("give exactly one of --jsonl FILE, --syslog URL or --sentinel")
    if not pcaps:
        raise UsageError("give at least one capture: --pcap FILE")
    if sentinel:
        from labctl.app.traffic import export_sentinel

        n = export_sentinel(list(pcaps), _load_playbook(playbook),
                            verify=cafile or True, partial=partial, since=since)
        echo(f"{n} flows uploaded to Sentinel", err=True)
        return
    if jsonl is not None:
        from labctl.app.traffic import export_jsonl

        n = export_jsonl(list(pcaps), jsonl, partial=partial, since=since)
        echo(f"{n} flows written to {jsonl}", err=True)
        return
    from labctl.app.traffic import export_syslog

    assert syslog is not None
    n = export_syslog(list(pcaps), syslog, fmt=fmt, cafile=cafile, partial=partial,
                      since=since)
    echo(f"{n} flows sent to {syslog} ({fmt})", err=True)


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
