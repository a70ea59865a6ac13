"""Desired IoT network -> SDN nvram edits, and nvram -> decoded networks.

Why: the router stores a network across five tables and ~15 ``apg<N>_*`` keys, addressed by
small indexes. labctl always starts from a *fresh* read of every SDN key, edits the parsed
tables (keeping every field it does not interpret), allocates the lowest free index for a new
profile, and produces the exact set of keys whose value changes. The same decoding feeds
``router show`` and the key-level diff, so the user sees rows, not raw strings.

Identity: ASUS keeps no profile name besides the wizard type, so a network is identified by
its SSID (``router show`` prints the SSID as the name). See docs/router.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from labctl.core.errors import UsageError
from labctl.core.secrets import MASK
from labctl.router.asus import codec
from labctl.router.asus.codec import Table
from labctl.router.base import DesiredNetwork, NetworkEdit

APG_MAX = 16  # apg0..apg15 (APG_MAXINUM)
ASCII_KEYS = frozenset(codec.SDN_TABLE_KEYS) | {
    f"apg{n}_{f}" for n in range(APG_MAX) for f in ("ssid", "security", "dut_list", "bw_limit",
                                                     "sched", "maclist", "expiretime")}
CONTEXT_KEYS = ("lan_ipaddr", "lan_netmask", "qos_enable")
MAIN_TYPES = ("DEFAULT", "MAINFH", "MAINBH")


def sdn_keys() -> list[str]:
    """Every SDN-related nvram key labctl backs up, compares and restores."""
    return list(codec.SDN_TABLE_KEYS) + [f"apg{n}_{f}" for n in range(1, APG_MAX)
                                         for f in codec.APG_FIELDS]


def read_state(client: Any) -> dict[str, str]:
    """One fresh read: all SDN keys (decoded) plus the main LAN context."""
    keys = sdn_keys() + list(CONTEXT_KEYS)
    state: dict[str, str] = client.get_nvram(keys, ascii_keys=[k for k in keys
                                                                if k in ASCII_KEYS])
    return state


def _usage(msg: str, hint: str | None = None) -> UsageError:
    return UsageError(msg, hint=hint)


@dataclass
class Tables:
    sdn: Table
    vlan: Table
    subnet: Table
    access: Table

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Tables:
        return cls(codec.parse_sdn(state.get("sdn_rl", "")),
                   codec.parse_vlan(state.get("vlan_rl", "")),
                   codec.parse_subnet(state.get("subnet_rl", "")),
                   codec.parse_access(state.get("sdn_access_rl", "")))

    def dump(self) -> dict[str, str]:
        return {"sdn_rl": self.sdn.dump(), "vlan_rl": self.vlan.dump(),
                "subnet_rl": self.subnet.dump(), "sdn_access_rl": self.access.dump()}


def _main_lan(state: dict[str, str]) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Interface(f"{state['lan_ipaddr']}/{state['lan_netmask']}").network
    except (KeyError, ValueError):
        return None


def decode_networks(state: dict[str, str]) -> list[dict[str, Any]]:
    """Decoded SDN networks (secrets masked), for `router show` and the diff."""
    t = Tables.from_state(state)
    out = []
    for row in t.sdn:
        idx = row["idx"]
        net: dict[str, Any] = {"idx": idx, "type": row["name"], "enable": row["enable"] == "1"}
        if row["name"] in MAIN_TYPES or idx == "0":
            lan = _main_lan(state)
            net.update({"name": row["name"], "ssid": None, "vlan": None,
                        "subnet": str(lan) if lan else None})
            out.append(net)
            continue
        apg = row["apg_idx"]

        def g(f: str, apg: str = apg) -> str:
            return state.get(f"apg{apg}_{f}", "")

        sec = codec.parse_security(g("security"))
        first = sec.rows[0] if sec.rows else None
        dut = codec.parse_dut_list(g("dut_list"))
        try:
            mask = int(dut.rows[0]["bandmask"]) if dut.rows else 0
        except ValueError:
            mask = 0
        vrow = (t.vlan.find("vlan_idx", row["vlan_idx"])
                if row["vlan_idx"] not in ("", "0") else None)
        srow = (t.subnet.find("subnet_idx", row["subnet_idx"])
                if row["subnet_idx"] not in ("", "0") else None)
        subnet = gateway = None
        dhcp = None
        dhcp_range = None
        dns: list[str] = []
        if srow is not None:
            try:
                iface = ipaddress.IPv4Interface(f"{srow['addr']}/{srow['netmask']}")
                subnet, gateway = str(iface.network), str(iface.ip)
            except ValueError:
                subnet = f"{srow['addr']}/{srow['netmask']}"
            dhcp = srow["dhcp_enable"] == "1"
            dhcp_range = [srow["dhcp_min"], srow["dhcp_max"]] if dhcp else None
            dns = [x for x in srow["dns"].split(",") if x]
        try:
            vid: int | None = int(vrow["vid"]) if vrow is not None else None
        except ValueError:
            vid = None
        net.update({
            "name": g("ssid"), "ssid": g("ssid"), "apg_idx": apg,
            "band": codec.mask_band(mask) or None,
            "auth": codec.ASUS_TO_AUTH.get(first["auth"], first["auth"]) if first else None,
            "passphrase": MASK if first and first["psk"] else None,
            "vlan": vid, "vlan_idx": row["vlan_idx"], "subnet_idx": row["subnet_idx"],
            "subnet": subnet, "gateway": gateway, "dhcp": dhcp, "dhcp_range": dhcp_range,
            "dns": dns, "ap_isolation": g("ap_isolate") == "1", "hidden": g("hide_ssid") == "1",
            "wifi_enable": g("enable") == "1",
        })
        out.append(net)
    return out


def find_network(state: dict[str, str], name: str) -> dict[str, Any] | None:
    for net in decode_networks(state):
        if net["idx"] != "0" and net["type"] not in MAIN_TYPES and net.get("ssid") == name:
            return net
    return None


def _lowest_free(used: set[int]) -> int:
    i = 1
    while i in used:
        i += 1
    return i


def _ints(table: Table, name: str) -> set[int]:
    out = set()
    for r in table:
        try:
            out.add(int(r[name]))
        except ValueError:
            pass
    return out


def validate_against_router(d: DesiredNetwork, state: dict[str, str],
                            self_idx: str | None) -> None:
    """Checks that need the fresh read: VLAN and subnet clashes with other profiles."""
    lan = _main_lan(state)
    if lan is not None and d.subnet.overlaps(lan):
        raise _usage(f"subnet {d.subnet} overlaps the router's main LAN {lan}")
    for net in decode_networks(state):
        if net["idx"] in ("0", self_idx) or net["type"] in MAIN_TYPES:
            continue
        if net.get("vlan") == d.vlan:
            raise _usage(f"VLAN {d.vlan} is already used by the network {net['name']!r} "
                         f"(sdn idx {net['idx']})", hint="pick another --vlan")
        if net.get("subnet"):
            try:
                other = ipaddress.IPv4Network(net["subnet"], strict=False)
            except ValueError:
                continue
            if other.overlaps(d.subnet):
                raise _usage(f"subnet {d.subnet} overlaps {other} of the network "
                             f"{net['name']!r}", hint="pick another --subnet")


def plan_iot_net(state: dict[str, str], d: DesiredNetwork) -> NetworkEdit:
    """Table edits that make the router hold ``d``; only changed keys are returned, with the
    field-level diff of the network (the passphrase masked)."""
    t = Tables.from_state(state)
    existing = find_network(state, d.ssid)
    if existing is None:
        existing = find_network(state, d.name)
    validate_against_router(d, state, existing["idx"] if existing else None)
    if existing is not None:
        row = t.sdn.find("idx", existing["idx"])
        assert row is not None
        sdn_idx, apg_idx = row["idx"], row["apg_idx"]
        vlan_idx = row["vlan_idx"] if row["vlan_idx"] not in ("", "0") else \
            str(_lowest_free(_ints(t.vlan, "vlan_idx")))
        subnet_idx = row["subnet_idx"] if row["subnet_idx"] not in ("", "0") else \
            str(_lowest_free(_ints(t.subnet, "subnet_idx")))
        action = "update"
    else:
        sdn_idx = str(_lowest_free(_ints(t.sdn, "idx") - {0} | {0}))
        used_apg = _ints(t.sdn, "apg_idx") | {n for n in range(1, APG_MAX)
                                             if state.get(f"apg{n}_ssid")}
        apg_idx = str(_lowest_free(used_apg - {0}))
        vlan_idx = str(_lowest_free(_ints(t.vlan, "vlan_idx") | _ints(t.sdn, "vlan_idx") - {0}))
        subnet_idx = str(_lowest_free(_ints(t.subnet, "subnet_idx")
                                      | _ints(t.sdn, "subnet_idx") - {0}))
        if int(apg_idx) >= APG_MAX:
            raise _usage("the router has no free SDN profile slot",
                         hint="delete a network with `labctl router delete-net NAME`")
        row = t.sdn.append([sdn_idx, d.type, "1", vlan_idx, subnet_idx, apg_idx, "0", "",
                            "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "0", "WEB", "0",
                            "0", "0"])
        action = "create"
    row["name"] = d.type
    row["enable"] = "1"
    row["vlan_idx"] = vlan_idx
    row["subnet_idx"] = subnet_idx
    # vlan_rl: <vlan_idx>vid>port_isolation> (the UI's trailing '>' form)
    vrow = t.vlan.find("vlan_idx", vlan_idx)
    if vrow is None:
        vrow = t.vlan.append([vlan_idx, str(d.vlan), "0", ""])
    vrow["vid"] = str(d.vlan)
    # subnet_rl: first 13 fields interpreted, the rest kept
    srow = t.subnet.find("subnet_idx", subnet_idx)
    if srow is None:
        srow = t.subnet.append([subnet_idx, "", "", "", "", "", "", "", "", "", "", "0", "",
                                "0", "0", "", "", "", "", "0", "", ""])
    lo, hi = d.range
    srow["ifname"] = f"br{d.vlan}"
    srow["addr"] = str(d.gateway_ip)
    srow["netmask"] = str(d.subnet.netmask)
    srow["dhcp_enable"] = "1" if d.dhcp else "0"
    srow["dhcp_min"] = str(lo)
    srow["dhcp_max"] = str(hi)
    srow["dhcp_lease"] = str(d.lease_seconds)
    srow["dns"] = ",".join(str(x) for x in d.dns) if d.dns else ","
    if not any(r["access_sdn_idx"] == "0" and r["sdn_idx"] == sdn_idx for r in t.access):
        t.access.append(["0", sdn_idx])
    new = dict(t.dump())
    p = f"apg{apg_idx}_"
    new.update({
        p + "enable": "1", p + "ssid": d.ssid, p + "hide_ssid": "1" if d.hidden else "0",
        p + "security": codec.build_security(d.auth, d.passphrase.reveal(), sdn_idx),
        p + "ap_isolate": "1" if d.ap_isolation else "0",
        p + "dut_list": codec.build_dut_list(d.band),
    })
    defaults = {p + "bw_limit": "<0>>", p + "timesched": "0", p + "macmode": "disabled",
                p + "11be": "0"}
    for k, v in defaults.items():
        if not state.get(k):
            new[k] = v
    values = {k: v for k, v in new.items() if state.get(k, "") != v}
    action = action if values else "noop"
    after = dict(state)
    after.update(values)
    diff = diff_networks(state, after, d.ssid)
    if action == "update" and passphrase_changed(state, after, d.ssid) \
            and not any(x["field"] == "passphrase" for x in diff):
        diff.append({"field": "passphrase", "old": MASK, "new": f"{MASK} (changed)"})
    return NetworkEdit(target=sdn_idx, values=values,
                       service=f"restart_wireless;restart_sdn {sdn_idx};", action=action,
                       basis=dict(state), diff=diff, before=existing)


def plan_delete(state: dict[str, str], name: str) -> NetworkEdit:
    net = find_network(state, name)
    if net is None:
        names = [n["name"] for n in decode_networks(state) if n["idx"] != "0"]
        raise _usage(f"the router has no network named {name!r}",
                     hint=f"networks: {', '.join(map(str, names)) or 'none'} "
                          "(see `labctl router show`)")
    t = Tables.from_state(state)
    idx = net["idx"]
    t.sdn.remove_where("idx", idx)
    others_vlan = {r["vlan_idx"] for r in t.sdn}
    others_subnet = {r["subnet_idx"] for r in t.sdn}
    if net["vlan_idx"] not in others_vlan:
        t.vlan.remove_where("vlan_idx", net["vlan_idx"])
    if net["subnet_idx"] not in others_subnet:
        t.subnet.remove_where("subnet_idx", net["subnet_idx"])
    t.access.rows = [r for r in t.access if idx not in (r["access_sdn_idx"], r["sdn_idx"])]
    new = dict(t.dump())
    for f in codec.APG_FIELDS:
        new[f"apg{net['apg_idx']}_{f}"] = ""
    values = {k: v for k, v in new.items() if state.get(k, "") != v}
    return NetworkEdit(target=idx, values=values, service="start_sdn_del;restart_wireless;",
                       action="delete", basis=dict(state), before=net)


def diff_networks(before: dict[str, str], after: dict[str, str],
                  key: str) -> list[dict[str, Any]]:
    """Field-level differences of one network (by SSID) between two nvram states."""
    a = find_network(before, key) or {}
    b = find_network(after, key) or {}
    out = []
    skip = {"idx", "apg_idx", "vlan_idx", "subnet_idx"}
    for f in sorted(set(a) | set(b)):
        if f in skip:
            continue
        if a.get(f) != b.get(f):
            out.append({"field": f, "old": a.get(f), "new": b.get(f)})
    return out


def passphrase_changed(before: dict[str, str], after: dict[str, str], key: str) -> bool:
    a, b = find_network(before, key), find_network(after, key)
    if not a or not b:
        return bool(a) != bool(b)
    return before.get(f"apg{a['apg_idx']}_security") != after.get(f"apg{b['apg_idx']}_security")
