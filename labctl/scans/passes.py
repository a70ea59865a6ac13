"""Run a profile with a scanner: one nmap pass (oneshot) or two (smart), merged into hosts.

``smart``: pass 1 runs ``discovery_args`` (a fast port scan with host discovery) over all
targets; pass 2 runs ``service_args`` plus ``-p <union of open ports>`` over only the hosts
that were up with open ports. Open ports match a one-shot ``-sV -sC`` over the same port
set, because pass 1 scans the same ports; version probes and NSE scripts, the slow part,
are not spent on addresses that answered nothing.
"""

from __future__ import annotations

from dataclasses import replace

from labctl.scans.profiles import ScanProfile
from labctl.scans.result import HostResult, NmapRun, parse_nmap_xml
from labctl.scans.scanners import ProgressFn, Scanner


def _exclude_args(excludes: list[str]) -> list[str]:
    return ["--exclude", ",".join(excludes)] if excludes else []


def port_spec(keys: set[str]) -> str:
    """``{"22/tcp", "53/udp"}`` -> ``T:22,U:53`` (plain ``22,80`` when TCP only)."""
    by: dict[str, list[int]] = {}
    for k in keys:
        num, _, proto = k.partition("/")
        by.setdefault(proto, []).append(int(num))
    if set(by) <= {"tcp"}:
        return ",".join(str(p) for p in sorted(by.get("tcp", [])))
    letters = {"tcp": "T", "udp": "U", "sctp": "S"}
    return ",".join(f"{letters[p]}:{','.join(str(n) for n in sorted(v))}"
                    for p, v in sorted(by.items()) if p in letters)


def merge_hosts(first: list[HostResult], second: list[HostResult]) -> list[HostResult]:
    """Pass 2 refines pass 1: its ports and scripts win; MAC/vendor are kept from pass 1."""
    by2 = {h.addr: h for h in second}
    out: list[HostResult] = []
    for h in first:
        h2 = by2.get(h.addr)
        if h2 is None:
            out.append(h)
            continue
        ports = {p.key: p for p in h.ports}
        for p in h2.ports:
            ports[p.key] = p
        merged = replace(h2, mac=h2.mac or h.mac, vendor=h2.vendor or h.vendor,
                         ipv4=h2.ipv4 or h.ipv4, ipv6=h2.ipv6 or h.ipv6,
                         hostnames=h2.hostnames or h.hostnames, state=h.state,
                         reason=h.reason,
                         ports=sorted(ports.values(), key=lambda p: (p.proto, p.port)))
        out.append(merged)
    return out


def execute(profile: ScanProfile, scanner: Scanner, targets: list[str], excludes: list[str],
            progress: ProgressFn | None = None,
            extra_args: list[str] | None = None) -> tuple[list[NmapRun], list[HostResult]]:
    """Run the profile; return every nmap run (exact argv, XML) and the merged hosts.

    ``extra_args`` (e.g. ``-6`` for IPv6 targets) go into every pass.
    """
    extra = list(extra_args or [])
    excl = [*extra, *_exclude_args(excludes)]
    if profile.strategy == "oneshot":
        run = scanner.run([*profile.args, *excl], targets, timeout=profile.timeout,
                          progress=progress, phase="scan")
        _, hosts = parse_nmap_xml(run.xml, scanner.spec)
        return [run], hosts
    run1 = scanner.run([*profile.discovery_args, *excl], targets, timeout=profile.timeout,
                       progress=progress, phase="discovery")
    _, hosts1 = parse_nmap_xml(run1.xml, scanner.spec)
    live = [h for h in hosts1 if h.state == "up" and h.open_ports()]
    if not live:
        return [run1], hosts1
    keys = {p.key for h in live for p in h.open_ports()}
    remaining = max(5.0, profile.timeout - (run1.ended - run1.started))
    run2 = scanner.run([*profile.service_args, *extra, "-p", port_spec(keys)],
                       [h.addr for h in live], timeout=remaining, progress=progress,
                       phase="service")
    _, hosts2 = parse_nmap_xml(run2.xml, scanner.spec)
    return [run1, run2], merge_hosts(hosts1, hosts2)
