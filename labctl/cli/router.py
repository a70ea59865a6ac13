"""`labctl router`: the IoT network as code (iot-net, show, backup, restore, delete-net).

Parsing and rendering only; the work is in labctl.app.router, which talks to the router
through the driver of the playbook's ``router.kind`` (today: asus). The router password
comes from LABCTL_ROUTER_PASSWORD, the playbook's reference, or a prompt; it is never
printed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from labctl.cli._common import (
    confirm,
    echo,
    emit_json,
    json_option,
    playbook_option,
    prompt_secret,
    yes_option,
)

if TYPE_CHECKING:
    from labctl.core.playbook import LoadedPlaybook
    from labctl.router.base import RouterTarget


def _target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--timeout", "timeout", type=float, default=10.0, show_default=True,
                     metavar="SECONDS", help="Per-request timeout.")(f)
    f = click.option("--user", "user", metavar="NAME", default=None,
                     help="Router admin user (overrides the playbook).")(f)
    f = click.option("--url", "url", metavar="URL", default=None,
                     help="Router URL, e.g. https://192.168.50.1:8443 (overrides the "
                          "playbook).")(f)
    return playbook_option(f)


def _target(playbook: str | None, url: str | None, user: str | None, timeout: float
            ) -> tuple[LoadedPlaybook | None, RouterTarget]:
    from labctl.app import router as app

    loaded = app.ensure_loaded(playbook, url=url)
    return loaded, app.resolve_target(loaded, url=url, user=user, prompt_fn=prompt_secret,
                                      timeout=timeout, environ=os.environ)


@click.group(help="The router (today: ASUS, ASUSWRT 3.0.0.6 SDN): the IoT network as code, "
                  "backup, restore.\n\nThe password comes from LABCTL_ROUTER_PASSWORD, the "
                  "playbook's router.password reference, or a prompt.")
def router() -> None:
    pass


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    return str(v)


@router.command("iot-net")
@_target_options
@click.option("--name", default=None, help="Network name (labctl identifies it by SSID).")
@click.option("--ssid", default=None, help="SSID (1-32 bytes).")
@click.option("--vlan", type=int, default=None, help="VLAN id, 2-4094.")
@click.option("--subnet", default=None, metavar="CIDR", help="IPv4 subnet, e.g. 172.16.1.0/24.")
@click.option("--dns", default=None, metavar="IP[,IP]", help="Up to two DNS servers.")
@click.option("--band", type=click.Choice(["2.4", "5", "6", "2.4+5", "5+6", "2.4+5+6", "2.4+6"]),
              default=None, help="Wi-Fi band(s).")
@click.option("--auth", type=click.Choice(["wpa2-personal", "wpa-wpa2-personal",
                                           "wpa2-wpa3-personal", "wpa3-personal"]),
              default=None, help="Wi-Fi authentication.")
@click.option("--ap-isolation/--no-ap-isolation", default=None,
              help="Client isolation (on hides device-to-device traffic from the sensor).")
@click.option("--dhcp/--no-dhcp", default=None, help="Router DHCP on the IoT subnet.")
@click.option("--dry-run", is_flag=True, help="Show the diff; change nothing.")
@yes_option
@json_option
def iot_net(playbook: str | None, url: str | None, user: str | None, timeout: float,
            name: str | None,
            ssid: str | None, vlan: int | None, subnet: str | None, dns: str | None,
            band: str | None, auth: str | None, ap_isolation: bool | None, dhcp: bool | None,
            dry_run: bool, yes: bool, as_json: bool) -> None:
    """Create or update the IoT network (SDN profile, VLAN, subnet, DHCP, DNS, Wi-Fi).

    Shows a field-level diff, asks, applies as a transaction (backup, apply, read back,
    automatic restore on failure). A second run changes nothing.
    """
    from labctl.app import router as app

    overrides = app.parse_overrides(name=name, ssid=ssid, vlan=vlan, subnet=subnet, dns=dns,
                                    band=band, auth=auth, ap_isolation=ap_isolation, dhcp=dhcp)
    loaded, target = _target(playbook, url, user, timeout)
    desired = app.desired_network(loaded, overrides, prompt_fn=prompt_secret,
                                  environ=os.environ)

    def _confirm(report: Any) -> bool:
        if not as_json:
            _print_diff(report)
        return confirm(f"Apply {len(report.changed_keys)} nvram change(s) to the router?", yes)

    if not as_json:
        for w in app.network_warnings(desired):
            echo(f"Warning: {w}", err=True, fg="yellow")
    report = app.iot_net(target, desired, confirm=_confirm, dry_run=dry_run)
    if as_json:
        emit_json(report.to_dict())
        return
    if report.action == "noop":
        echo(f"IoT network {desired.ssid!r} is up to date; nothing to change.")
    elif dry_run:
        _print_diff(report)
        echo("Dry run: nothing was changed.")
    else:
        tx = report.transaction or {}
        echo(f"Applied ({report.action}) and verified by read-back; backup: "
             f"{tx.get('backup_file')}")


def _print_diff(report: Any) -> None:
    echo(f"{report.action} network {report.network['ssid']!r} (VLAN {report.network['vlan']}, "
         f"{report.network['subnet']}):")
    for d in report.diff:
        echo(f"  {d['field']:<13} {_fmt(d['old']):>22} -> {_fmt(d['new'])}")
    echo(f"  ({len(report.changed_keys)} nvram keys: {', '.join(report.changed_keys)})")


@router.command("show")
@_target_options
@json_option
def show(playbook: str | None, url: str | None, user: str | None, timeout: float,
         as_json: bool) -> None:
    """Show the router's SDN networks, decoded (secrets masked)."""
    from labctl.app import router as app

    _, target = _target(playbook, url, user, timeout)
    nets = app.show(target)
    if as_json:
        emit_json({"networks": nets})
        return
    cols = ("idx", "name", "type", "band", "auth", "vlan", "subnet", "dhcp", "dns",
            "ap_isolation")
    rows = [[c.upper() for c in cols]] + [[_fmt(n.get(c)) for c in cols] for n in nets]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@router.command("backup")
