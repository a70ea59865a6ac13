"""`labctl twin`: the Linux twin's helpers (demo, supervised processes, router twin)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from labctl.cli._common import echo, emit_json, json_option, playbook_option
from labctl.cli.twin_router import serve_router
from labctl.core.errors import ExitCode


@click.group()
def twin() -> None:
    """Linux twin helpers: the end-to-end demo, supervised processes, the router twin.

    The twin itself is built with `labctl up -f playbooks/twin.yaml -y` and removed with
    `labctl down -f playbooks/twin.yaml -y`.
    """


twin.add_command(serve_router)


def _service_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    root = logging.getLogger("labctl")
    root.setLevel(logging.INFO)
    root.propagate = True
    for h in list(root.handlers):
        root.removeHandler(h)


@twin.command("run-persona", hidden=True)
@click.option("--persona", "persona_file", required=True, help="Persona YAML file.")
@click.option("--name", required=True, help="Device name (used in outbound lines).")
@click.option("--wan", default="203.0.113.10", show_default=True,
              help="Address of the twin's WAN services.")
@click.option("--irc-port", default=6667, show_default=True, type=int)
def run_persona_cmd(persona_file: str, name: str, wan: str, irc_port: int) -> None:
    """Run one device persona in the current namespace (a supervised process)."""
    from labctl.traffic.persona import load_persona, run_persona

    _service_logging()
    run_persona(load_persona(persona_file), name=name, wan=wan, irc_port=irc_port)


@twin.command("run-wan", hidden=True)
@click.option("--irc-port", default=6667, show_default=True, type=int)
def run_wan_cmd(irc_port: int) -> None:
    """Run the WAN services (IRC-like, HTTP, echo) in the current namespace."""
    from labctl.traffic.wan import run_wan

    _service_logging()
    run_wan(irc_port=irc_port)


@twin.command("ps")
@click.option("-f", "--file", "playbook", metavar="FILE", default=None,
              help="Only the lab of this playbook (default: every lab in the state directory).")
@json_option
def ps(playbook: str | None, as_json: bool) -> None:
    """List the twin's supervised processes (all labs, or the lab of -f)."""
    from labctl.app.twin import list_processes

    rows = list_processes(playbook)
    if as_json:
        emit_json({"processes": rows})
        return
    if not rows:
        echo("no supervised processes")
        return
    echo(f"{'LAB':<8} {'NAME':<22} {'STATE':<8} {'PID':>7}  NETNS")
    for r in rows:
        echo(f"{r['lab']:<8} {r['name']:<22} {r['state']:<8} {r['pid']:>7}  {r['netns']}")


@twin.command("demo")
@playbook_option
@click.option("--keep", is_flag=True, help="Leave the twin up afterwards.")
@click.option("--timeout", default=60.0, show_default=True,
              type=click.FloatRange(min=1, max=3600),
              help="Seconds to wait for the sensor API.")
@click.option("--expectations", metavar="NAME|FILE", default=None,
              help="Expectation file for verify-alerts (default: the playbook's).")
@click.option("--junit", "junit_path", metavar="FILE", default=None,
              help="Write verify-alerts' verdicts as JUnit XML.")
@json_option
def demo(playbook: str | None, keep: bool, timeout: float, expectations: str | None,
         junit_path: str | None, as_json: bool) -> int:
    """End to end on the twin: up, wait for the sensor, run verify-alerts (its cases scan
    the IoT subnet and a pet feeder from the scanner namespace and send packet recipes),
    print a summary with the per-case verdicts, down (unless --keep).

    Exits 0 when every case passed or was skipped, 4 when any case failed. Without -f the
    packaged playbooks/twin.yaml is used.
    """
    from labctl.app.twin import run_demo
    from labctl.cli.verify import LiveView, render_table, write_junit

    progress = None if as_json else (lambda msg: echo(f"--> {msg}", err=True))
    with LiveView(enabled=not as_json) as view:
        report = run_demo(playbook, keep=keep, sensor_timeout=timeout, progress=progress,
                          expectations=expectations, verify_progress=view)
    if junit_path and report.verify is not None:
        write_junit(report.verify, junit_path)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_demo(report.to_dict())
        if report.verify is not None:
            render_table(report.verify)
    return 0 if report.ok else int(ExitCode.DRIFT)


def _print_demo(d: dict[str, Any]) -> None:
    stages = ", ".join(f"{k} {v}" for k, v in d.get("stages", {}).items())
    echo(f"twin lab {d['lab']}: up in {d['up_seconds']:.1f} s" + (f" ({stages})" if stages else ""))
    echo(f"scan of {d['target']} from {d['scanner_netns']}: {len(d['hosts'])} host(s) up, "
         f"{len(d['devices_found'])} of {len(d['devices_expected'])} twin devices")
    for h in d["hosts"]:
        echo(f"  {h['ip']:<15} {', '.join(str(p) for p in h['ports']) or '-'}")
    if d.get("sensor_devices"):
        echo(f"sensor inventory: {len(d['sensor_devices'])} device(s)")
        for dev in d["sensor_devices"]:
            echo(f"  {dev.get('ip') or '-':<15} {dev.get('mac') or '-':<17} "
                 f"{dev.get('vendor') or ''}")
    echo(f"sensor alerts: {d['alerts_fired']}")
    for a in d["alerts"][:20]:
        echo(f"  {a}")
    echo("twin left running (--keep)" if d["kept"] else f"twin removed in "
         f"{d['down_seconds']:.1f} s")
