"""The user-defined rule language at run time: index, match and message templates.

Rules are parsed and validated by :mod:`labctl.sensor.config` (``VARIABLE OP VALUE``
conditions, direction subnets); this module evaluates them against a parsed packet (a
:func:`labctl.sensor.parse.parse_frame` tuple) and renders their ``{variable}`` messages.

Why an index: most rules pin a destination port (``TCP.dstport == 6667``), so the engine
looks rules up by (protocol, destination port) and evaluates only those, plus the few that
pin nothing; a packet on a port no rule names costs one dict look-up.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable

from labctl.sensor.config import LoadedRule
from labctl.sensor.parse import (
    F_DIP,
    F_DMAC,
    F_DPORT,
    F_KIND,
    F_PROTO,
    F_SIP,
    F_SMAC,
    F_SPORT,
    F_VLAN,
    K_IPV4,
    K_IPV6,
    Parsed,
    ip_str,
    mac_str,
)

#: a rule's protocol -> the key it is indexed under (IP protocol number, or a negative
#: pseudo-protocol for rules on a whole network layer)
PROTOCOL_KEYS = {"TCP": 6, "UDP": 17, "ICMP": 1, "IPv4": -4, "IPv6": -6, "ARP": -1}

_OPS: dict[str, Callable[[int, int], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
    "<=": operator.le, ">=": operator.ge}


class RuleIndex:
    """The loaded rules, indexed by (protocol, destination port) where a rule pins one."""

    def __init__(self, rules: list[LoadedRule]) -> None:
        self.by_port: dict[int, dict[int, list[LoadedRule]]] = {6: {}, 17: {}}
        self.any: dict[int, list[LoadedRule]] = {}
        self.has_rules = bool(rules)
        for r in rules:
            proto = PROTOCOL_KEYS[r.rule.protocol]
            if proto in (6, 17) and r.dstport_eq is not None:
                self.by_port[proto].setdefault(r.dstport_eq, []).append(r)
            else:
                self.any.setdefault(proto, []).append(r)

    def candidates(self, p: Parsed, proto: int) -> list[LoadedRule]:
        """The rules that may match ``p`` (``proto``: 6, 17, 1 for ICMP, 0 for other IP)."""
        cands = self.by_port[proto].get(p[F_DPORT]) if proto in (6, 17) else None
        anys = self.any.get(proto)
        more = self.any.get(-4 if p[F_KIND] == K_IPV4 else -6)
        if not (cands or anys or more):
            return []
        return (cands or []) + (anys or []) + (more or [])


def var_value(var: str, p: Parsed) -> int | None:
    """The value of a rule variable (``tcp.dstport``, ``ipv4.src``...) in ``p``, or None."""
    kind = p[F_KIND]
    if var in ("ipv4.src", "ipv4.dst"):
        if kind != K_IPV4:
            return None
        return int.from_bytes(p[F_SIP] if var.endswith("src") else p[F_DIP], "big")
    if var in ("ipv6.src", "ipv6.dst"):
        if kind != K_IPV6:
            return None
        return int.from_bytes(p[F_SIP] if var.endswith("src") else p[F_DIP], "big")
    if var in ("tcp.srcport", "tcp.dstport"):
        if p[F_PROTO] != 6:
            return None
        return p[F_SPORT] if var.endswith("srcport") else p[F_DPORT]
    if var in ("udp.srcport", "udp.dstport"):
        if p[F_PROTO] != 17:
            return None
        return p[F_SPORT] if var.endswith("srcport") else p[F_DPORT]
    if var == "icmp.type":
        return p[F_SPORT] if p[F_PROTO] in (1, 58) else None
    if var == "eth.src":
        return int.from_bytes(p[F_SMAC], "big")
    if var == "eth.dst":
        return int.from_bytes(p[F_DMAC], "big")
    if var == "vlan.id":
        return p[F_VLAN]
    return None


def rule_matches(r: LoadedRule, p: Parsed) -> bool:
    """True if ``p`` is inside the rule's direction and meets all its conditions."""
    if r.src_nets or r.dst_nets:
        if p[F_KIND] not in (K_IPV4, K_IPV6):
            return False
        sip = ipaddress.ip_address(p[F_SIP])
        dip = ipaddress.ip_address(p[F_DIP])
        if r.src_nets and not any(sip in n for n in r.src_nets if n.version == sip.version):
            return False
        if r.dst_nets and not any(dip in n for n in r.dst_nets if n.version == dip.version):
            return False
    for c in r.conditions:
        v = var_value(c.var, p)
        if v is None or not _OPS[c.op](v, c.value):
            return False
    return True


def render_message(template: str, p: Parsed) -> str:
    """Fill ``{ipv4.src}``-style placeholders from ``p``; ``{}`` is ``src -> dst``."""
    def val(name: str) -> str:
        low = name.lower()
        if low in ("ipv4.src", "ipv6.src"):
            return ip_str(p[F_SIP])
        if low in ("ipv4.dst", "ipv6.dst"):
            return ip_str(p[F_DIP])
        if low in ("eth.src", "eth.dst"):
            return mac_str(p[F_SMAC] if low.endswith("src") else p[F_DMAC])
        v = var_value(low, p)
        return "" if v is None else str(v)

    out = []
    i = 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            out.append(template[i:])
            break
        k = template.find("}", j)
        if k < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        name = template[j + 1:k]
        out.append(val(name) if name else f"{ip_str(p[F_SIP])} -> {ip_str(p[F_DIP])}")
        i = k + 1
    return "".join(out)