@_target_options
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Backup file (default: the lab's state directory).")
@json_option
def backup(playbook: str | None, url: str | None, user: str | None, timeout: float,
           output: Path | None,
           as_json: bool) -> None:
    """Save every SDN-related nvram key, byte for byte (the file holds Wi-Fi passphrases)."""
    from labctl.app import router as app

    _, target = _target(playbook, url, user, timeout)
    res = app.backup(target, output)
    if as_json:
        emit_json(res)
    else:
        echo(f"Saved {res['keys']} SDN nvram keys to {res['file']}")


@router.command("restore")
@_target_options
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@yes_option
@json_option
def restore(playbook: str | None, url: str | None, user: str | None, timeout: float,
            file: Path, yes: bool,
            as_json: bool) -> None:
    """Put back every SDN nvram key from a backup FILE, verified by read-back."""
    from labctl.app import router as app

    _, target = _target(playbook, url, user, timeout)

    def _confirm(keys: list[str]) -> bool:
        if not as_json:
            echo(f"{len(keys)} key(s) differ from the backup: {', '.join(keys)}")
        return confirm("Restore them?", yes)

    res = app.restore(target, file, confirm=_confirm)
    if as_json:
        emit_json(res)
    elif not res["changed_keys"]:
        echo("The router already matches the backup; nothing to restore.")
    else:
        echo(f"Restored {len(res['changed_keys'])} key(s) and verified them.")


@router.command("delete-net")
@_target_options
@click.argument("name")
@yes_option
@json_option
def delete_net(playbook: str | None, url: str | None, user: str | None, timeout: float,
               name: str, yes: bool,
               as_json: bool) -> None:
    """Delete the SDN network NAME (its SSID, as `router show` prints it)."""
    from labctl.app import router as app

    _, target = _target(playbook, url, user, timeout)

    def _confirm(net: dict[str, Any]) -> bool:
        if not as_json:
            echo(f"delete network {name!r} (sdn idx {net.get('idx')}, VLAN {net.get('vlan')}, "
                 f"{net.get('subnet')})")
        return confirm(f"Delete {name!r}?", yes)

    res = app.delete_net(target, name, confirm=_confirm)
    if as_json:
        emit_json(res)
    else:
        echo(f"Deleted {name!r} (verified by read-back).")
