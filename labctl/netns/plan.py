"""Diff the twin's desired topology against facts into a Plan of command steps.

A step is ``Step(kind="command", script=<the operations rendered, for display>,
params={"ops": [<labctl.netns.ops operations>]})``; serialised, each operation is plain data
(``Step.to_dict``). The plan also carries its blockers: namespaces of this lab that exist
without labctl's ownership marker, and (when it builds anything) a playbook subnet that
collides with a route of the machine.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from labctl.core.model import Action, Blocker, Change, Plan, Step, StepKind
from labctl.netns import ops as nops
from labctl.netns.facts import NsFacts, TwinFacts
from labctl.netns.topology_model import ETC_NETNS, Bridge, Mirror, NftTable, Route, Topology, Veth

PROVIDER = "netns"
BUILDING = (Action.CREATE, Action.UPDATE, Action.REPLACE)


def _step(resource: str, action: Action, ops: list[nops.Op], name: str,
          description: str = "") -> Step:
    return Step(resource=resource, action=action, script=nops.render(ops), params={"ops": ops},
                kind=StepKind.COMMAND, name=name, description=description)


def _change(resource: str, action: Action, reason: str, ops: list[nops.Op], name: str,
            before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> Change:
    if not ops:
        return Change(resource=resource, action=Action.NOOP, reason=reason, before=before,
                      after=after)
    return Change(resource=resource, action=action, reason=reason, before=before, after=after,
                  steps=(_step(resource, action, ops, name, reason),))


def _is_up(link: dict[str, Any] | None) -> bool:
    return "UP" in (link or {}).get("flags", [])


def _kind(link: dict[str, Any] | None) -> str | None:
    kind: str | None = ((link or {}).get("linkinfo") or {}).get("info_kind")
    return kind


def _delete_namespace(ns: str) -> list[nops.Op]:
    return [nops.KillNetns(ns), nops.Run(("ip", "netns", "del", ns)), nops.Unresolv(ns)]


class _UpPlanner:
    """``plan_up``, one method per kind of resource, in the order they are applied."""

    def __init__(self, topo: Topology, facts: TwinFacts) -> None:
        self.topo = topo
        self.facts = facts
        self.plan = Plan(provider=PROVIDER, lab=topo.lab, warnings=list(topo.warnings))
        self.existing = set(facts.ns) if not facts.empty else set()

    def add(self, resource: str, action: Action, reason: str, ops: list[nops.Op], name: str,
            before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None:
        self.plan.changes.append(_change(resource, action, reason, ops, name, before, after))

    def nsf(self, name: str) -> NsFacts:
        return self.facts.ns.get(name) or NsFacts(name=name)

    # -- the ownership marker first, so a crash after this point is still ours to clean up
    def marker(self) -> None:
        topo, facts = self.topo, self.facts
        recorded = set((facts.marker or {}).get("namespaces", []))
        want_ns = set(topo.namespaces)
        res = f"netns.lab:{topo.lab}"
        if facts.marker is None or not want_ns <= recorded:
            self.add(res, Action.CREATE if facts.marker is None else Action.UPDATE,
                     "ownership marker in the lab state directory",
                     [nops.Mark(topo.lab, tuple(sorted(want_ns | recorded)))], "lab/mark")
        else:
            self.add(res, Action.NOOP, "owned", [], "lab/mark")
        # stale namespaces (recorded by an earlier up, gone from the playbook)
        for ns in sorted(recorded - want_ns):
            if ns in facts.all_namespaces:
                self.add(f"netns.namespace:{ns}", Action.DELETE, "no longer in the playbook",
                         _delete_namespace(ns), "namespace/delete")

    # -- namespaces (+ their sysctls and resolver)
    def namespaces(self) -> None:
        for ns in self.topo.namespaces:
            if ns in self.existing:
                self._namespace_update(ns)
            else:
                self._namespace_create(ns)

    def _namespace_create(self, ns: str) -> None:
        topo = self.topo
        ops: list[nops.Op] = [nops.Run(("ip", "netns", "add", ns))]
        if topo.manage_resolv:
            ops.append(nops.Resolv(ns, topo.lab, topo.resolv))
        ops.append(nops.ip(ns, "link", "set", "lo", "up"))
        ops += [nops.Sysctl(ns, k, v) for k, v in topo.sysctls.get(ns, {}).items()]
        self.add(f"netns.namespace:{ns}", Action.CREATE, "missing", ops, "namespace/create")

    def _namespace_update(self, ns: str) -> None:
        topo = self.topo
        f = self.nsf(ns)
        sysctls = topo.sysctls.get(ns, {})
        ops: list[nops.Op] = []
        lo_up = _is_up(f.links.get("lo"))
        if not lo_up:
            ops.append(nops.ip(ns, "link", "set", "lo", "up"))
        wrong = {k: v for k, v in sysctls.items() if k in f.sysctls and f.sysctls[k] != v}
        ops += [nops.Sysctl(ns, k, v) for k, v in wrong.items()]
        why = [f"sysctl {k}={f.sysctls.get(k)} (want {v})" for k, v in wrong.items()]
        if topo.manage_resolv and f.resolv != topo.resolv:
            ops.append(nops.Resolv(ns, topo.lab, topo.resolv))
            why.append(f"{ETC_NETNS}/{ns}/resolv.conf "
                       + ("missing" if f.resolv is None else "differs"))
        if not lo_up:
            why.insert(0, "lo down")
        self.add(f"netns.namespace:{ns}", Action.UPDATE, ", ".join(why), ops,
                 "namespace/update")

    # -- bridges (vSwitches)
    def bridges(self) -> None:
        for br in self.topo.bridges:
            self._bridge(br)

    def _bridge(self, br: Bridge) -> None:
        res = f"netns.bridge:{br.switch}"
        link = self.nsf(br.ns).links.get(br.name)
        seg = {"bridge": br.name, "netns": br.ns, "vlan": br.vlan, "subnet": br.subnet}
        ops: list[nops.Op] = []
        if link is None or _kind(link) != "bridge":
            if link is not None:
                ops.append(nops.ip(br.ns, "link", "del", br.name))
            ops += [nops.ip(br.ns, "link", "add", br.name, "type", "bridge", "stp_state", "0"),
                    nops.ip(br.ns, "link", "set", br.name, "up")]
            ops += [nops.ip(br.ns, "addr", "add", a, "dev", br.name) for a in br.addrs]
            self.add(res, Action.CREATE if link is None else Action.REPLACE,
                     "missing" if link is None else "not a bridge", ops, "bridge/create",
                     after=seg)
            return
        why: list[str] = []
        if not _is_up(link):
            ops.append(nops.ip(br.ns, "link", "set", br.name, "up"))
            why.append("down")
        have = self.nsf(br.ns).addrs(br.name)
        for a in br.addrs:
            if a not in have:
                ops.append(nops.ip(br.ns, "addr", "add", a, "dev", br.name))
                why.append(f"address {a} missing")
        self.add(res, Action.UPDATE, ", ".join(why), ops, "bridge/update", after=seg)

    # -- veth pairs
    def veths(self) -> None:
        for v in self.topo.veths:
            self._veth(v)

    def _veth(self, v: Veth) -> None:
        res = f"netns.veth:{v.key}"
        a = self.nsf(v.a_ns).links.get(v.a_name)
        b = self.nsf(v.b_ns).links.get(v.b_name)
        after = {"a": v.key, "b": f"{v.b_ns}/{v.b_name}", "master": v.a_master, "role": v.role}
        if a is None or b is None or _kind(a) != "veth" or _kind(b) != "veth":
            self._veth_create(v, a, b, res, after)
            return
        ops: list[nops.Op] = []
        why: list[str] = []
        downed: set[tuple[str, str]] = set()
        if v.b_mac and b.get("address", "").lower() != v.b_mac:
            downed.add((v.b_ns, v.b_name))
            ops += [nops.ip(v.b_ns, "link", "set", v.b_name, "down"),
                    nops.ip(v.b_ns, "link", "set", v.b_name, "address", v.b_mac)]
            why.append(f"MAC {b.get('address')} (want {v.b_mac})")
        if a.get("master") != v.a_master:
            ops.append(nops.ip(v.a_ns, "link", "set", v.a_name,
                            *(["master", v.a_master] if v.a_master else ["nomaster"])))
            why.append(f"master {a.get('master')} (want {v.a_master})")
        if v.a_master:
            slave = (a.get("linkinfo") or {}).get("info_slave_data") or {}
            isolated = bool(slave.get("isolated", False)) if a.get("master") == v.a_master \
                else False
            if isolated != v.a_isolated:
                ops.append(nops.ip(v.a_ns, "link", "set", "dev", v.a_name, "type", "bridge_slave",
                                "isolated", "on" if v.a_isolated else "off"))
                why.append(f"isolated {'off' if v.a_isolated else 'on'} "
                           f"(AP isolation {'on' if v.a_isolated else 'off'})")
        for ns, name, want in ((v.a_ns, v.a_name, v.a_addrs), (v.b_ns, v.b_name, v.b_addrs)):
            have = self.nsf(ns).addrs(name)
            for x in want:
                if x not in have:
                    ops.append(nops.ip(ns, "addr", "add", x, "dev", name))
                    why.append(f"{ns}/{name}: address {x} missing")
        for ns, name, link in ((v.a_ns, v.a_name, a), (v.b_ns, v.b_name, b)):
            if not _is_up(link) or (ns, name) in downed:
                ops.append(nops.ip(ns, "link", "set", name, "up"))
                if not _is_up(link):
                    why.append(f"{ns}/{name} down")
        self.add(res, Action.UPDATE, ", ".join(why), ops, "veth/update", after=after)

    def _veth_create(self, v: Veth, a: dict[str, Any] | None, b: dict[str, Any] | None,
                     res: str, after: dict[str, Any]) -> None:
        ops: list[nops.Op] = []
        if a is not None:
            ops.append(nops.ip(v.a_ns, "link", "del", v.a_name))
        if b is not None and v.b_ns in self.existing:
            ops.append(nops.ip(v.b_ns, "link", "del", v.b_name))
        peer = ["peer", "name", v.b_name, "netns", v.b_ns]
        if v.b_mac:
            peer += ["address", v.b_mac]
        ops.append(nops.Run(("ip", "link", "add", v.a_name, "netns", v.a_ns, "type", "veth",
                          *peer)))
        if v.a_master:
            ops.append(nops.ip(v.a_ns, "link", "set", v.a_name, "master", v.a_master))
            if v.a_isolated:
                ops.append(nops.ip(v.a_ns, "link", "set", "dev", v.a_name, "type",
                                "bridge_slave", "isolated", "on"))
        ops += [nops.ip(v.a_ns, "addr", "add", x, "dev", v.a_name) for x in v.a_addrs]
        ops += [nops.ip(v.b_ns, "addr", "add", x, "dev", v.b_name) for x in v.b_addrs]
        ops += [nops.ip(v.a_ns, "link", "set", v.a_name, "up"),
                nops.ip(v.b_ns, "link", "set", v.b_name, "up")]
        fresh = a is None and b is None
        self.add(res, Action.CREATE if fresh else Action.REPLACE,
                 "missing" if fresh else "half present", ops, "veth/create", after=after)

    # -- extra addresses (WAN service addresses on lo)
    def addrs(self) -> None:
        for x in self.topo.addrs:
            have = self.nsf(x.ns).addrs(x.dev)
            ops: list[nops.Op] = [] if x.cidr in have else [
                nops.ip(x.ns, "addr", "add", x.cidr, "dev", x.dev)]
            self.add(f"netns.addr:{x.ns}/{x.dev}/{x.cidr}", Action.CREATE,
                     "missing" if ops else "", ops, "addr/add")

    # -- routes
    def routes(self) -> None:
        for r in self.topo.routes:
            self._route(r)

    def _route(self, r: Route) -> None:
        have = self.nsf(r.ns).default_via() if r.dest == "default" else None
        ops: list[nops.Op] = [] if have == r.via else [
            nops.ip(r.ns, "route", "replace", r.dest, "via", r.via)]
        reason = "" if not ops else (f"via {have} (want {r.via})" if have else "missing")
        self.add(f"netns.route:{r.ns}/{r.dest}",
                 Action.CREATE if have is None else Action.UPDATE, reason, ops,
                 "route/replace", after={"via": r.via})

    # -- port mirroring (tc ingress + u32 match-all + mirred egress mirror)
    def mirrors(self) -> None:
        for m in self.topo.mirrors:
            self._mirror(m)

    def _mirror(self, m: Mirror) -> None:
        f = self.nsf(m.ns)
        ops: list[nops.Op] = []
        why: list[str] = []
        if "ingress" not in f.qdiscs.get(m.port, []):
            ops.append(nops.Run(("tc", "-n", m.ns, "qdisc", "add", "dev", m.port, "ingress")))
            why.append("no ingress qdisc")
        targets = f.mirror_targets(m.port)
        if targets != [m.target]:
            if f.filters.get(m.port):
                ops.append(nops.Run(("tc", "-n", m.ns, "filter", "del", "dev", m.port,
                                  "parent", "ffff:")))
            ops.append(nops.Run(("tc", "-n", m.ns, "filter", "add", "dev", m.port,
                              "parent", "ffff:", "protocol", "all", "pref", "1", "u32",
                              "match", "u32", "0", "0", "action", "mirred", "egress",
                              "mirror", "dev", m.target)))
            why.append("mirror filter missing" if not targets
                       else f"mirrors to {targets} (want {m.target})")
        self.add(f"netns.mirror:{m.switch}/{m.port}", Action.CREATE if ops else Action.NOOP,
                 ", ".join(why), ops, "mirror/create", after={"to": m.target})

    # -- nftables (NetNat in the host, masquerade to the WAN in the router)
    def nft(self) -> None:
        for t in self.topo.nft:
            self._nft(t)

    def _nft(self, t: NftTable) -> None:
        comments = self.nsf(t.ns).nft.get(f"{t.family} {t.name}")
        ok = comments is not None and comments == {t.fingerprint}
        ops: list[nops.Op] = [] if ok else [nops.Run(("nft", "-f", "-"), netns=t.ns,
                                               input=t.script())]
        self.add(f"netns.nft:{t.ns}/{t.family} {t.name}",
                 Action.CREATE if comments is None else Action.UPDATE,
                 "" if ok else ("missing" if comments is None else "rules differ"),
                 ops, "nft/apply")

    # -- supervised processes
    def processes(self) -> None:
        facts = self.facts
        wanted = {p.name for p in self.topo.processes}
        for name in sorted(facts.processes):
            if name not in wanted:
                self.add(f"netns.process:{name}", Action.DELETE, "no longer in the playbook",
                         [nops.Stop(name)], "process/stop")
        for p in self.topo.processes:
            res = f"netns.process:{p.name}"
            info = facts.processes.get(p.name)
            spawn = nops.Spawn(p.name, p.ns, tuple(p.argv), p.ready)
            if info is None:
                self.add(res, Action.CREATE, "not started", [spawn], "process/start")
            elif not info.alive:
                self.add(res, Action.UPDATE, f"exited (pid {info.pid}); restart",
                         [nops.Stop(p.name), spawn], "process/restart")
            elif tuple(info.argv) != tuple(p.argv) or info.netns != p.ns:
                self.add(res, Action.UPDATE, "command line changed", [nops.Stop(p.name), spawn],
                         "process/restart")
            else:
                self.add(res, Action.NOOP, f"running (pid {info.pid})", [], "process/start")

    # -- the verdict
    def blockers(self) -> None:
        plan = self.plan
        if plan.empty:
            return
        ownership = unowned_namespaces(self.topo, self.facts)
        if ownership is not None:
            plan.blockers.append(ownership)
        if any(c.action in BUILDING for c in plan.pending):
            plan.blockers.extend(collisions(self.topo, self.facts.root_routes)[:1])


def plan_up(topo: Topology, facts: TwinFacts, state_dir: str) -> Plan:
    p = _UpPlanner(topo, facts)
    p.marker()
    p.namespaces()
    p.bridges()
    p.veths()
    p.addrs()
    p.routes()
    p.mirrors()
    p.nft()
    p.processes()
    p.blockers()
    return p.plan


def lab_namespaces(topo: Topology, facts: TwinFacts) -> list[str]:
    """Namespaces of this lab that exist now: recorded in the marker or in the playbook."""
    recorded = list((facts.marker or {}).get("namespaces", []))
    names = list(dict.fromkeys([*topo.namespaces, *recorded]))
    return [n for n in names if n in facts.all_namespaces]


def unowned_namespaces(topo: Topology, facts: TwinFacts) -> Blocker | None:
    """Namespaces of this lab's names exist but labctl has no record of creating them."""
    present = lab_namespaces(topo, facts)
    if facts.marker is not None or not present:
        return None
    return Blocker(
        f"namespaces of lab {topo.lab!r} already exist but labctl has no record of "
        f"creating them: {', '.join(present)}",
        "another tool or an earlier state directory left them; remove them "
        "(and the processes inside) with: "
        + "; ".join(f"ip netns pids {n} | xargs -r kill; ip netns del {n}" for n in present)
        + " (or use another lab: name), then run labctl again")


