"""Compare two scans, or a scan against a baseline, as a list of plain-data changes.

Every change reads as one line: ``172.16.1.24 6668/tcp opened``, ``172.16.1.30 new``,
``172.16.1.12 gone``, ``172.16.1.24 80/tcp version lighttpd 1.4.45 -> lighttpd 1.4.59``.
Empty list = nothing changed (exit 0); otherwise the CLI exits 4 so cron can alert.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import Field, field_validator

from labctl.core.errors import ConfigError, UsageError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate
from labctl.scans.result import ScanResult


def change(kind: str, host: str, port: str | None = None, old: str | None = None,
           new: str | None = None) -> dict[str, Any]:
    if kind in ("new", "gone"):
        text = f"{host} {kind}"
    elif kind == "version":
        text = f"{host} {port} version {old or '?'} -> {new or '?'}"
    else:
        text = f"{host} {port} {kind}"
    return {"kind": kind, "host": host, "port": port, "old": old, "new": new, "text": text}


def _sort_key(c: dict[str, Any]) -> tuple[Any, ...]:
    try:
        a = ipaddress.ip_address(c["host"])
        hk: tuple[int, int] = (a.version, int(a))
    except ValueError:
        hk = (9, 0)
    port = c.get("port") or ""
    num, _, proto = port.partition("/")
    return (hk, proto, int(num) if num.isdigit() else -1, c["kind"])


def diff_scans(old: ScanResult, new: ScanResult) -> list[dict[str, Any]]:
    """New/gone hosts, opened/closed ports, changed service versions (open ports only)."""
    out: list[dict[str, Any]] = []
    old_up = {h.addr: h for h in old.up_hosts()}
    new_up = {h.addr: h for h in new.up_hosts()}
    for addr in new_up.keys() - old_up.keys():
        out.append(change("new", addr))
        for p in new_up[addr].open_ports():
            out.append(change("opened", addr, p.key))
    for addr in old_up.keys() - new_up.keys():
        out.append(change("gone", addr))
    for addr in old_up.keys() & new_up.keys():
        o = {p.key: p for p in old_up[addr].open_ports()}
        n = {p.key: p for p in new_up[addr].open_ports()}
        for k in n.keys() - o.keys():
            out.append(change("opened", addr, k))
        for k in o.keys() - n.keys():
            out.append(change("closed", addr, k))
        for k in o.keys() & n.keys():
            ov, nv = o[k].version_text, n[k].version_text
            svc_changed = o[k].service != n[k].service and o[k].service and n[k].service
            if (ov and nv and ov != nv) or svc_changed:
                out.append(change("version", addr, k,
                                  ov or o[k].service, nv or n[k].service))
    return sorted(out, key=_sort_key)


_PORT_RE = re.compile(r"^([0-9]{1,5})(?:/(tcp|udp|sctp))?$", re.ASCII)  # no Unicode digits


class BaselineHost(Model):
    open: list[str] = Field(default_factory=list)  # "6668/tcp" or "6668" (tcp)
    optional: list[str] = Field(default_factory=list)  # may be open or closed
    description: str = ""

    @field_validator("open", "optional", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> list[str]:
        if not isinstance(v, list):
            raise ValueError("must be a list of ports like 22/tcp")
        out = []
        for item in v:
            m = _PORT_RE.match(str(item).strip())
            if not m or not 1 <= int(m.group(1)) <= 65535:
                raise ValueError(f"{item!r} is not a port like 6668/tcp")
            out.append(f"{int(m.group(1))}/{m.group(2) or 'tcp'}")
        return out


class Baseline(Model):
    """Expected open ports per host (``scans/baselines/NAME.yaml``)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    description: str = ""
    hosts: dict[str, BaselineHost]
    # report live hosts the baseline does not list as "new"
    unexpected_hosts: bool = Field(default=True, strict=True)

    @field_validator("hosts", mode="before")
    @classmethod
    def _addrs(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for k in v:
                try:
                    ipaddress.ip_address(str(k))
                except ValueError:
                    raise ValueError(f"{k!r} is not an IP address") from None
        return v


def load_baseline(name: str) -> Baseline:
    from labctl.core.assets import asset_path

    if "/" in name or name.endswith((".yaml", ".yml")):
        path = name
    else:
        if not re.match(r"^[a-z][a-z0-9-]{0,31}$", name):
            raise UsageError(f"{name!r} is not a baseline name")
        p = asset_path("scans", "baselines", f"{name}.yaml")
        if not p.is_file():
            d = asset_path("scans", "baselines")
            known = sorted(x.stem for x in d.glob("*.yaml")) if d.is_dir() else []
            raise UsageError(f"unknown baseline {name!r}",
                             hint=f"known baselines: {', '.join(known) or 'none'}; or pass a "
                                  "path to a baseline YAML file")
        path = str(p)
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError("a baseline must be a YAML mapping", file=str(path), line=1)
    return validate(Baseline, doc)


def baseline_deviations(result: ScanResult, baseline: Baseline) -> list[dict[str, Any]]:
    """Deviations from the baseline, in the same form as a diff.

    Only hosts covered by the scan's targets are judged, so scanning one device against a
    whole-lab baseline does not report the others as gone.
    """
    from labctl.scans.scope import parse_target

    targets = [parse_target(t) for t in result.targets]

    def scanned(addr: str) -> bool:
        try:
            a = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(t.first.version == a.version and int(t.first) <= int(a) <= int(t.last)
                   for t in targets)

    out: list[dict[str, Any]] = []
    up = {h.addr: h for h in result.up_hosts()}
    for addr, exp in baseline.hosts.items():
        if not scanned(addr) or addr in result.excludes:
            continue
        h = up.get(addr)
        if h is None:
            out.append(change("gone", addr))
            continue
        seen = {p.key for p in h.open_ports()}
        for k in exp.open:
            if k not in seen:
                out.append(change("closed", addr, k))
        for k in seen - set(exp.open) - set(exp.optional):
            out.append(change("opened", addr, k))
    if baseline.unexpected_hosts:
        for addr, h in up.items():
            if addr not in baseline.hosts:
                out.append(change("new", addr))
                for p in h.open_ports():
                    out.append(change("opened", addr, p.key))
    return sorted(out, key=_sort_key)
