"""`labctl twin serve-router`: run the stateful ASUSWRT router twin (registered by `twin`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

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
              show_default=True, help="Which login schemes the twin accepts.")
@click.option("--model", default="ZenWiFi Pro ET12", show_default=True, help="Model_Name.")
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
    from labctl.router.asus.twin import RouterTwin, TwinServer, ensure_certificate

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
    twin = RouterTwin(user=user, password=password, login_mode=login_mode, model=model,
                      state_file=state, token_ttl=token_ttl, iot_interfaces=ifaces)
    for spec in faults:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
            raise UsageError(f"--fault {spec!r} must be ENDPOINT:KIND[:COUNT]")
        twin.add_fault(parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 1)
    twin.sync_interfaces()
    cert = key = None
    if use_https:
        from labctl.core.state import state_home

        # Kept beside pins.json (not in the lab's state dir), so re-creating a twin lab keeps
        # the same certificate and the client's TOFU pin stays valid.
        safe = f"{host}_{port}".replace(":", "_").replace("/", "_")
        cert, key = ensure_certificate(state_home() / "router-twin" / safe)
    server = TwinServer(twin, host, port, https=use_https, certfile=cert, keyfile=key)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    echo(f"router twin ({model}, login {login_mode}) serving on {server.url}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
