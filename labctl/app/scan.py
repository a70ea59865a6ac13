"""Scan use cases: run a guarded scan, list history, diff two scans, check a baseline.

No printing here: progress goes to a callback and results come back as data
(:class:`~labctl.scans.result.ScanResult`, lists of change dicts). The order inside
:func:`run_scan` is the safety argument: parse and validate everything, check scope, check
routes, and only then start nmap.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.core.errors import ConfigError, UsageError
from labctl.scans import history as hist
from labctl.scans.diff import baseline_deviations, diff_scans, load_baseline
from labctl.scans.profiles import ScanProfile, load_profile, revalidate
from labctl.scans.result import ScanResult
from labctl.scans.scanners import ProgressFn, Scanner, make_scanner
from labctl.scans.scope import (
    PUBLIC_FLAG,
    IPNetwork,
    Target,
    check_routes,
    check_scope,
    is_lab_range,
    parse_exclude,
    parse_public_range,
    parse_scope,
    parse_target,
)

if TYPE_CHECKING:
    from labctl.core.playbook import LoadedPlaybook

ADHOC_LAB = "adhoc"


def default_scanner_spec(loaded: LoadedPlaybook | None) -> str:
    """The playbook's ``scanner.spec``; for a twin without one, its Kali namespace."""
    if loaded is None:
        return "local"
    pb = loaded.model
    if pb.scanner is not None:
        return pb.scanner.spec
    if pb.provider == "netns" and pb.twin is not None and pb.twin.scanner is not None:
        return f"netns:{pb.lab}-{pb.twin.scanner.name}"
    return "local"


def declared_networks(loaded: LoadedPlaybook) -> list[tuple[IPNetwork, tuple[str | int, ...]]]:
    """The playbook's networks that make up a scan's scope, each with its key path.

    ``Playbook.lab_networks`` (switch subnets, the router's IoT network, monitored subnets,
    ``scanner.scope``), and for ``provider: netns`` the twin's WAN service networks too:
    the twin's WAN namespace is part of the twin lab. On a real lab nothing else.
    """
    pb = loaded.model
    keyed: list[tuple[IPNetwork, tuple[str | int, ...]]] = []
    for i, sw in enumerate(pb.switches):
        if sw.network is not None:
            keyed.append((sw.network, ("switches", i, "subnet" if sw.subnet else "host_ip")))
    if pb.router is not None and pb.router.iot_network is not None:
        keyed.append((pb.router.iot_network.subnet, ("router", "iot_network", "subnet")))
    if pb.sensor is not None:
        keyed += [(m.subnet, ("sensor", "monitored_subnets", k, "subnet"))
                  for k, m in enumerate(pb.sensor.monitored_subnets)]
    if pb.scanner is not None:
        keyed += [(n, ("scanner", "scope", k)) for k, n in enumerate(pb.scanner.scope)]
    out: list[tuple[IPNetwork, tuple[str | int, ...]]] = []
    for net in pb.lab_networks:
        key = next((k for n, k in keyed if n == net), ())
        out.append((net, key))
    if pb.provider == "netns" and pb.twin is not None:
        out += [(w.network, ("twin", "wan_services", k))
                for k, w in enumerate(pb.twin.wan_services)]
    unique: list[tuple[IPNetwork, tuple[str | int, ...]]] = []
    for n, k in out:
        if all(n != m for m, _ in unique):
            unique.append((n, k))
    return unique


def allowed_networks(loaded: LoadedPlaybook | None, scope: Iterable[str] = (),
                     public_ranges: Iterable[str] = ()) -> list[IPNetwork]:
    """The scan scope: the playbook's networks, ``--scope`` and owned public ranges.

    Every network must be a lab range (private, link-local or documentation space), or lie
    inside a range given with ``--i-own-this-public-range`` (at most a /16). A public
    network declared in the playbook is a ConfigError naming the file and key (exit 2).
    """
    publics = [parse_public_range(p) for p in public_ranges]

    def owned(net: IPNetwork) -> bool:
        return any(net.version == p.version and net.subnet_of(p)  # type: ignore[arg-type]
                   for p in publics)

    allowed: list[IPNetwork] = []
    if loaded is not None:
        from labctl.core.yamlfile import format_loc

        for net, key in declared_networks(loaded):
            if not is_lab_range(net) and not owned(net):
                raise ConfigError(
                    f"{net} is a public range, so it is not part of the scan scope",
                    file=loaded.path, key=format_loc(key) if key else None,
                    line=loaded.doc.line_of(key) if key else None,
                    hint="a lab lives in private, link-local or documentation ranges; if you "
                         f"own this range and mean to scan it, add {PUBLIC_FLAG} {net}")
            if net not in allowed:
                allowed.append(net)
    for net in (parse_scope(s) for s in scope):
        if net not in allowed:
            allowed.append(net)
    for net in publics:
        if net not in allowed:
            allowed.append(net)
    return allowed


