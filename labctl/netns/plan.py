"""Diff the twin's desired topology against facts into a Plan of command steps.

A step is ``Step(kind="command", script=<shell-quoted commands, for display>,
params={"ops": [...]})``. An op is plain data: ``{"argv": [...], "netns": NS?, "input": TEXT?}``
runs a program (no shell); the few things that are not one program are named ops:
``mark``/``forget`` (the lab's ownership marker), ``sysctl``, ``spawn``/``stop`` (supervised
processes) and ``kill-netns`` (every process left in a namespace).
"""

from __future__ import annotations

import shlex
from typing import Any

from labctl.core.model import Change, Plan, Step
from labctl.netns.facts import NsFacts, TwinFacts
from labctl.netns.topology import ETC_NETNS, Topology

PROVIDER = "netns"


def _script(ops: list[dict[str, Any]]) -> str:
    lines = []
    for op in ops:
        if "op" not in op:
            argv = list(op["argv"])
            if op.get("netns"):
                argv = ["ip", "netns", "exec", op["netns"], *argv]
            line = shlex.join(argv)
            if op.get("input"):
                line += " <<'EOF'\n" + op["input"].rstrip("\n") + "\nEOF"
            lines.append(line)
        else:
            kind = op["op"]
            if kind == "sysctl":
                lines.append(shlex.join(["ip", "netns", "exec", op["netns"], "sysctl", "-qw",
                                         f"{op['key']}={op['value']}"]))
            elif kind == "spawn":
                lines.append(f"# labctl: start supervised process {op['name']} in "
                             f"{op['netns']}: " + shlex.join(op["argv"]))
            elif kind == "stop":
                lines.append(f"# labctl: stop supervised process {op['name']}")
            elif kind == "resolv":
                servers = [ln.split()[1] for ln in op["text"].splitlines()
                           if ln.startswith("nameserver ")]
                lines.append(f"# labctl: write {ETC_NETNS}/{op['netns']}/resolv.conf "
                             f"(nameserver {', '.join(servers)}: DNS stays inside the lab)")
            elif kind == "unresolv":
                folder = f"{ETC_NETNS}/{op['netns']}"
                lines.append(shlex.join(["rm", "-f", f"{folder}/resolv.conf"]) + " && "
                             + shlex.join(["rmdir", folder]))
            elif kind == "kill-netns":
                lines.append(f"# labctl: kill every process in namespace {op['netns']}")
            elif kind == "mark":
                lines.append(f"# labctl: record ownership of lab {op['lab']} "
                             f"({len(op['namespaces'])} namespaces)")
            elif kind == "forget":
                lines.append(f"# labctl: forget lab {op['lab']} (ownership marker, pid files)")
            else:  # pragma: no cover - a programming error
                raise ValueError(f"unknown op {kind!r}")
    return "\n".join(lines)


def _step(resource: str, action: str, ops: list[dict[str, Any]], name: str,
          description: str = "") -> Step:
    return Step(resource=resource, action=action, script=_script(ops), params={"ops": ops},
                kind="command", name=name, description=description)


def _change(resource: str, action: str, reason: str, ops: list[dict[str, Any]], name: str,
            before: dict | None = None, after: dict | None = None) -> Change:
    if not ops:
        return Change(resource=resource, action="noop", reason=reason, before=before,
                      after=after)
    return Change(resource=resource, action=action, reason=reason, before=before, after=after,
                  steps=(_step(resource, action, ops, name, reason),))


def _ip(ns: str, *args: str) -> dict[str, Any]:
    return {"argv": ["ip", "-n", ns, *args]}


def _is_up(link: dict[str, Any]) -> bool:
    return "UP" in link.get("flags", [])


def _kind(link: dict[str, Any]) -> str | None:
    return (link.get("linkinfo") or {}).get("info_kind")


