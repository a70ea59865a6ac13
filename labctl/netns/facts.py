"""Read the twin's actual state: namespaces, links, addresses, routes, tc, nftables,
sysctls, supervised processes and the lab's ownership marker.

One reader, used by plan, status and down. Everything comes from JSON output
(``ip -j``, ``tc -j``, ``nft -j``) or /proc; sysctls are read by entering the namespace with
setns for this thread (no subprocess).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.netns import supervisor
from labctl.netns.ops import MARKER
from labctl.netns.topology_model import ETC_NETNS, Topology
from labctl.transport import proc
from labctl.transport.netns import netns_context

__all__ = ["MARKER", "NsFacts", "TwinFacts", "empty", "list_namespaces", "read",
           "read_marker", "read_sysctls"]


@dataclass
class NsFacts:
    name: str
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: list[dict[str, Any]] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    qdiscs: dict[str, list[str]] = field(default_factory=dict)  # dev -> qdisc kinds
    filters: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # dev -> ingress
    nft: dict[str, set[str]] = field(default_factory=dict)  # "family name" -> rule comments
    resolv: str | None = None  # /etc/netns/<ns>/resolv.conf

    def addrs(self, dev: str) -> set[str]:
        link = self.links.get(dev) or {}
        return {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                if a.get("family") == "inet"}

    def default_via(self) -> str | None:
        for r in self.routes:
            if r.get("dst") == "default":
                return r.get("gateway")
        return None

    def mirror_targets(self, dev: str) -> list[str]:
        out = []
        for f in self.filters.get(dev, []):
            for a in (f.get("options") or {}).get("actions", []):
                if a.get("kind") == "mirred" and a.get("mirred_action") == "mirror" \
                        and a.get("direction") == "egress":
                    out.append(a.get("to_dev"))
        return out


@dataclass
class TwinFacts:
    lab: str
    all_namespaces: set[str] = field(default_factory=set)
    ns: dict[str, NsFacts] = field(default_factory=dict)
    marker: dict[str, Any] | None = None
    processes: dict[str, supervisor.ProcInfo] = field(default_factory=dict)
    root_routes: list[dict[str, Any]] = field(default_factory=list)
    etc_netns: set[str] = field(default_factory=set)  # lab names with our /etc/netns file
    empty: bool = False

    def owned_namespaces(self) -> list[str]:
        recorded = list((self.marker or {}).get("namespaces", []))
        return recorded

    def to_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "marker": self.marker,
            "namespaces": sorted(self.ns),
            "links": {n: sorted(f.links) for n, f in self.ns.items()},
            "processes": {k: v.to_dict() for k, v in self.processes.items()},
        }


def _json(argv: list[str], netns: str | None = None) -> Any:
    cp = proc.run(argv, netns=netns, check=False)
    if cp.returncode != 0 or not cp.stdout.strip():
        return None
    try:
        return json.loads(cp.stdout)
    except ValueError:
        return None


def list_namespaces() -> set[str]:
    # /run/netns holds one bind mount per named namespace; reading it needs no subprocess
    try:
        return {n for n in os.listdir("/run/netns") if not n.startswith(".")}
    except FileNotFoundError:
        return set()


def read_sysctls(ns: str, keys: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with netns_context(ns):
        for k in keys:
            try:
                with open("/proc/sys/" + k.replace(".", "/"), encoding="ascii") as fh:
                    out[k] = fh.read().strip()
            except OSError:
                pass
    return out


def _read_ns(topo: Topology, name: str) -> NsFacts:
    f = NsFacts(name=name)
    links = _json(["ip", "-n", name, "-d", "-j", "addr", "show"]) or []
    f.links = {ln["ifname"]: ln for ln in links if "ifname" in ln}
    f.routes = _json(["ip", "-n", name, "-j", "route", "show"]) or []
    try:
        f.resolv = (Path(ETC_NETNS) / name / "resolv.conf").read_text(encoding="utf-8")
    except OSError:
        f.resolv = None
    want = topo.sysctls.get(name, {})
    if want:
        f.sysctls = read_sysctls(name, list(want))
    ports = {m.port for m in topo.mirrors if m.ns == name and m.port in f.links}
    if ports:
        for q in _json(["tc", "-n", name, "-j", "qdisc", "show"]) or []:
            f.qdiscs.setdefault(q.get("dev", ""), []).append(q.get("kind", ""))
        for port in sorted(ports):
            f.filters[port] = _json(["tc", "-n", name, "-j", "filter", "show", "dev", port,
                                     "ingress"]) or []
    if any(t.ns == name for t in topo.nft):
        rs = _json(["nft", "-j", "list", "ruleset"], netns=name) or {}
        for item in rs.get("nftables", []):
            if "table" in item:
                t = item["table"]
                f.nft.setdefault(f"{t['family']} {t['name']}", set())
            elif "rule" in item:
                r = item["rule"]
                key = f"{r['family']} {r['table']}"
                if r.get("comment"):
                    f.nft.setdefault(key, set()).add(r["comment"])
    return f


def read_marker(state_dir: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((state_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def read(topo: Topology, state_dir: Path) -> TwinFacts:
    facts = TwinFacts(lab=topo.lab)
    facts.all_namespaces = list_namespaces()
    facts.marker = read_marker(state_dir)
    wanted = [n for n in topo.namespaces if n in facts.all_namespaces]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for nf in pool.map(lambda n: _read_ns(topo, n), wanted):
            facts.ns[nf.name] = nf
    facts.processes = supervisor.read_all(state_dir)
    facts.root_routes = _json(["ip", "-j", "route", "show"]) or []
    candidates = set(topo.namespaces) | set((facts.marker or {}).get("namespaces", []))
    for n in candidates:
        try:
            head = (Path(ETC_NETNS) / n / "resolv.conf").read_text(encoding="utf-8")[:20]
        except OSError:
            continue
        if head.startswith("# labctl twin"):
            facts.etc_netns.add(n)
    return facts


def empty(topo: Topology) -> TwinFacts:
    return TwinFacts(lab=topo.lab, empty=True)
