"""Derive the twin's desired state (:class:`~labctl.netns.topology_model.Topology`) from a
playbook: pure, no system calls. The data types and the mapping live in
:mod:`labctl.netns.topology_model`; here :func:`build` walks the playbook one section at a
time (one :class:`_Builder` method per section, in dependency order).

The emulator processes (the router's, the sensor's) are not spelled out here: the twin
decides where each listens and keeps its state (:class:`~labctl.core.emulator.EmulatorRequest`)
and the device kind's driver names the command (``emulator_process``).

The embedded sensor's configuration file (the shipped ``sensor/engines.yaml`` with the
playbook's ``sensor.engines``, ``learning_mode`` and ``authorized_scanners`` applied) is
computed here and recorded in :attr:`Topology.files`; `up` writes it into
``<state>/sensor-config/`` before any process starts (``plan``, ``status`` and ``down``
write nothing). Its name carries the digest of its content, so a changed playbook changes
the sensor's argv and the plan restarts the sensor (a process whose argv differs is
restarted), while an unchanged one changes nothing.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from labctl.core.emulator import EmulatorProcess, EmulatorRequest
from labctl.core.errors import ConfigError, LabctlError
from labctl.core.playbook import LoadedPlaybook, Playbook
from labctl.core.playbook.hyperv import VM
from labctl.core.playbook.twin import TwinSection
from labctl.netns.credentials import ROUTER_PASSWORD_ENV
from labctl.netns.topology_model import (
    IPV6_OFF,
    NFT_TABLE,
    Bridge,
    ExtraAddr,
    Mirror,
    NftTable,
    Process,
    Route,
    Topology,
    Veth,
    etc_netns_writable,
    ifname,
    resolv_conf,
    sanitize,
)
from labctl.router.registry import get_router_driver
from labctl.sensor.registry import get_sensor_driver
from labctl.traffic.persona import load_persona

SENSOR_PORT = 443  # the embedded sensor serves the D4IoT API where the real one does
SENSOR_CONFIG_DIR = "sensor-config"


def _labctl_argv(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "labctl", *args)


def persona_path(loaded: LoadedPlaybook, persona: str) -> Path:
    """``<playbook dir>/devices/<persona>.yaml``, else the packaged ``playbooks/devices``."""
    from labctl.core.assets import asset_path
    from labctl.traffic.persona import persona_file

    # persona_file refuses a name that is a path or resolves outside its folder
    local = persona_file(loaded.base_dir / "devices", persona)
    if local.is_file():
        return local
    return persona_file(asset_path("playbooks", "devices"), persona)


# -- emulator processes, named by the device kind's driver ----------------------------------
def router_emulator(kind: str, req: EmulatorRequest) -> EmulatorProcess:
    return get_router_driver(kind).emulator_process(req)


def sensor_emulator(kind: str, req: EmulatorRequest) -> EmulatorProcess:
    return get_sensor_driver(kind).emulator_process(req)


class _Builder:
    """One method per playbook section; each adds its part of the topology."""

    def __init__(self, loaded: LoadedPlaybook, state_dir: Path) -> None:
        self.loaded = loaded
        self.pb: Playbook = loaded.model
        self.state_dir = state_dir
        self.twin: TwinSection = self.pb.twin if self.pb.twin is not None else TwinSection()
        lab = self.pb.lab
        t = self.t = Topology(lab=lab, manage_resolv=etc_netns_writable(),
                              resolv=resolv_conf(lab, [str(a) for a in self.twin.dns_forwarders]))
        self.host = t.host_ns = f"{lab}-host"
        self.rtr = t.router_ns = f"{lab}-rtr"
        self.wan = t.wan_ns = f"{lab}-wan"
        t.namespaces = [self.host, self.rtr, self.wan]
        self.owners: dict[str, str] = {self.host: "the host", self.rtr: "the router",
                                       self.wan: "the WAN"}
        for ns in t.namespaces:
            t.sysctls[ns] = {}
        t.sysctls[self.host]["net.ipv4.ip_forward"] = "1"
        t.sysctls[self.rtr]["net.ipv4.ip_forward"] = "1"
        self.bridges: dict[str, Bridge] = {}  # switch name (lower case) -> bridge
        self.iot = self.pb.router.iot_network if self.pb.router else None
        self.iot_bridge: Bridge | None = None
        self.iot_gw: ipaddress.IPv4Address | None = None
        self.monitor_ports: dict[str, str] = {}  # bridge name -> mirror target port
        self.gw_for: dict[str, str] = {}  # bridge name -> default gateway of its members
        wan_net = self.twin.wan_router.network
        self.isp_ip = next(h for h in wan_net.hosts() if h != self.twin.wan_router.ip)
        self.wan_ip = (str(self.twin.wan_services[0].ip) if self.twin.wan_services
                       else str(self.isp_ip))

    def add_ns(self, name: str, what: str, key: str) -> str:
        ns = f"{self.pb.lab}-{sanitize(name)}"
        if ns in self.owners:
            raise ConfigError(f"{what} {name!r} maps to namespace {ns!r}, already used by "
                              f"{self.owners[ns]}", file=self.loaded.path, key=key,
                              hint="give it another name")
        self.owners[ns] = what
        self.t.namespaces.append(ns)
        self.t.sysctls[ns] = {}
        return ns

    # -- switches: bridges in the host namespace -----------------------------------------
    def switches(self) -> None:
        pb, t = self.pb, self.t
        for i, sw in enumerate(pb.switches):
            addrs: tuple[str, ...] = ()
            if sw.host_ip is not None and (sw.type == "internal" or sw.allow_management_os):
                addrs = (str(sw.host_ip),)
            net = sw.network
            vlan = sw.vlan
            if self.iot is not None and net is not None and net == self.iot.subnet \
                    and vlan is None:
                vlan = self.iot.vlan
            br = Bridge(ns=self.host, name=ifname(f"br{i}", sw.name), switch=sw.name,
                        addrs=addrs, vlan=vlan, subnet=str(net) if net else None,
                        span_source=sw.span_source)
            self.bridges[sw.name.lower()] = br
            t.bridges.append(br)
            if net is not None:
                t.networks.append(net)

    # -- twin: main LAN (host uplink <-> router LAN) and WAN (router <-> ISP) ------------
    def uplinks(self) -> None:
        t, twin = self.t, self.twin
        t.veths.append(Veth(a_ns=self.host, a_name="uplink", b_ns=self.rtr, b_name="lan0",
                            a_addrs=(str(twin.main_lan_host),),
                            b_addrs=(str(twin.main_lan_router),), role="main-lan"))
        wan_net = twin.wan_router.network
        t.veths.append(Veth(a_ns=self.rtr, a_name="wan0", b_ns=self.wan, b_name="isp0",
                            a_addrs=(str(twin.wan_router),),
                            b_addrs=(f"{self.isp_ip}/{wan_net.prefixlen}",), role="wan"))
        for svc in twin.wan_services:
            t.addrs.append(ExtraAddr(ns=self.wan, dev="lo", cidr=f"{svc.ip}/32"))
        t.routes.append(Route(ns=self.host, dest="default", via=str(twin.main_lan_router.ip)))
        t.routes.append(Route(ns=self.rtr, dest="default", via=str(self.isp_ip)))
        t.networks.extend([twin.main_lan_router.network, wan_net])
        for svc in twin.wan_services:
            if svc.network not in t.networks:
                t.networks.append(svc.network)

    # -- switches[].nat: NetNat as masquerade in the host; the router masquerades to the WAN
    def nat(self) -> None:
        rules = [f"    ip saddr {sw.nat.prefix} oifname \"uplink\" masquerade "
                 f"comment \"@FP@\"\n" for sw in self.pb.switches if sw.nat is not None]
        head = ("  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n")
        if rules:
            self.t.nft.append(NftTable(ns=self.host, family="ip", name=NFT_TABLE,
                                       body=head + "".join(rules) + "  }\n"))
        self.t.nft.append(NftTable(ns=self.rtr, family="ip", name=NFT_TABLE, body=(
            head + "    oifname \"wan0\" masquerade comment \"@FP@\"\n  }\n")))

    # -- router.iot_network: the router's IoT interface on the IoT switch -----------------
    def router_iot(self) -> None:
        iot, pb, t = self.iot, self.pb, self.t
        if iot is None:
            return
        for sw in pb.switches:
            if sw.network == iot.subnet or (sw.network is None and sw.vlan == iot.vlan):
                self.iot_bridge = self.bridges[sw.name.lower()]
                break
        if self.iot_bridge is None:
            for sw in pb.switches:
                if sw.span_source:
                    self.iot_bridge = self.bridges[sw.name.lower()]
                    break
        if self.iot_bridge is None:
            t.warnings.append(f"no switch carries the IoT network {iot.subnet}; the router has "
                              "no IoT interface")
            return
        self.iot_gw = iot.gateway_ip
        t.veths.append(Veth(a_ns=self.host, a_name="r-iot", a_master=self.iot_bridge.name,
                            b_ns=self.rtr, b_name="iot0",
                            b_addrs=(f"{self.iot_gw}/{iot.subnet.prefixlen}",),
                            role="router-iot"))
        if iot.subnet not in t.networks:
            t.networks.append(iot.subnet)

    # -- vms: one namespace each, NICs in playbook order (eth0, eth1...) -------------------
    def vms(self) -> None:
        for i, vm in enumerate(self.pb.vms):
            self._vm(i, vm)

    def _vm(self, i: int, vm: VM) -> None:
        pb, t = self.pb, self.t
        ns = self.add_ns(vm.name, f"VM {vm.name}", f"vms.{i}.name")
        for j, nic in enumerate(vm.nics):
            br = self.bridges[nic.switch.lower()]
            port = ifname(f"v{i}n{j}", vm.name)
            inner = f"eth{j}"
            is_monitor = nic.port_mirroring == "destination" or nic.role == "monitor"
            addrs = (str(nic.ip),) if nic.ip is not None and not is_monitor else ()
            t.veths.append(Veth(a_ns=self.host, a_name=port,
                                a_master=None if (is_monitor and br.span_source) else br.name,
                                b_ns=ns, b_name=inner, b_addrs=addrs,
                                b_mac=nic.mac.replace("-", ":").lower() if nic.mac else None,
                                role="monitor" if is_monitor else "vm"))
            if is_monitor and br.span_source and br.name not in self.monitor_ports:
                self.monitor_ports[br.name] = port
            if nic.gateway is not None and not is_monitor and \
                    not any(r.ns == ns and r.dest == "default" for r in t.routes):
                t.routes.append(Route(ns=ns, dest="default", via=str(nic.gateway)))
            if pb.sensor is not None and pb.sensor.vm and pb.sensor.vm.lower() == vm.name.lower():
                t.sensor_ns = ns
                if is_monitor and t.sensor_monitor_if is None:
                    t.sensor_monitor_if = inner

    def _gateways(self) -> None:
        """Default gateway of a bridge's members: the router on the IoT bridge, else the
        host's address on the switch."""
        if self.iot_bridge is not None and self.iot_gw is not None:
            self.gw_for[self.iot_bridge.name] = str(self.iot_gw)
        for sw in self.pb.switches:
            b = self.bridges[sw.name.lower()]
            if b.name not in self.gw_for and sw.host_ip is not None and b.addrs:
                self.gw_for[b.name] = str(sw.host_ip.ip)

    # -- twin.devices: a namespace and a persona process each -----------------------------
    def devices(self) -> None:
        t, twin, iot = self.t, self.twin, self.iot
        self._gateways()
        for k, dev in enumerate(twin.devices):
            ns = self.add_ns(dev.name, f"device {dev.name}", f"twin.devices.{k}.name")
            br = self.bridges[dev.switch.lower()]
            isolated = bool(iot is not None and iot.ap_isolation and self.iot_bridge is not None
                            and br.name == self.iot_bridge.name)
            t.veths.append(Veth(a_ns=self.host, a_name=ifname(f"d{k}", dev.name),
                                a_master=br.name, b_ns=ns, b_name="eth0",
                                b_addrs=(str(dev.ip),),
                                b_mac=dev.mac.lower() if dev.mac else None, role="device",
                                a_isolated=isolated))
            gw = self.gw_for.get(br.name)
            if gw and gw != str(dev.ip.ip):
                t.routes.append(Route(ns=ns, dest="default", via=gw))
            path = persona_path(self.loaded, dev.persona)
            if not path.is_file():
                raise ConfigError(f"persona {dev.persona!r} not found (looked for {path})",
                                  file=self.loaded.path, key=f"twin.devices.{k}.persona",
                                  hint="add playbooks/devices/<persona>.yaml")
            tcp = [lst.port for lst in load_persona(path).listeners if lst.proto == "tcp"]
            t.processes.append(Process(
                name=f"device-{sanitize(dev.name)}", ns=ns, kind="persona",
                ready=(str(dev.ip.ip), tcp[0]) if tcp else None,
                argv=_labctl_argv("twin", "run-persona", "--persona", str(path),
                                  "--name", dev.name, "--wan", self.wan_ip,
                                  "--irc-port", str(twin.irc_port))))

    # -- twin.scanner ----------------------------------------------------------------------
    def scanner(self) -> None:
        sc, t = self.twin.scanner, self.t
        if sc is None:
            return
        ns = self.add_ns(sc.name, f"scanner {sc.name}", "twin.scanner.name")
        t.scanner_ns = ns
        br = self.bridges[sc.switch.lower()]
        t.veths.append(Veth(a_ns=self.host, a_name=ifname("s", sc.name), a_master=br.name,
                            b_ns=ns, b_name="eth0", b_addrs=(str(sc.ip),), role="scanner"))
        gw = self.gw_for.get(br.name)
        if gw and gw != str(sc.ip.ip):
            t.routes.append(Route(ns=ns, dest="default", via=gw))

    # -- switches[].span_source: every member port -> the monitor port --------------------
    def mirrors(self) -> None:
        t = self.t
        for br in t.bridges:
            if not br.span_source:
                continue
            target = self.monitor_ports.get(br.name)
            if target is None:
                t.warnings.append(f"switch {br.switch} is a SPAN source but no VM NIC on it is "
                                  "a mirror destination; nothing is mirrored")
                continue
            for v in t.veths:
                if v.a_master == br.name:
                    t.mirrors.append(Mirror(ns=self.host, port=v.a_name, target=target,
                                            switch=br.switch))

    # -- the WAN services, router: (its emulator) and sensor: (its emulator) ---------------
    def wan_services(self) -> None:
        self.t.processes.insert(0, Process(
            name="wan", ns=self.wan, kind="wan", ready=(self.wan_ip, self.twin.irc_port),
            argv=_labctl_argv("twin", "run-wan", "--irc-port", str(self.twin.irc_port))))

    def router(self) -> None:
        router, iot = self.pb.router, self.iot
        if router is None:
            return
        https = router.url.startswith("https")
        port = urlparse(router.url).port or (443 if https else 80)
        interfaces: dict[str, str] = {}
        if iot is not None and self.iot_bridge is not None:
            interfaces[str(iot.vlan)] = "iot0"
        # the router emulator accepts the password labctl logs in with: the playbook's
        # variable when set, else the twin's own (labctl.netns.credentials). Only the
        # variable's name is on the command line; the provider puts the value in the child's
        # environment.
        req = EmulatorRequest(listen_ip=str(self.twin.main_lan_router.ip), port=port,
                              https=https, state_path=self.state_dir / "router-nvram.json",
                              interfaces=interfaces, password_env=ROUTER_PASSWORD_ENV)
        em = router_emulator(router.kind, req)
        self.t.processes.insert(1, Process(name="router", ns=self.rtr, kind="router",
                                           ready=em.ready, argv=_labctl_argv(*em.args)))

    def sensor(self) -> None:
        pb, t = self.pb, self.t
        sensor = pb.sensor
        sensor_vm = pb.vm(sensor.vm) if sensor is not None and sensor.vm else None
        if sensor_vm is not None and not sensor_vm.start:
            t.warnings.append(f"VM {sensor_vm.name} has start: false; the embedded sensor is "
                              "not started")
            return
        # only an embedded sensor runs inside the twin; a d4iot sensor is an appliance
        if sensor is None or sensor.kind != "embedded" or not t.sensor_ns:
            return
        if t.sensor_monitor_if is None:
            t.warnings.append("the sensor VM has no monitor NIC; the embedded sensor is not "
                              "started")
            return
        req = EmulatorRequest(listen_ip=str(sensor.management_ip), port=SENSOR_PORT,
                              https=True, state_path=self.state_dir / "sensor",
                              capture_interface=t.sensor_monitor_if,
                              config_file=self.sensor_config())
        em = sensor_emulator(sensor.kind, req)
        t.processes.insert(1, Process(name="sensor", ns=t.sensor_ns, kind="sensor",
                                      ready=em.ready, argv=_labctl_argv(*em.args)))

    def sensor_config(self) -> Path:
        """The embedded sensor's engines file for this playbook (recorded, not written)."""
        from labctl.sensor.config import effective_engines, render_engines

        sensor = self.pb.sensor
        assert sensor is not None
        data = effective_engines(sensor.engines, learning_mode=sensor.learning_mode,
                                 authorized_scanners=[str(a) for a in
                                                      sensor.authorized_scanners])
        text, digest = render_engines(
            data, note=f"the embedded sensor of lab {self.pb.lab}, from {self.loaded.path} "
                       "(sensor.engines, sensor.learning_mode, sensor.authorized_scanners)")
        path = self.state_dir / SENSOR_CONFIG_DIR / f"engines-{digest[:16]}.yaml"
        self.t.files[path] = text
        return path

    # -- last: IPv6 off everywhere, segments for status and --json ------------------------
    def finish(self) -> Topology:
        t = self.t
        for ns in t.namespaces:
            t.sysctls[ns].update(IPV6_OFF)
        for br in t.bridges:  # the VLAN id stays in the model
            t.segments.append({"switch": br.switch, "bridge": br.name, "netns": br.ns,
                               "subnet": br.subnet, "vlan": br.vlan,
                               "span_source": br.span_source,
                               "mirror_to": self.monitor_ports.get(br.name)})
        return t


def write_sensor_config(state_dir: Path, path: Path, text: str) -> Path:
    """Write ``path`` (in ``<state>/sensor-config/``) if its content differs (0600, through a
    new temporary file in that folder, then renamed); earlier versions are removed."""
    folder = path.parent
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        if not (path.is_file() and not path.is_symlink()
                and path.read_text(encoding="utf-8") == text):
            fd, tmp = tempfile.mkstemp(prefix=".engines-", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        for old in folder.glob("engines-*.yaml"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as e:
        raise LabctlError(f"cannot write the embedded sensor's configuration {path}: "
                          f"{e.strerror or e}",
                          hint="check that the lab's state folder is writable") from None
    return path


def build(loaded: LoadedPlaybook, state_dir: Path) -> Topology:
    """Desired state of the twin for ``loaded`` (a ``provider: netns`` playbook)."""
    b = _Builder(loaded, state_dir)
    b.switches()
    b.uplinks()
    b.nat()
    b.router_iot()
    b.vms()
    b.devices()
    b.scanner()
    b.mirrors()
    b.wan_services()
    b.router()
    b.sensor()
    return b.finish()


def labctl_env() -> dict[str, str]:
    """Environment for supervised ``python -m labctl`` children (works from a checkout)."""
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