def plan_up(topo: Topology, facts: TwinFacts, state_dir: str) -> Plan:
    plan = Plan(provider=PROVIDER, lab=topo.lab, warnings=list(topo.warnings))
    ch = plan.changes
    existing = set(facts.ns) if not facts.empty else set()

    def nsf(name: str) -> NsFacts:
        return facts.ns.get(name) or NsFacts(name=name)

    # -- ownership marker first, so a crash after this point is still ours to clean up
    recorded = set((facts.marker or {}).get("namespaces", []))
    want_ns = set(topo.namespaces)
    if facts.marker is None or not want_ns <= recorded:
        ch.append(_change(f"netns.lab:{topo.lab}", "create" if facts.marker is None else "update",
                          "ownership marker in the lab state directory",
                          [{"op": "mark", "lab": topo.lab,
                            "namespaces": sorted(want_ns | recorded)}], "lab/mark"))
    else:
        ch.append(_change(f"netns.lab:{topo.lab}", "noop", "owned", [], "lab/mark"))

    # -- stale namespaces (recorded by an earlier up, gone from the playbook)
    for ns in sorted(recorded - want_ns):
        if ns in facts.all_namespaces:
            ch.append(_change(f"netns.namespace:{ns}", "delete", "no longer in the playbook",
                              [{"op": "kill-netns", "netns": ns},
                               {"argv": ["ip", "netns", "del", ns]},
                               {"op": "unresolv", "netns": ns}], "namespace/delete"))

    # -- namespaces (+ their sysctls)
    for ns in topo.namespaces:
        sysctls = topo.sysctls.get(ns, {})
        if ns not in existing:
            ops: list[dict[str, Any]] = [{"argv": ["ip", "netns", "add", ns]}]
            if topo.manage_resolv:
                ops.append({"op": "resolv", "netns": ns, "lab": topo.lab,
                            "text": topo.resolv})
            ops.append(_ip(ns, "link", "set", "lo", "up"))
            ops += [{"op": "sysctl", "netns": ns, "key": k, "value": v}
                    for k, v in sysctls.items()]
            ch.append(_change(f"netns.namespace:{ns}", "create", "missing", ops,
                              "namespace/create"))
            continue
        f = nsf(ns)
        ops = []
        if not _is_up(f.links.get("lo", {})):
            ops.append(_ip(ns, "link", "set", "lo", "up"))
        wrong = {k: v for k, v in sysctls.items() if k in f.sysctls and f.sysctls[k] != v}
        ops += [{"op": "sysctl", "netns": ns, "key": k, "value": v} for k, v in wrong.items()]
        why = [f"sysctl {k}={f.sysctls.get(k)} (want {v})" for k, v in wrong.items()]
        if topo.manage_resolv and f.resolv != topo.resolv:
            ops.append({"op": "resolv", "netns": ns, "lab": topo.lab, "text": topo.resolv})
            why.append(f"{ETC_NETNS}/{ns}/resolv.conf " + ("missing" if f.resolv is None
                                                             else "differs"))
        if not _is_up(f.links.get("lo", {})):
            why.insert(0, "lo down")
        ch.append(_change(f"netns.namespace:{ns}", "update", ", ".join(why), ops,
                          "namespace/update"))

    # -- bridges (vSwitches)
    for br in topo.bridges:
        res = f"netns.bridge:{br.switch}"
        link = nsf(br.ns).links.get(br.name)
        seg = {"bridge": br.name, "netns": br.ns, "vlan": br.vlan, "subnet": br.subnet}
        if link is None or _kind(link) != "bridge":
            ops = []
            if link is not None:
                ops.append(_ip(br.ns, "link", "del", br.name))
            ops += [_ip(br.ns, "link", "add", br.name, "type", "bridge", "stp_state", "0"),
                    _ip(br.ns, "link", "set", br.name, "up")]
            ops += [_ip(br.ns, "addr", "add", a, "dev", br.name) for a in br.addrs]
            ch.append(_change(res, "create" if link is None else "replace",
                              "missing" if link is None else "not a bridge", ops,
                              "bridge/create", after=seg))
            continue
        ops, why = [], []
        if not _is_up(link):
            ops.append(_ip(br.ns, "link", "set", br.name, "up"))
            why.append("down")
        have = nsf(br.ns).addrs(br.name)
        for a in br.addrs:
            if a not in have:
                ops.append(_ip(br.ns, "addr", "add", a, "dev", br.name))
                why.append(f"address {a} missing")
        ch.append(_change(res, "update", ", ".join(why), ops, "bridge/update", after=seg))

    # -- veth pairs
    for v in topo.veths:
        res = f"netns.veth:{v.key}"
        a = nsf(v.a_ns).links.get(v.a_name)
        b = nsf(v.b_ns).links.get(v.b_name)
        after = {"a": v.key, "b": f"{v.b_ns}/{v.b_name}", "master": v.a_master, "role": v.role}
        if a is None or b is None or _kind(a) != "veth" or _kind(b) != "veth":
            ops = []
            if a is not None:
                ops.append(_ip(v.a_ns, "link", "del", v.a_name))
            if b is not None and v.b_ns in existing:
                ops.append(_ip(v.b_ns, "link", "del", v.b_name))
            peer = ["peer", "name", v.b_name, "netns", v.b_ns]
            if v.b_mac:
                peer += ["address", v.b_mac]
            ops.append({"argv": ["ip", "link", "add", v.a_name, "netns", v.a_ns, "type", "veth",
                                 *peer]})
            if v.a_master:
                ops.append(_ip(v.a_ns, "link", "set", v.a_name, "master", v.a_master))
                if v.a_isolated:
                    ops.append(_ip(v.a_ns, "link", "set", "dev", v.a_name, "type",
                                   "bridge_slave", "isolated", "on"))
            ops += [_ip(v.a_ns, "addr", "add", x, "dev", v.a_name) for x in v.a_addrs]
            ops += [_ip(v.b_ns, "addr", "add", x, "dev", v.b_name) for x in v.b_addrs]
            ops += [_ip(v.a_ns, "link", "set", v.a_name, "up"),
                    _ip(v.b_ns, "link", "set", v.b_name, "up")]
            ch.append(_change(res, "create" if a is None and b is None else "replace",
                              "missing" if a is None and b is None else "half present",
                              ops, "veth/create", after=after))
            continue
        ops, why = [], []
        downed: set[tuple[str, str]] = set()
        if v.b_mac and b.get("address", "").lower() != v.b_mac:
            downed.add((v.b_ns, v.b_name))
            ops += [_ip(v.b_ns, "link", "set", v.b_name, "down"),
                    _ip(v.b_ns, "link", "set", v.b_name, "address", v.b_mac)]
            why.append(f"MAC {b.get('address')} (want {v.b_mac})")
        if a.get("master") != v.a_master:
            ops.append(_ip(v.a_ns, "link", "set", v.a_name,
                           *(["master", v.a_master] if v.a_master else ["nomaster"])))
            why.append(f"master {a.get('master')} (want {v.a_master})")
        if v.a_master:
            slave = (a.get("linkinfo") or {}).get("info_slave_data") or {}
            isolated = bool(slave.get("isolated", False)) if a.get("master") == v.a_master \
                else False
            if isolated != v.a_isolated:
                ops.append(_ip(v.a_ns, "link", "set", "dev", v.a_name, "type", "bridge_slave",
                               "isolated", "on" if v.a_isolated else "off"))
                why.append(f"isolated {'off' if v.a_isolated else 'on'} "
                           f"(AP isolation {'on' if v.a_isolated else 'off'})")
        for ns, name, want, link in ((v.a_ns, v.a_name, v.a_addrs, a),
                                     (v.b_ns, v.b_name, v.b_addrs, b)):
            have = nsf(ns).addrs(name)
            for x in want:
                if x not in have:
                    ops.append(_ip(ns, "addr", "add", x, "dev", name))
                    why.append(f"{ns}/{name}: address {x} missing")
        for ns, name, link in ((v.a_ns, v.a_name, a), (v.b_ns, v.b_name, b)):
            if not _is_up(link) or (ns, name) in downed:
                ops.append(_ip(ns, "link", "set", name, "up"))
                if not _is_up(link):
                    why.append(f"{ns}/{name} down")
        ch.append(_change(res, "update", ", ".join(why), ops, "veth/update", after=after))

    # -- extra addresses (WAN service addresses on lo)
    for x in topo.addrs:
        res = f"netns.addr:{x.ns}/{x.dev}/{x.cidr}"
        have = nsf(x.ns).addrs(x.dev)
        ops = [] if x.cidr in have else [_ip(x.ns, "addr", "add", x.cidr, "dev", x.dev)]
        ch.append(_change(res, "create", "missing" if ops else "", ops, "addr/add"))

    # -- routes
    for r in topo.routes:
        res = f"netns.route:{r.ns}/{r.dest}"
        have = nsf(r.ns).default_via() if r.dest == "default" else None
        ops = [] if have == r.via else [_ip(r.ns, "route", "replace", r.dest, "via", r.via)]
        ch.append(_change(res, "create" if have is None else "update",
                          "" if not ops else (f"via {have} (want {r.via})" if have
                                              else "missing"),
                          ops, "route/replace", after={"via": r.via}))

    # -- port mirroring (tc ingress + u32 match-all + mirred egress mirror)
    for m in topo.mirrors:
        res = f"netns.mirror:{m.switch}/{m.port}"
        f = nsf(m.ns)
        ops, why = [], []
        if "ingress" not in f.qdiscs.get(m.port, []):
            ops.append({"argv": ["tc", "-n", m.ns, "qdisc", "add", "dev", m.port, "ingress"]})
            why.append("no ingress qdisc")
        targets = f.mirror_targets(m.port)
        if targets != [m.target]:
            if f.filters.get(m.port):
                ops.append({"argv": ["tc", "-n", m.ns, "filter", "del", "dev", m.port,
                                     "parent", "ffff:"]})
            ops.append({"argv": ["tc", "-n", m.ns, "filter", "add", "dev", m.port,
                                 "parent", "ffff:", "protocol", "all", "pref", "1", "u32",
                                 "match", "u32", "0", "0", "action", "mirred", "egress",
                                 "mirror", "dev", m.target]})
            why.append("mirror filter missing" if not targets
                       else f"mirrors to {targets} (want {m.target})")
        ch.append(_change(res, "create" if ops else "noop", ", ".join(why), ops,
                          "mirror/create", after={"to": m.target}))

    # -- nftables (NetNat in the host, masquerade to the WAN in the router)
    for t in topo.nft:
        res = f"netns.nft:{t.ns}/{t.family} {t.name}"
        comments = nsf(t.ns).nft.get(f"{t.family} {t.name}")
        ok = comments is not None and comments == {t.fingerprint}
        ops = [] if ok else [{"argv": ["nft", "-f", "-"], "netns": t.ns, "input": t.script()}]
        ch.append(_change(res, "create" if comments is None else "update",
                          "" if ok else ("missing" if comments is None else "rules differ"),
                          ops, "nft/apply"))

    # -- supervised processes
    wanted = {p.name for p in topo.processes}
    for name, info in sorted(facts.processes.items()):
        if name not in wanted:
            ch.append(_change(f"netns.process:{name}", "delete", "no longer in the playbook",
                              [{"op": "stop", "name": name}], "process/stop"))
    for p in topo.processes:
        res = f"netns.process:{p.name}"
        info = facts.processes.get(p.name)
        spawn = {"op": "spawn", "name": p.name, "netns": p.ns, "argv": list(p.argv),
                 "ready": list(p.ready) if p.ready else None}
        if info is None:
            ch.append(_change(res, "create", "not started", [spawn], "process/start"))
        elif not info.alive:
            ch.append(_change(res, "update", f"exited (pid {info.pid}); restart",
                              [{"op": "stop", "name": p.name}, spawn], "process/restart"))
        elif tuple(info.argv) != tuple(p.argv) or info.netns != p.ns:
            ch.append(_change(res, "update", "command line changed",
                              [{"op": "stop", "name": p.name}, spawn], "process/restart"))
        else:
            ch.append(_change(res, "noop", f"running (pid {info.pid})", [], "process/start"))
    return plan


