"""``labctl sensor``: the embedded passive sensor (serve, replay, tokens).

Click only: parse, call one function in :mod:`labctl.sensor`, render.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from labctl.cli._common import echo, emit_json, json_option


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


@click.group(help="Embedded passive sensor with a D4IoT-compatible API.")
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
         + (f" = {pps:,} packets/s" if pps else ""))


@sensor.group(help="API access tokens (stored hashed; shown once).")
def token() -> None:
    pass


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
