"""The twin's desired state, derived from a playbook (pure: no system calls).

Mapping (see issue 3): the Hyper-V host is namespace ``<lab>-host`` holding one Linux bridge
per vSwitch; the router is ``<lab>-rtr`` (main LAN, IoT gateway, WAN, masquerade); the
internet is ``<lab>-wan``; every VM, device and the scanner is a namespace of its own, joined
to a bridge by a veth pair created directly in the two namespaces (nothing touches the root
namespace). Link names fit 15 characters and are derived from list positions, so they are
short, unique and deterministic.

Mirroring: every port of a ``span_source`` bridge gets an ingress qdisc with
``u32 match u32 0 0 action mirred egress mirror dev <monitor port>``. The sensor's monitor
port is not a bridge member, so the bridge never floods into it and every frame crossing the
bridge is seen once (at the port where it enters).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from labctl.core.errors import ConfigError
from labctl.core.playbook import LoadedPlaybook, Playbook
from labctl.netns.secrets import ROUTER_PASSWORD_ENV
from labctl.traffic.persona import load_persona

IFNAMSIZ = 15
NFT_TABLE = "labctl"
# `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf: the twin's
# processes get a resolver that fails at once instead of sending DNS queries (that die in the
# WAN namespace) and waiting for timeouts (HTTPServer's getfqdn, nmap's reverse lookups)
ETC_NETNS = "/etc/netns"


def etc_netns_writable() -> bool:
    """False on read-only /etc (some containers): then the twin leaves DNS alone."""
    probe = ETC_NETNS if os.path.isdir(ETC_NETNS) else os.path.dirname(ETC_NETNS)
    return os.access(probe, os.W_OK)


def resolv_conf(lab: str, servers: list[str] | tuple[str, ...] = ()) -> str:
    """The lab namespaces' resolv.conf: ``twin.dns_forwarders`` if given (they are reached
    through the twin's own routes, so queries never leave the lab), else 127.0.0.1, where
    nothing listens, so lookups fail at once."""
    lines = [f"# labctl twin lab {lab}: DNS stays inside the lab"]
    lines += [f"nameserver {a}" for a in (servers or ["127.0.0.1"])]
    lines.append("options timeout:1 attempts:1")
    return "\n".join(lines) + "\n"


# no IPv6 in the twin: no router solicitations or MLD chatter on the mirrored segment
IPV6_OFF = {"net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1"}  # the lab's own nftables table in the host and router namespaces


def sanitize(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "x"


def ifname(*parts: str) -> str:
    """A link name of at most 15 characters; callers put a unique index in the first part."""
    s = "-".join(sanitize(p) for p in parts if p)
    if len(s) <= IFNAMSIZ:
        return s
    digest = hashlib.sha1(s.encode()).hexdigest()[:4]
    return s[: IFNAMSIZ - 5].rstrip("-") + "-" + digest


@dataclass(frozen=True)
class Bridge:
    ns: str
    name: str
    switch: str
    addrs: tuple[str, ...] = ()
    vlan: int | None = None
    subnet: str | None = None
    span_source: bool = False


@dataclass(frozen=True)
class Veth:
    """A veth pair: end A (usually the bridge port in the host namespace) and end B."""

    a_ns: str
    a_name: str
    b_ns: str
    b_name: str
    a_master: str | None = None
    a_addrs: tuple[str, ...] = ()
    b_addrs: tuple[str, ...] = ()
    b_mac: str | None = None
    role: str = ""  # device | vm | scanner | router-iot | main-lan | wan | monitor
    # bridge port isolation: the router's AP isolation (isolated ports reach only the
    # non-isolated ones, i.e. the router, never each other)
    a_isolated: bool = False

    @property
    def key(self) -> str:
        return f"{self.a_ns}/{self.a_name}"


@dataclass(frozen=True)
class ExtraAddr:
    ns: str
    dev: str
    cidr: str


@dataclass(frozen=True)
class Route:
    ns: str
    dest: str  # "default" or a CIDR
    via: str


@dataclass(frozen=True)
class Mirror:
    ns: str
    port: str
    target: str
    switch: str


@dataclass(frozen=True)
class NftTable:
    ns: str
    family: str
    name: str
    body: str  # the table's chains and rules, one fingerprint comment on every rule

    @property
    def fingerprint(self) -> str:
        return "labctl:" + hashlib.sha1(self.body.encode()).hexdigest()[:12]

    def script(self) -> str:
        """nft -f input that (re)creates the table atomically."""
        body = self.body.replace("@FP@", self.fingerprint)
        return (f"table {self.family} {self.name}\n"
                f"delete table {self.family} {self.name}\n"
                f"table {self.family} {self.name} {{\n{body}}}\n")


@dataclass(frozen=True)
class Process:
    name: str  # unique within the lab: "persona-feeder1", "wan", "sensor", "router"
    ns: str
    argv: tuple[str, ...]
    kind: str
    # (address, TCP port) it listens on inside its namespace: `up` waits until it accepts,
    # so the stages after the provider (router API, sensor API) find it ready
    ready: tuple[str, int] | None = None


@dataclass
class Topology:
    lab: str
    namespaces: list[str] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)
    veths: list[Veth] = field(default_factory=list)
    addrs: list[ExtraAddr] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    sysctls: dict[str, dict[str, str]] = field(default_factory=dict)
    mirrors: list[Mirror] = field(default_factory=list)
    nft: list[NftTable] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # names for other helpers (scanner namespace, sensor namespace and interfaces)
    host_ns: str = ""
    router_ns: str = ""
    wan_ns: str = ""
    scanner_ns: str | None = None
    sensor_ns: str | None = None
    sensor_monitor_if: str | None = None
    segments: list[dict] = field(default_factory=list)
    manage_resolv: bool = True
    resolv: str = ""  # the resolv.conf text of every lab namespace
    networks: list[ipaddress.IPv4Network] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "lab": self.lab,
            "host_ns": self.host_ns,
            "router_ns": self.router_ns,
            "wan_ns": self.wan_ns,
            "scanner_ns": self.scanner_ns,
            "sensor_ns": self.sensor_ns,
            "sensor_monitor_if": self.sensor_monitor_if,
            "namespaces": list(self.namespaces),
            "segments": self.segments,
            "processes": [{"name": p.name, "netns": p.ns, "kind": p.kind} for p in self.processes],
        }


def _labctl_argv(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "labctl", *args)


def persona_path(loaded: LoadedPlaybook, persona: str) -> Path:
    """``<playbook dir>/devices/<persona>.yaml``, else the packaged ``playbooks/devices``."""
    from labctl.core.assets import asset_path

    local = loaded.base_dir / "devices" / f"{persona}.yaml"
    if local.is_file():
        return local
    return asset_path("playbooks", "devices", f"{persona}.yaml")


def build(loaded: LoadedPlaybook, state_dir: Path) -> Topology:
    """Desired state of the twin for ``loaded`` (a ``provider: netns`` playbook)."""
    pb: Playbook = loaded.model
    lab = pb.lab
    twin = pb.twin
    if twin is None:
        from labctl.core.playbook.twin import TwinSection

        twin = TwinSection()
    t = Topology(lab=lab, manage_resolv=etc_netns_writable(),
                 resolv=resolv_conf(lab, [str(a) for a in twin.dns_forwarders]))
    host = t.host_ns = f"{lab}-host"
    rtr = t.router_ns = f"{lab}-rtr"
    wan = t.wan_ns = f"{lab}-wan"
    t.namespaces = [host, rtr, wan]
    owners: dict[str, str] = {host: "the host", rtr: "the router", wan: "the WAN"}

    def add_ns(name: str, what: str, key: str) -> str:
        ns = f"{lab}-{sanitize(name)}"
        if ns in owners:
            raise ConfigError(f"{what} {name!r} maps to namespace {ns!r}, already used by "
                              f"{owners[ns]}", file=loaded.path, key=key,
                              hint="give it another name")
        owners[ns] = what
        t.namespaces.append(ns)
        return ns

    for ns in t.namespaces:
        t.sysctls[ns] = {}
    t.sysctls[host]["net.ipv4.ip_forward"] = "1"
    t.sysctls[rtr]["net.ipv4.ip_forward"] = "1"

    # -- bridges (vSwitches) in the host namespace
    bridges: dict[str, Bridge] = {}
    for i, sw in enumerate(pb.switches):
        addrs: tuple[str, ...] = ()
        if sw.host_ip is not None and (sw.type == "internal" or sw.allow_management_os):
            addrs = (str(sw.host_ip),)
        net = sw.network
        vlan = sw.vlan
        if pb.router and pb.router.iot_network and net is not None \
                and net == pb.router.iot_network.subnet and vlan is None:
            vlan = pb.router.iot_network.vlan
        br = Bridge(ns=host, name=ifname(f"br{i}", sw.name), switch=sw.name, addrs=addrs,
                    vlan=vlan, subnet=str(net) if net else None, span_source=sw.span_source)
        bridges[sw.name.lower()] = br
        t.bridges.append(br)
        if net is not None:
            t.networks.append(net)

    # -- main LAN (host uplink <-> router LAN) and WAN (router <-> ISP)
    t.veths.append(Veth(a_ns=host, a_name="uplink", b_ns=rtr, b_name="lan0",
                        a_addrs=(str(twin.main_lan_host),), b_addrs=(str(twin.main_lan_router),),
                        role="main-lan"))
    wan_net = twin.wan_router.network
    isp_ip = next(h for h in wan_net.hosts() if h != twin.wan_router.ip)
    t.veths.append(Veth(a_ns=rtr, a_name="wan0", b_ns=wan, b_name="isp0",
                        a_addrs=(str(twin.wan_router),),
                        b_addrs=(f"{isp_ip}/{wan_net.prefixlen}",), role="wan"))
    for svc in twin.wan_services:
        t.addrs.append(ExtraAddr(ns=wan, dev="lo", cidr=f"{svc.ip}/32"))
    t.routes.append(Route(ns=host, dest="default", via=str(twin.main_lan_router.ip)))
    t.routes.append(Route(ns=rtr, dest="default", via=str(isp_ip)))
    t.networks.extend([twin.main_lan_router.network, wan_net])
    for svc in twin.wan_services:
        if svc.network not in t.networks:
            t.networks.append(svc.network)

    # -- NetNat: masquerade in the host namespace for every switch with nat:
    rules = []
    for sw in pb.switches:
        if sw.nat is not None:
            rules.append(f"    ip saddr {sw.nat.prefix} oifname \"uplink\" masquerade "
                         f"comment \"@FP@\"\n")
    if rules:
        t.nft.append(NftTable(ns=host, family="ip", name=NFT_TABLE, body=(
            "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
            + "".join(rules) + "  }\n")))
    # -- the router: masquerade everything leaving on the WAN
    t.nft.append(NftTable(ns=rtr, family="ip", name=NFT_TABLE, body=(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
        "    oifname \"wan0\" masquerade comment \"@FP@\"\n  }\n")))

    # -- the router's IoT interface on the IoT switch
    iot = pb.router.iot_network if pb.router else None
    iot_bridge: Bridge | None = None
    iot_gw: ipaddress.IPv4Address | None = None
    if iot is not None:
        for sw in pb.switches:
            if sw.network == iot.subnet or (sw.network is None and sw.vlan == iot.vlan):
                iot_bridge = bridges[sw.name.lower()]
                break
        if iot_bridge is None:
            for sw in pb.switches:
                if sw.span_source:
                    iot_bridge = bridges[sw.name.lower()]
                    break
        if iot_bridge is None:
            t.warnings.append(f"no switch carries the IoT network {iot.subnet}; the router has "
                              "no IoT interface")
        else:
            iot_gw = iot.gateway_ip
            t.veths.append(Veth(a_ns=host, a_name="r-iot", a_master=iot_bridge.name, b_ns=rtr,
                                b_name="iot0", b_addrs=(f"{iot_gw}/{iot.subnet.prefixlen}",),
                                role="router-iot"))
            if iot.subnet not in t.networks:
                t.networks.append(iot.subnet)

    # -- VMs: one namespace each, NICs in playbook order (eth0, eth1...)
    monitor_ports: dict[str, str] = {}  # bridge name -> mirror target port
    for i, vm in enumerate(pb.vms):
        ns = add_ns(vm.name, f"VM {vm.name}", f"vms.{i}.name")
        t.sysctls[ns] = {}
        for j, nic in enumerate(vm.nics):
            br = bridges[nic.switch.lower()]
            port = ifname(f"v{i}n{j}", vm.name)
            inner = f"eth{j}"
            is_monitor = nic.port_mirroring == "destination" or nic.role == "monitor"
            addrs = (str(nic.ip),) if nic.ip is not None and not is_monitor else ()
            t.veths.append(Veth(a_ns=host, a_name=port,
                                a_master=None if (is_monitor and br.span_source) else br.name,
                                b_ns=ns, b_name=inner, b_addrs=addrs,
                                b_mac=nic.mac.replace("-", ":").lower() if nic.mac else None,
                                role="monitor" if is_monitor else "vm"))
            if is_monitor and br.span_source and br.name not in monitor_ports:
                monitor_ports[br.name] = port
            if nic.gateway is not None and not is_monitor and \
                    not any(r.ns == ns and r.dest == "default" for r in t.routes):
                t.routes.append(Route(ns=ns, dest="default", via=str(nic.gateway)))
            if pb.sensor is not None and pb.sensor.vm and pb.sensor.vm.lower() == vm.name.lower():
                t.sensor_ns = ns
                if is_monitor and t.sensor_monitor_if is None:
                    t.sensor_monitor_if = inner

    # -- IoT devices and the scanner
    gw_for: dict[str, str] = {}
    if iot_bridge is not None and iot_gw is not None:
        gw_for[iot_bridge.name] = str(iot_gw)
    for sw in pb.switches:
        b = bridges[sw.name.lower()]
        if b.name not in gw_for and sw.host_ip is not None and b.addrs:
            gw_for[b.name] = str(sw.host_ip.ip)
    wan_ip = str(twin.wan_services[0].ip) if twin.wan_services else str(isp_ip)
    for k, dev in enumerate(twin.devices):
        ns = add_ns(dev.name, f"device {dev.name}", f"twin.devices.{k}.name")
        t.sysctls[ns] = {}
        br = bridges[dev.switch.lower()]
        t.veths.append(Veth(a_ns=host, a_name=ifname(f"d{k}", dev.name), a_master=br.name,
                            b_ns=ns, b_name="eth0", b_addrs=(str(dev.ip),),
                            b_mac=dev.mac.lower() if dev.mac else None, role="device",
                            a_isolated=bool(iot is not None and iot.ap_isolation
                                            and iot_bridge is not None
                                            and br.name == iot_bridge.name)))
        gw = gw_for.get(br.name)
        if gw and gw != str(dev.ip.ip):
            t.routes.append(Route(ns=ns, dest="default", via=gw))
        path = persona_path(loaded, dev.persona)
        if not path.is_file():
            raise ConfigError(f"persona {dev.persona!r} not found (looked for {path})",
                              file=loaded.path, key=f"twin.devices.{k}.persona",
                              hint="add playbooks/devices/<persona>.yaml")
        tcp = [lst.port for lst in load_persona(path).listeners if lst.proto == "tcp"]
        t.processes.append(Process(
            name=f"device-{sanitize(dev.name)}", ns=ns, kind="persona",
            ready=(str(dev.ip.ip), tcp[0]) if tcp else None,
            argv=_labctl_argv("twin", "run-persona", "--persona", str(path), "--name", dev.name,
                              "--wan", wan_ip, "--irc-port", str(twin.irc_port))))
    if twin.scanner is not None:
        sc = twin.scanner
        ns = add_ns(sc.name, f"scanner {sc.name}", "twin.scanner.name")
        t.sysctls[ns] = {}
        t.scanner_ns = ns
        br = bridges[sc.switch.lower()]
        t.veths.append(Veth(a_ns=host, a_name=ifname("s", sc.name), a_master=br.name, b_ns=ns,
                            b_name="eth0", b_addrs=(str(sc.ip),), role="scanner"))
        gw = gw_for.get(br.name)
        if gw and gw != str(sc.ip.ip):
            t.routes.append(Route(ns=ns, dest="default", via=gw))

    # -- mirroring: every member port of a span_source bridge -> its monitor port
    for br in t.bridges:
        if not br.span_source:
            continue
        target = monitor_ports.get(br.name)
        if target is None:
            t.warnings.append(f"switch {br.switch} is a SPAN source but no VM NIC on it is a "
                              "mirror destination; nothing is mirrored")
            continue
        for v in t.veths:
            if v.a_master == br.name:
                t.mirrors.append(Mirror(ns=host, port=v.a_name, target=target, switch=br.switch))

    # -- processes: WAN services, the router twin, the embedded sensor
    t.processes.insert(0, Process(name="wan", ns=wan, kind="wan", ready=(
        wan_ip, twin.irc_port), argv=_labctl_argv(
        "twin", "run-wan", "--irc-port", str(twin.irc_port))))
    if pb.router is not None:
        port = urlparse(pb.router.url).port or (443 if pb.router.url.startswith("https") else 80)
        argv = ["twin", "serve-router", "--listen", f"{twin.main_lan_router.ip}:{port}"]
        if pb.router.url.startswith("https"):
            argv.append("--https")
        argv += ["--state", str(state_dir / "router-nvram.json")]
        if iot is not None and iot_bridge is not None:
            argv += ["--iot-interface", f"{iot.vlan}=iot0"]
        # the router twin accepts the password labctl logs in with: the playbook's variable
        # when set, else the twin's own (labctl.netns.secrets). Only the variable's name is on
        # the command line; the provider puts the value in the child's environment.
        argv += ["--password-env", ROUTER_PASSWORD_ENV]
        t.processes.insert(1, Process(name="router", ns=rtr, kind="router",
                                      ready=(str(twin.main_lan_router.ip), port),
                                      argv=_labctl_argv(*argv)))
    sensor_vm = pb.vm(pb.sensor.vm) if pb.sensor is not None and pb.sensor.vm else None
    if sensor_vm is not None and not sensor_vm.start:
        t.warnings.append(f"VM {sensor_vm.name} has start: false; the embedded sensor is not "
                          "started")
    elif pb.sensor is not None and pb.sensor.kind == "embedded" and t.sensor_ns:
        if t.sensor_monitor_if is None:
            t.warnings.append("the sensor VM has no monitor NIC; the embedded sensor is not "
                              "started")
        else:
            t.processes.insert(1, Process(name="sensor", ns=t.sensor_ns, kind="sensor",
                                          ready=(str(pb.sensor.management_ip), 443),
                                          argv=_labctl_argv(
                "sensor", "serve", "--interface", t.sensor_monitor_if,
                "--listen", f"{pb.sensor.management_ip}:443",
                "--state", str(state_dir / "sensor"))))

    for ns in t.namespaces:
        t.sysctls[ns].update(IPV6_OFF)

    # -- segments, for status/--json (the VLAN id stays in the model)
    for br in t.bridges:
        t.segments.append({"switch": br.switch, "bridge": br.name, "netns": br.ns,
                           "subnet": br.subnet, "vlan": br.vlan, "span_source": br.span_source,
                           "mirror_to": monitor_ports.get(br.name)})
    return t


def labctl_env() -> dict[str, str]:
    """Environment for supervised ``python -m labctl`` children (works from a checkout)."""
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
