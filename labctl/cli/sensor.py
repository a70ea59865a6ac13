"""``labctl sensor``: look at the lab's sensor (status, alerts, devices, connections,
events), its API token and activation, and the embedded passive sensor (serve, replay).

Click only: parse, call one function in :mod:`labctl.app.sensor` (or :mod:`labctl.sensor`
for the embedded sensor's own commands), render.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from labctl.cli._common import echo, emit_json, json_option, playbook_option
from labctl.cli.sensor_audit import audit


def _state_dir(state: str | None) -> Path:
    from labctl.core.state import state_home

    return Path(state) if state else state_home() / "sensor"


state_option = click.option(
    "--state", "state", metavar="DIR", default=None,
    help="Sensor state folder (SQLite database, TLS certificate). "
         "Default: $LABCTL_STATE_DIR/sensor.")
config_option = click.option(
    "--config", "config", metavar="FILE", default=None,
    help="Engines file (default: the shipped sensor/engines.yaml).")
learning_option = click.option(
    "--learning/--no-learning", "learning", default=None,
    help="Override learning mode (Policy Violation alerts are withheld while learning).")
scanner_option = click.option(
    "--scanner", "scanners", metavar="IP|MAC", multiple=True,
    help="Authorize a device as a network scanner (no scan alerts); repeatable.")


@click.group(help="The lab's sensor (status, alerts, devices, connections, events, token, "
                  "activate, azure) and the embedded passive sensor (serve, replay).")
def sensor() -> None:
    pass


@sensor.command(help="Capture on IFACE and serve the D4IoT-style HTTPS API until SIGTERM/SIGINT.")
@click.option("--interface", "-i", required=True, metavar="IFACE",
              help="Interface to capture on (promiscuous), e.g. the mirror port.")
@click.option("--listen", default="0.0.0.0:443", show_default=True, metavar="ADDR:PORT",
              help="Address and port of the HTTPS API.")
@config_option
@state_option
@learning_option
@scanner_option
@click.option("--ring-mb", default=128, show_default=True, type=click.IntRange(0, 4096),
              help="Size of the TPACKET_V3 capture ring that absorbs bursts "
                   "(0: plain recvmsg, no ring).")
def serve(interface: str, listen: str, config: str | None, state: str | None,
          learning: bool | None, scanners: tuple[str, ...], ring_mb: int) -> None:
    from labctl.sensor.service import SensorService

    svc = SensorService(interface=interface, listen=listen, state_dir=_state_dir(state),
                        config=config, learning_mode=learning,
                        authorized_scanners=list(scanners), ring_mb=ring_mb)
    svc.install_signal_handlers()

    def ready(s: SensorService) -> None:
        echo(f"sensor: capturing on {interface}; API at {s.url} "
             f"(sha256 {s.fingerprint}); learning mode "
             f"{'on' if s.sensor.learning else 'off'}; state in {s.state_dir}", err=True)

    svc.run(ready=ready)
    st = svc.capture.stats() if svc.capture else {}
    echo(f"sensor: stopped after {svc.sensor.packets} packets "
         f"({st.get('kernel_drops', 0)} kernel drops); state saved", err=True)


@sensor.command(help="Run the sensor's engines over a pcap/pcapng file as fast as possible.")
@click.option("--pcap", "pcap", required=True, metavar="FILE", help="pcap or pcapng file.")
@config_option
@learning_option
@scanner_option
@json_option
def replay(pcap: str, config: str | None, learning: bool | None, scanners: tuple[str, ...],
           as_json: bool) -> None:
    from labctl.sensor.replay import replay as run_replay

    doc = run_replay(pcap, config, learning_mode=learning, authorized_scanners=list(scanners))
    if as_json:
        emit_json(doc)
        return
    echo(f"Alerts ({len(doc['alerts'])}):")
    for a in doc["alerts"]:
        echo(f"  [{a['severity']}] {a['title']} ({a['engine']}) "
             f"{a['sourceDeviceAddress'] or '-'} -> {a['destinationDeviceAddress'] or '-'}")
    echo(f"Devices ({len(doc['devices'])}):")
    for d in doc["devices"]:
        echo(f"  {d['ipAddresses'][0]:<39} {(d['macAddresses'] or ['-'])[0]:<17} "
             f"{d['vendor'] or '-'}")
    pps = doc["packets_per_second"]
    echo(f"{doc['packets']} packets ({doc['malformed']} malformed) in {doc['seconds']:.3f}s"
         + (f" = {pps:,} packets/s" if pps else "") + f"; pcap loop {doc['loop']}")
    dmg = doc["damage"]
    if dmg:
        where = "of the decompressed stream " if dmg["compressed"] else ""
        echo(f"warning: {pcap}: {dmg['what']} at byte {dmg['offset']} {where}"
             f"(read up to there)", err=True)


@sensor.group(invoke_without_command=True,
              help="The sensor's API token. Without a subcommand: for the playbook's real "
                   "sensor, where to create one and which variable to set; for the twin's "
                   "embedded sensor, create one and print it once.")
@playbook_option
@json_option
@click.pass_context
def token(cctx: click.Context, playbook: str | None, as_json: bool) -> None:
    if cctx.invoked_subcommand is not None:
        return
    from labctl.app.sensor import sensor_token

    doc = sensor_token(_ctx(playbook))
    if doc["created"]:
        value = doc["token"].reveal()
        if as_json:
            # compact, unscrubbed: the one place the token is shown
            click.echo(json.dumps({"token": value, "env": doc["env"], "url": doc["url"]}))
        else:
            click.echo(value)
            echo(f"Store it now: it is not shown again. export {doc['env']}=<token>",
                 err=True)
        return
    if as_json:
        emit_json({k: v for k, v in doc.items() if k != "token"})
        return
    echo(f"No API creates a token on a Defender for IoT sensor ({doc['url']}); create one in "
         "its web UI:")
    for i, step in enumerate(doc["instructions"], 1):
        echo(f"  {i}. {step}")


@token.command("create", help="Create an API access token and print it once.")
@state_option
@click.option("--description", default="labctl", show_default=True, help="What it is for.")
@json_option
def token_create(state: str | None, description: str, as_json: bool) -> None:
    from labctl.sensor.store import SensorStore

    store = SensorStore(_state_dir(state))
    try:
        value = store.create_token(description)
    finally:
        store.close()
    if as_json:
        # compact, unscrubbed: the one place the token is shown
        click.echo(json.dumps({"token": value, "description": description}))
    else:
        click.echo(value)
        echo("Store it now: it is not shown again (send it as `Authorization: <token>`).",
             err=True)


@token.command("list", help="List API tokens (never their values).")
@state_option
@json_option
def token_list(state: str | None, as_json: bool) -> None:
    from labctl.sensor.store import SensorStore

    store = SensorStore(_state_dir(state))
    try:
        rows = store.list_tokens()
    finally:
        store.close()
    if as_json:
        emit_json(rows)
        return
    if not rows:
        echo("no tokens; create one with `labctl sensor token create`")
    for r in rows:
        echo(f"{r['id']}  {r['description']:<30} used: {r['used'] or 'N/A'}")


# ---- looking at the lab's sensor ---------------------------------------------------------

def _ctx(playbook: str | None) -> Any:
    from labctl.cli.lab import make_context
    from labctl.core.playbook import load_playbook

    return make_context(load_playbook(playbook))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v) or "-"
    if isinstance(v, dict):
        return str(v.get("name") or v)
    return str(v).replace("\n", " ")


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]], empty: str,
           width: int = 60) -> None:
    if not rows:
        echo(empty)
        return
    cells = [[_cell(r.get(k))[:width] for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    echo("  ".join(h.ljust(w) for (_, h), w in zip(cols, widths, strict=True)).rstrip())
    for c in cells:
        echo("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())


def _when(ms: Any) -> str:
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(int(ms) / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


@sensor.command(help="Reachability, URL, version, activation, learning mode, monitor "
                     "interfaces and the pinned certificate of the playbook's sensor.")
@playbook_option
@json_option
def status(playbook: str | None, as_json: bool) -> int:
    from labctl.app.sensor import sensor_status

    doc = sensor_status(_ctx(playbook))
    if as_json:
        emit_json(doc)
    else:
        path = doc.get("access_path") or {}
        via = f" via {path['via']}" if path.get("via") else ""
        used = f" at {path['url']}" if path.get("url") not in (None, doc["url"]) else ""
        rows = [("sensor", f"{doc['kind']} {doc['url']}"),
                ("access", f"{doc['access']}{via}{used}"),
                ("reachable", "yes" if doc["reachable"] else f"no ({doc['error']})"),
                ("token", {True: "accepted", False: f"refused ({doc['error']})",
                           None: "-"}[doc["token_accepted"]]),
                ("version", doc["version"] or "unknown (the sensor API does not report it)"),
                ("activation", doc["activation"] or "unknown"),
                ("learning mode", {True: "on", False: "off", None: "unknown"}[
                    doc["learning_mode"]]),
                ("monitor interfaces", _cell(doc["monitor_interfaces"])
                 if doc["monitor_interfaces"] else "unknown"),
                ("certificate", f"sha256 {doc['fingerprint']}" if doc["fingerprint"]
                 else "not pinned yet")]
        for k, v in rows:
            echo(f"{k + ':':<20} {v}")
    return 0 if doc["reachable"] else 5  # ExitCode.UNREACHABLE


@sensor.command(help="The sensor's alerts (v2 with addresses where the sensor has it).")
@playbook_option
@click.option("--since", metavar="DURATION", default=None,
              help="Only alerts detected in the last DURATION (30s, 10m, 2h, 1d).")
@click.option("--state", type=click.Choice(["handled", "unhandled"]), default=None,
              help="Only handled or unhandled alerts (the API's state= filter).")
@click.option("--title", metavar="TEXT", default=None,
              help="Only alerts whose title contains TEXT (any letter case).")
@json_option
def alerts(playbook: str | None, since: str | None, state: str | None, title: str | None,
           as_json: bool) -> None:
    from labctl.app.sensor import parse_duration, sensor_alerts

    if since is not None:
        parse_duration(since)  # bad input is refused before the playbook is read
    docs = sensor_alerts(_ctx(playbook), since=since, state=state, title=title)
    if as_json:
        emit_json(docs)
        return
    for d in docs:
        d["when"] = _when(d.get("time"))
    _table(docs, [("id", "ID"), ("when", "TIME (UTC)"), ("severity", "SEVERITY"),
                  ("engine", "ENGINE"), ("title", "TITLE"),
                  ("sourceDeviceAddress", "SOURCE"), ("destinationDeviceAddress", "DEST")],
           "no alerts")


@sensor.command(help="The devices in the sensor's inventory.")
@playbook_option
@click.option("--authorized/--unauthorized", "authorized", default=None,
              help="Only authorized (or unauthorized) devices.")
@json_option
def devices(playbook: str | None, authorized: bool | None, as_json: bool) -> None:
    from labctl.app.sensor import sensor_devices

    docs = sensor_devices(_ctx(playbook), authorized=authorized)
    if as_json:
        emit_json(docs)
        return
    _table(docs, [("id", "ID"), ("ipAddresses", "IP"), ("macAddresses", "MAC"),
                  ("name", "NAME"), ("vendor", "VENDOR"), ("type", "TYPE"),
                  ("authorized", "AUTHORIZED"), ("scanner", "SCANNER")], "no devices")


@sensor.command(help="Connections the sensor saw (one device's with --device).")
@playbook_option
@click.option("--device", "device", metavar="ADDR", default=None,
              help="Only this device's connections (an IP or MAC address it has).")
@json_option
def connections(playbook: str | None, device: str | None, as_json: bool) -> None:
    from labctl.app.sensor import sensor_connections

    docs = sensor_connections(_ctx(playbook), device=device)
    if as_json:
        emit_json(docs)
        return
    for d in docs:
        d["seen"] = _when(d.get("lastSeen"))
    _table(docs, [("firstDeviceId", "DEVICE A"), ("secondDeviceId", "DEVICE B"),
                  ("ports", "PORTS"), ("protocols", "PROTOCOLS"), ("seen", "LAST SEEN (UTC)")],
           "no connections")


@sensor.command(help="The sensor's latest events (at most 100, newest first).")
@playbook_option
@click.option("--minutes", type=click.IntRange(1, 4320), default=60, show_default=True,
              help="Events of the last N minutes (the API's maximum is 4320).")
@click.option("--type", "etype", metavar="TYPE", default=None,
              help="Only events of TYPE (e.g. ALERT_REPORTED, DEVICE_CREATE).")
@json_option
def events(playbook: str | None, minutes: int, etype: str | None, as_json: bool) -> None:
    from labctl.app.sensor import sensor_events

    docs = sensor_events(_ctx(playbook), minutes=minutes, type=etype)
    if as_json:
        emit_json(docs)
        return
    for d in docs:
        d["when"] = _when(d.get("timestamp"))
    _table(docs, [("when", "TIME (UTC)"), ("type", "TYPE"), ("severity", "SEVERITY"),
                  ("title", "TITLE"), ("content", "CONTENT")], "no events")


@sensor.command(help="Activate the sensor with its activation file and wait until it reports "
                     "activation (the embedded sensor is activated through labctl's own "
                     "endpoint; a real one in its web UI, whose URL and page are printed).")
@playbook_option
@click.option("--activation-file", "given", metavar="ZIP", default=None,
              help="The activation file (default: sensor.activation_file, else the one "
                   "sensor.azure downloaded).")
@click.option("--timeout", type=click.IntRange(1, 86400), default=None,
              help="Seconds to wait (default: sensor.activation_wait_seconds).")
@json_option
def activate(playbook: str | None, given: str | None, timeout: int | None,
             as_json: bool) -> None:
    from labctl.app.sensor import sensor_activate

    state = {"phase": ""}

    def progress(ev: dict[str, Any]) -> None:
        if ev["phase"] == "instructions":
            echo("Upload the activation file in the sensor's web UI:", err=True)
            for i, step in enumerate(ev["steps"], 1):
                echo(f"  {i}. {step}", err=True)
            echo(f"URL:  {ev['url']}", err=True)
            echo(f"File: {ev['file']}", err=True)
        elif ev["phase"] == "uploaded":
            echo(f"uploaded {ev['file']} to the embedded sensor", err=True)
        elif ev["phase"] != state["phase"] or ev["phase"] == "waiting":
            if ev["phase"] == "waiting" and state["phase"] == "waiting" and \
                    not _is_tty_err():
                return  # non-interactive: one line per phase change
            echo(f"{ev['phase']}: {ev['elapsed']:.0f}/{ev['deadline']:.0f} s; "
                 f"{ev['observed']}", err=True)
        state["phase"] = ev["phase"]

    report = sensor_activate(_ctx(playbook), given=given, progress=progress, timeout=timeout)
    if as_json:
        emit_json(report.to_dict())
        return
    echo(f"activated: {report.url} ({report.evidence}) after {report.waited_seconds:.0f} s")


def _is_tty_err() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@sensor.command("azure", help="Create the site and the OT sensor in Azure (sensor.azure, over "
                              "ARM with DefaultAzureCredential) and download the activation "
                              "file into the lab's state folder. A second run changes nothing.")
@playbook_option
@click.option("--dry-run", is_flag=True, help="Show what would be created; change nothing.")
@click.option("--refresh", is_flag=True,
              help="Download a new activation file even if the one there is still fresh.")
@json_option
def azure(playbook: str | None, dry_run: bool, refresh: bool, as_json: bool) -> None:
    from labctl.app.sensor import azure_onboard

    report = azure_onboard(_ctx(playbook), dry_run=dry_run, refresh=refresh)
    if as_json:
        emit_json(report.to_dict())
        return
    for r in report.results:
        echo(f"{r['resource']:<7} {r['name']:<30} {r['action']}")
    if report.activation_file:
        echo(f"activation file: {report.activation_file}"
             + (" (downloaded)" if report.downloaded else " (kept)"))


# ---- the sensor stage's progress (for `labctl up`) -----------------------------------------

class PhaseDisplay:
    """Renders :class:`labctl.app.sensor.PhaseEvent`s on stderr: a rich live line (phase,
    elapsed against its deadline, the last thing observed) on a terminal, else one plain
    line per phase change (CI, --json, -q). Call :meth:`close` when the stage ends."""

    def __init__(self, interactive: bool | None = None) -> None:
        self.interactive = _is_tty_err() if interactive is None else interactive
        self._live: Any = None
        self._last: tuple[str, str] | None = None

    def __call__(self, ev: Any) -> None:
        from labctl.core.secrets import REDACTOR

        head = f"sensor [{ev.index}/{ev.total}] {ev.title}"
        if ev.kind in ("start", "resume", "done", "timeout"):
            if (ev.phase, ev.kind) == self._last:
                return
            self._last = (ev.phase, ev.kind)
            what = {"start": "waiting", "resume": "reached earlier", "done": "done",
                    "timeout": "timed out"}[ev.kind]
            line = f"{head}: {what}"
            if ev.kind in ("done", "timeout"):
                line += f" after {ev.elapsed:.0f} s"
            if ev.observed:
                line += f" ({ev.observed})"
            self._stop()
            echo(line, err=True)
            return
        if not self.interactive:
            return  # ticks only on a terminal
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        text = Text(REDACTOR.scrub(f"{head}: {ev.elapsed:.0f}/{ev.deadline:.0f} s, "
                                   f"{ev.observed}"))
        if self._live is None:
            self._live = Live(text, console=Console(stderr=True), transient=True,
                              auto_refresh=False)
            self._live.start()
        self._live.update(text, refresh=True)

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        self._stop()


def phase_display(interactive: bool) -> PhaseDisplay:
    """The sensor stage's ``phase_progress`` for `labctl up`: a live line on a terminal
    (``interactive``), else one line per phase change (pass False for CI, --json, -q)."""
    return PhaseDisplay(interactive and _is_tty_err())


sensor.add_command(audit)