def collisions(topo: Topology, root_routes: list[dict[str, Any]]) -> list[Blocker]:
    """A playbook subnet overlapping a route of the machine (root namespace), one blocker
    per overlap."""
    out: list[Blocker] = []
    for r in root_routes:
        dst = r.get("dst")
        if not dst or dst == "default":
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version != 4 or net.prefixlen == 0:
            continue
        for mine in topo.networks:
            if mine.overlaps(net):
                out.append(Blocker(
                    f"playbook subnet {mine} collides with the machine's route {dst}"
                    + (f" (dev {r['dev']})" if r.get("dev") else ""),
                    "choose other subnets in the twin playbook so lab traffic cannot be "
                    "confused with the machine's real networks"))
    return out


def plan_down(topo: Topology, facts: TwinFacts) -> Plan:
    plan = Plan(provider=PROVIDER, lab=topo.lab)
    for name in sorted(facts.processes):
        plan.changes.append(_change(f"netns.process:{name}", Action.DELETE,
                                    "supervised process", [nops.Stop(name)], "process/stop"))
    present = lab_namespaces(topo, facts)
    host = topo.host_ns
    # leaves first, the host (bridges, NetNat) last
    for ns in sorted(present, key=lambda n: (n == host, n == topo.router_ns, n)):
        plan.changes.append(_change(f"netns.namespace:{ns}", Action.DELETE, "lab namespace",
                                    _delete_namespace(ns), "namespace/delete"))
    # resolver files of namespaces that are already gone (deleted by hand, or a crash)
    recorded = list((facts.marker or {}).get("namespaces", []))
    for ns in dict.fromkeys([*topo.namespaces, *recorded]):
        if ns not in present and ns in facts.etc_netns:
            plan.changes.append(_change(f"netns.resolv:{ns}", Action.DELETE,
                                        "resolver file of a namespace that is gone",
                                        [nops.Unresolv(ns)], "resolv/delete"))
    if facts.marker is not None or facts.processes:
        plan.changes.append(_change(f"netns.lab:{topo.lab}", Action.DELETE, "ownership marker",
                                    [nops.Forget(topo.lab)], "lab/forget"))
    if not plan.empty:
        ownership = unowned_namespaces(topo, facts)
        if ownership is not None:
            plan.blockers.append(ownership)
    return plan