def resolve_scanner(loaded: LoadedPlaybook | None, scanner: str | Scanner | None,
                    stats_every: str = "2s") -> Scanner:
    """A ready Scanner, or one built from a spec (default: the playbook's)."""
    if scanner is not None and not isinstance(scanner, str):
        return scanner  # a ready Scanner object (e.g. an SshScanner with its own SshTarget)
    pb = loaded.model if loaded is not None else None
    spec = scanner or default_scanner_spec(loaded)
    ssh_key = pb.scanner.ssh_key if pb is not None and pb.scanner is not None else None
    return make_scanner(spec, ssh_key=ssh_key, stats_every=stats_every)


def guard_addresses(loaded: LoadedPlaybook | None, addresses: list[str],
                    scanner: str | None = None, *, force: bool = False) -> str:
    """The scan scope guard for traffic a tool other than nmap sends from the scanner.

    ``addresses`` are addresses, CIDRs or ``a.b.c.x-y`` ranges. Runs exactly the checks a
    scan runs: each must be an ASCII address, lie inside the scope (the playbook's networks,
    see :func:`allowed_networks`), and unless ``force``, be routed into the lab from the
    scanner's place (``local``/``netns:``). Raises ScopeError/UsageError (exit 2) and
    returns the scanner spec used (``local``, ``netns:NAME``, ``ssh://...``).
    """
    parsed = [parse_target(a) for a in addresses]
    allowed = allowed_networks(loaded)
    check_scope(parsed, allowed)
    sc = resolve_scanner(loaded, scanner)
    if sc.checks_routes and not force:
        check_routes(parsed, allowed, sc.route_netns or None)
    return sc.spec


def plan_scan(loaded: LoadedPlaybook | None, targets: Iterable[str], *,
              profile: str | ScanProfile | None = None, scanner: str | Scanner | None = None,
              excludes: Iterable[str] = (), scope: Iterable[str] = (),
              force: bool = False, public_ranges: Iterable[str] = (),
              timeout: int | None = None,
              ) -> tuple[ScanProfile, list[Target], list[str], Scanner]:
    """Everything run_scan decides before nmap starts; raises ScopeError/UsageError.

    ``timeout`` (seconds, 5-86400) replaces the profile's.
    """
    pb = loaded.model if loaded is not None else None
    if isinstance(profile, ScanProfile):
        prof = revalidate(profile)
    else:
        name = profile or (pb.scanner.profile if pb is not None and pb.scanner else "smart")
        prof = load_profile(name)
    if timeout is not None:
        if isinstance(timeout, bool) or not 5 <= timeout <= 86400:
            raise UsageError(f"--timeout {timeout} is outside 5-86400 seconds")
        prof = prof.model_copy(update={"timeout": int(timeout)})
    parsed = [parse_target(t) for t in targets]
    excl = [parse_exclude(e) for e in excludes]
    if prof.playbook_excludes and pb is not None and pb.scanner is not None:
        excl += [str(a) for a in pb.scanner.exclude if str(a) not in excl]
    allowed = allowed_networks(loaded, scope, public_ranges)
    check_scope(parsed, allowed)
    families = {t.first.version for t in parsed}
    if len(families) > 1:
        raise UsageError("IPv4 and IPv6 targets cannot be mixed in one scan (nmap scans one "
                         "address family per run)", hint="run one scan per family")
    size = sum(t.size for t in parsed)
    if size > prof.max_addresses:
        raise UsageError(f"the targets cover {size} addresses; profile {prof.name!r} allows "
                         f"at most {prof.max_addresses}",
                         hint="scan a smaller range or use a profile with a higher "
                              "max_addresses")
    sc = resolve_scanner(loaded, scanner, prof.stats_every)
    if sc.checks_routes and not force:
        check_routes(parsed, allowed, sc.route_netns or None)
    return prof, parsed, excl, sc


