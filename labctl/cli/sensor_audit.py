"""``labctl sensor audit``: the sensor's admin CLI over SSH (version, services, the mirror,
the kernel against known CVEs). Click only: parse, call
:func:`labctl.sensor.audit.run_audit`, render. Registered on the ``sensor`` group with
``sensor.add_command(audit)``."""

from __future__ import annotations

from typing import Any

import click

from labctl.cli._common import echo, emit_json, json_option, playbook_option


@click.command(help="SSH to the sensor's admin CLI (shell> prompt) and run system version, "
                    "system sanity and network list (twice): the version, the services, "
                    "which interfaces are PROMISC and whether their RX counters rise (the "
                    "mirror feeds them), and the kernel against sensor/cves.yaml. Exit 4 "
                    "when the mirror is dead or a known CVE applies.")
@playbook_option
@json_option
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(1, 600),
              metavar="SECONDS", help="Time between the two RX samples.")
@click.option("--known-hosts", "known_hosts", default=None, metavar="FILE",
              help="known_hosts file holding the sensor's SSH host key "
                   "(default: ~/.ssh/known_hosts).")
@click.option("--port", default=22, show_default=True, type=click.IntRange(1, 65535),
              help="The sensor's SSH port.")
@click.option("--kernel", default=None, metavar="VERSION",
              help="The sensor's upstream kernel version (e.g. 5.10.158), when its login "
                   "banner does not show it.")
def audit(playbook: str | None, as_json: bool, interval: float, known_hosts: str | None,
          port: int, kernel: str | None) -> int:
    from labctl.cli.lab import make_context
    from labctl.core.playbook import load_playbook
    from labctl.sensor.audit import run_audit

    rep = run_audit(make_context(load_playbook(playbook)), known_hosts=known_hosts,
                    port=port, interval=interval, kernel=kernel)
    doc = rep.to_dict()
    if as_json:
        emit_json(doc)
        return int(doc["exit_code"])
    _render(doc)
    return int(doc["exit_code"])


def _render(doc: dict[str, Any]) -> None:
    up = "UP" if doc["system_up"] else "NOT UP"
    echo(f"{'sensor:':<20} {doc['target']}")
    echo(f"{'version:':<20} {doc['version'] or 'unknown'}")
    echo(f"{'system:':<20} {up}" + (f" ({doc['profile']})" if doc["profile"] else ""))
    down = [s["name"] for s in doc["services"] if not s["running"]]
    echo(f"{'services:':<20} {len(doc['services']) - len(down)}/{len(doc['services'])} "
         "running" + (f"; not running: {', '.join(down)}" if down else ""))
    echo(f"{'os base:':<20} {doc['os_base'] or 'unknown'}")
    echo(f"{'kernel:':<20} {doc['kernel'] or 'unknown'} ({doc['kernel_source']})")
    echo("")
    echo(f"{'INTERFACE':<12} {'PROMISC':<8} {'RX PACKETS':>14} {'RX DELTA':>10}")
    for i in doc["interfaces"]:
        delta = "-" if i["rx_delta"] is None else f"+{i['rx_delta']}"
        rx = "-" if i["rx_packets"] is None else str(i["rx_packets"])
        echo(f"{i['name']:<12} {'yes' if i['promisc'] else 'no':<8} {rx:>14} {delta:>10}")
    echo(f"mirror: {'fed' if doc['mirror_alive'] else 'DEAD'} "
         f"(RX sampled {doc['interval_seconds']:g} s apart)")
    echo("")
    for c in doc["cves"]:
        state = {True: "AFFECTED", False: "not affected", None: "unknown"}[c["affected"]]
        echo(f"{c['cve']:<16} {c['name']:<34} {state}"
             + (f"  ({c['note']})" if c["note"] else ""))
    for p in doc["problems"]:
        echo(f"problem: {p}", err=True)