def lab_namespaces(topo: Topology, facts: TwinFacts) -> list[str]:
    """Namespaces of this lab that exist now: recorded in the marker or in the playbook."""
    recorded = list((facts.marker or {}).get("namespaces", []))
    names = list(dict.fromkeys([*topo.namespaces, *recorded]))
    return [n for n in names if n in facts.all_namespaces]


def plan_down(topo: Topology, facts: TwinFacts) -> Plan:
    plan = Plan(provider=PROVIDER, lab=topo.lab)
    for name in sorted(facts.processes):
        plan.changes.append(_change(f"netns.process:{name}", "delete", "supervised process",
                                    [{"op": "stop", "name": name}], "process/stop"))
    present = lab_namespaces(topo, facts)
    host = topo.host_ns
    # leaves first, the host (bridges, NetNat) last
    for ns in sorted(present, key=lambda n: (n == host, n == topo.router_ns, n)):
        plan.changes.append(_change(f"netns.namespace:{ns}", "delete", "lab namespace",
                                    [{"op": "kill-netns", "netns": ns},
                                     {"argv": ["ip", "netns", "del", ns]},
                                     {"op": "unresolv", "netns": ns}],
                                    "namespace/delete"))
    # resolver files of namespaces that are already gone (deleted by hand, or a crash)
    recorded = list((facts.marker or {}).get("namespaces", []))
    for ns in dict.fromkeys([*topo.namespaces, *recorded]):
        if ns not in present and ns in facts.etc_netns:
            plan.changes.append(_change(f"netns.resolv:{ns}", "delete",
                                        "resolver file of a namespace that is gone",
                                        [{"op": "unresolv", "netns": ns}], "resolv/delete"))
    if facts.marker is not None or facts.processes:
        plan.changes.append(_change(f"netns.lab:{topo.lab}", "delete", "ownership marker",
                                    [{"op": "forget", "lab": topo.lab}], "lab/forget"))
    return plan
