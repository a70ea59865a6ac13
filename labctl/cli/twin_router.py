"""`labctl twin serve-router`: run the ASUS router emulator (labctl.router.asus.emulator).

The netns twin runs this in the lab's router namespace (the command line comes from
``AsusDriver.emulator_process``); the emulator moves IoT gateway addresses through
``labctl.netns.ifaddr.move_address``, which this command hands it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

import click

from labctl.cli._common import echo
from labctl.core.errors import UsageError


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--listen {value!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


@click.command("serve-router")
@click.option("--listen", required=True, metavar="HOST:PORT", help="Address to serve on.")
@click.option("--https", "use_https", is_flag=True,
              help="Serve HTTPS with a self-signed certificate kept in the state home.")
@click.option("--state", "state", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="nvram JSON file (created from the realistic defaults, saved on apply).")
@click.option("--login", "login_mode", type=click.Choice(["v1", "v2", "both"]), default="both",
              show_default=True, help="Which login schemes the emulator accepts.")
@click.option("--model", default="ZenWiFi Pro ET12", show_default=True,
              help="Model name if the nvram has no odmpid or productid (the Model_Name "
                   "header is get_productid() of the nvram).")
@click.option("--user", default="admin", show_default=True, help="Admin user.")
@click.option("--password-env", default=None, metavar="VAR",
              help="Environment variable holding the admin password (default: admin).")
@click.option("--iot-interface", "iot_ifaces", multiple=True, metavar="VLAN=IFACE",
              help="Put an applied IoT network's gateway on IFACE (repeatable).")
@click.option("--token-ttl", type=float, default=3600.0, show_default=True,
              help="Seconds before a session token expires.")
@click.option("--fault", "faults", multiple=True, metavar="ENDPOINT:KIND[:COUNT]",
              help="Inject a fault: apply|appget : drop|5xx|slow|mangle (repeatable).")
def serve_router(listen: str, use_https: bool, state: Path | None, login_mode: str, model: str,
                 user: str, password_env: str | None, iot_ifaces: tuple[str, ...],
                 token_ttl: float, faults: tuple[str, ...]) -> None:
    """Serve an ASUSWRT 3.0.0.6-compatible router API (login v1/v2, appGet, applyapp, SDN)."""
    from labctl.netns.ifaddr import move_address
    from labctl.router.asus.emulator import EmulatorServer, RouterEmulator

    host, port = _listen(listen)
    password = "admin"
    if password_env:
        password = os.environ.get(password_env, "")
        if not password:
            raise UsageError(f"{password_env} is not set", hint=f"export {password_env}=...")
    ifaces: dict[int, str] = {}
    for item in iot_ifaces:
        vid, sep, name = item.partition("=")
        if not sep or not vid.isdigit() or not name:
            raise UsageError(f"--iot-interface {item!r} must be VLAN=IFACE")
        ifaces[int(vid)] = name
    emulator = RouterEmulator(user=user, password=password, login_mode=login_mode, model=model,
                              state_file=state, token_ttl=token_ttl, iot_interfaces=ifaces,
                              address_sync=move_address)
    for spec in faults:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
            raise UsageError(f"--fault {spec!r} must be ENDPOINT:KIND[:COUNT]")
        emulator.add_fault(parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 1)
    emulator.sync_interfaces()
    cert = key = None
    if use_https:
        cert, key = _certificate(host, port)
    server = EmulatorServer(emulator, host, port, https=use_https, certfile=cert, keyfile=key)
    signal.signal(signal.SIGTERM, _interrupt)
    echo(f"router emulator ({model}, login {login_mode}) serving on {server.url}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _certificate(host: str, port: int) -> tuple[Path, Path]:
    """The certificate for host:port, kept beside pins.json (not in the lab's state dir), so
    re-creating a twin lab keeps the same certificate and the client's TOFU pin stays valid.
    A pair made before the emulator package (``router-twin.crt``) is kept for that reason."""
    from labctl.core.state import state_home
    from labctl.router.asus.emulator import ensure_certificate

    safe = f"{host}_{port}".replace(":", "_").replace("/", "_")
    directory = state_home() / "router-twin" / safe
    old_cert, old_key = directory / "router-twin.crt", directory / "router-twin.key"
    if old_cert.exists() and old_key.exists():
        return old_cert, old_key
    return ensure_certificate(directory, host)