def run_scan(loaded: LoadedPlaybook | None, targets: Iterable[str],
             profile: str | ScanProfile | None = None,
             scanner: str | Scanner | None = None, excludes: Iterable[str] = (), save: bool = True,
             progress: ProgressFn | None = None, *, scope: Iterable[str] = (),
             force: bool = False, baseline: str | None = None,
             xml_out: str | None = None, public_ranges: Iterable[str] = (),
             timeout: int | None = None) -> ScanResult:
    """Scan ``targets`` with a profile; save to history unless ``save=False``.

    ``loaded`` is a LoadedPlaybook (or None: then only ``scope`` CIDRs may be scanned).
    ``scanner``: ``local``, ``netns:NAME``, ``ssh://user@host[:port]`` (default: the
    playbook's). ``public_ranges``: global CIDRs the user owns (``--i-own-this-public-range``).
    Refuses bad profiles, out-of-scope or badly routed targets before nmap starts.
    """
    from labctl.scans.passes import execute

    targets = list(targets)
    prof, parsed, excl, sc = plan_scan(loaded, targets, profile=profile, scanner=scanner,
                                       excludes=excludes, scope=scope, force=force,
                                       public_ranges=public_ranges, timeout=timeout)
    base = load_baseline(baseline) if baseline else None
    started = time.time()
    v6 = any(t.first.version == 6 for t in parsed)
    runs, hosts = execute(prof, sc, [t.text for t in parsed], excl, progress,
                          extra_args=["-6"] if v6 and "-6" not in prof.all_args() else None)
    lab = loaded.model.lab if loaded is not None else ADHOC_LAB
    result = ScanResult(lab=lab, scanner=sc.spec, profile=prof.name,
                        targets=[t.text for t in parsed], excludes=excl, started=started,
                        ended=time.time(), hosts=hosts, runs=runs)
    if save:
        result.xml_paths = hist.save_xml(runs, started)
        hist.save(result)
    if xml_out:
        write_xml_copy(result, xml_out)
    if base is not None:
        result.baseline = base.name
        result.deviations = baseline_deviations(result, base)
    return result


def write_xml_copy(result: ScanResult, dest: str) -> list[str]:
    """``--xml-out FILE``: the last pass's XML (for smart, earlier passes get .passN)."""
    out = []
    p = Path(dest)
    for i, run in enumerate(result.runs):
        target = p if i == len(result.runs) - 1 else p.with_name(f"{p.name}.pass{i + 1}")
        try:
            target.write_text(run.xml, encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {target}: {e.strerror}") from None
        out.append(str(target))
    return out


def history(lab: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    return hist.list_scans(lab, limit)


def diff(old: int | None = None, new: int | None = None,
         lab: str | None = None) -> dict[str, Any]:
    """Compare two saved scans (default: the last two of the same targets)."""
    if old is None and new is None:
        old, new = hist.last_two(lab)
    elif new is None:
        latest = hist.list_scans(None, 1)
        if not latest:
            raise UsageError("the scan history is empty")
        new = int(latest[0]["id"])
    if old is None or new is None:
        raise UsageError("a diff needs the older scan's id too",
                         hint="labctl scan diff OLD NEW")
    a, b = hist.load(old), hist.load(new)
    changes = diff_scans(a, b)
    return {"old": a.id, "new": b.id, "old_targets": a.targets, "new_targets": b.targets,
            "changes": changes, "changed": bool(changes)}


def baseline_check(result_or_id: ScanResult | int, baseline: str) -> list[dict[str, Any]]:
    res = hist.load(result_or_id) if isinstance(result_or_id, int) else result_or_id
    return baseline_deviations(res, load_baseline(baseline))


def nmap_available() -> bool:
    return shutil.which("nmap") is not None
