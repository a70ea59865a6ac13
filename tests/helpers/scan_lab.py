"""A throwaway scan lab in network namespaces (prefix ``sc``), for real nmap runs.

Layout (nothing is routed to the root namespace; every packet stays in these namespaces)::

    <p>-k  scanner ("Kali"): bridge br0 10.213.0.1/24 + fd00:5c::1/64
           up0: a dead-end veth "uplink" 198.51.100.2/24, default route via 198.51.100.1 (a
                non-lab interface: the route check must refuse targets behind it)
    <p>-tN target N: eth0 10.213.0.(10+N)/24 + fd00:5c::(10+N)/64, veth to br0,
           python listeners with known ports (tests/helpers/scan_listener.py)

``teardown()`` kills the listeners and deletes every namespace (veths go with them).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LISTENER = str(Path(__file__).with_name("scan_listener.py"))
DNS = str(Path(__file__).with_name("scan_dns.py"))
SUBNET = "10.213.0.0/24"
SUBNET6 = "fd00:5c::/64"
SCANNER_IP = "10.213.0.1"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30)


@dataclass
class ScanLab:
    prefix: str
    targets: dict[str, dict[int, str]]  # ip -> {port: kind}
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    etc_dirs: list[Path] = field(default_factory=list)

    @property
    def scanner_ns(self) -> str:
        return f"{self.prefix}-k"

    def target_ns(self, ip: str) -> str:
        return f"{self.prefix}-t{ip.rsplit('.', 1)[1]}"

    @property
    def ips(self) -> list[str]:
        return list(self.targets)

    def ip6(self, ip: str) -> str:
        return f"fd00:5c::{ip.rsplit('.', 1)[1]}"

    def open_ports(self, ip: str) -> list[str]:
        return sorted(f"{p}/tcp" for p in self.targets[ip])

    def add_listener(self, ip: str, port: int, kind: str = "silent") -> None:
        start_listener(self, self.target_ns(ip), {port: kind})
        self.targets[ip][port] = kind

    def drop_port(self, ip: str, port: int) -> None:
        """An nft rule in the target namespace that silently drops one TCP port (filtered)."""
        ns = self.target_ns(ip)
        sh("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "scfilter")
        sh("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "scfilter", "input",
           "{ type filter hook input priority 0 ; policy accept ; }")
        sh("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "scfilter", "input",
           "tcp", "dport", str(port), "drop")

    def lab_dns(self) -> None:
        """Answer the scanner namespace's DNS at once (tests/helpers/scan_dns.py):
        ``ip netns exec`` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf."""
        d = Path("/etc/netns") / self.scanner_ns
        d.mkdir(parents=True, exist_ok=True)
        self.etc_dirs.append(d)
        (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        proc = subprocess.Popen(["ip", "netns", "exec", self.scanner_ns, sys.executable, "-S",
                                 DNS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the test DNS server did not start")

    def teardown(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        for d in self.etc_dirs:
            (d / "resolv.conf").unlink(missing_ok=True)
            try:
                d.rmdir()
            except OSError:
                pass


def start_listener(lab: ScanLab, ns: str, ports: dict[int, str]) -> None:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-S", LISTENER,
            *[f"{p}:{k}" for p, k in ports.items()]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    lab.procs.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"listener in {ns} did not start: {line} {err}")


def make_lab(targets: dict[str, dict[int, str]], prefix: str | None = None,
             uplink: bool = True, macs: dict[str, str] | None = None) -> ScanLab:
    """Build the namespaces and start listeners; on any failure, tear down and re-raise."""
    prefix = prefix or f"sc{secrets.token_hex(2)}{os.getpid() % 100:02d}"
    lab = ScanLab(prefix, {ip: dict(p) for ip, p in targets.items()})
    try:
        k = lab.scanner_ns
        sh("ip", "netns", "add", k)
        lab.namespaces.append(k)
        sh("ip", "-n", k, "link", "set", "lo", "up")
        sh("ip", "-n", k, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        sh("ip", "-n", k, "addr", "add", f"{SCANNER_IP}/24", "dev", "br0")
        sh("ip", "-n", k, "addr", "add", "fd00:5c::1/64", "dev", "br0", "nodad")
        sh("ip", "-n", k, "link", "set", "br0", "up")
        if uplink:
            # a veth whose peer stays in the same namespace, unconfigured: a dead-end
            # "uplink" (the kernel has no dummy module everywhere)
            sh("ip", "-n", k, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
            sh("ip", "-n", k, "link", "set", "up0p", "up")
            sh("ip", "-n", k, "addr", "add", "198.51.100.2/24", "dev", "up0")
            sh("ip", "-n", k, "link", "set", "up0", "up")
            sh("ip", "-n", k, "route", "add", "default", "via", "198.51.100.1")
        for ip, ports in targets.items():
            n = ip.rsplit(".", 1)[1]
            ns = lab.target_ns(ip)
            sh("ip", "netns", "add", ns)
            lab.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", f"{prefix}v{n}", "netns", k, "type", "veth",
               "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", k, "link", "set", f"{prefix}v{n}", "master", "br0")
            sh("ip", "-n", k, "link", "set", f"{prefix}v{n}", "up")
            if macs and ip in macs:  # a real OUI, so nmap can name the vendor
                sh("ip", "-n", ns, "link", "set", "eth0", "address", macs[ip])
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{lab.ip6(ip)}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            if ports:
                start_listener(lab, ns, ports)
    except BaseException:
        lab.teardown()
        raise
    return lab

