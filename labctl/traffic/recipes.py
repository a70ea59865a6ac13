"""Packet recipes: the small, harmless stimuli `labctl verify-alerts` sends.

Each recipe becomes one nping or nmap command line (nping ships with nmap, so both are on
the scanner wherever nmap is: this machine, the twin's scanner namespace, or the Kali box
over SSH). The sweeps of many addresses use nmap, which probes addresses in parallel (nping
handles one target at a time, about 0.8 s each).

On one Ethernet segment a probe to an address nobody holds never reaches the wire as IP: the
scanner's ARP request goes unanswered, so the sensor sees ARP only (that is ARP Address Scan,
off by default, not Address Scan). ``address-sweep`` therefore shows IP-level address scans
only for targets behind a router.
Building the command is pure: :func:`build` returns the argv and what the recipe touches on
the wire (addresses, ports, packets), which verify-alerts reports against a detection's
threshold when an alert did not fire. Sending is the caller's job, through the scanner's
place, after the scope guard has accepted every address in :attr:`RecipeRun.addresses`.

The recipes:

- ``tcp-connect``: full TCP connections to ``host:port`` (``count`` times; default 3);
- ``port-zero``: TCP SYNs to port 0 of ``host`` (the Port 0 protocol violation);
- ``syn-sweep``: one TCP SYN to each of ports 1..``ports`` of ``host``;
- ``address-sweep``: one TCP SYN to port 80 of each of ``count`` addresses of ``targets``
  (nmap ``-sS -Pn``);
- ``arp-sweep``: one ARP request for each of ``count`` addresses of ``targets`` (nmap
  ``-sn -PR``);
- ``icmp-burst``: ``count`` ICMP echo requests to ``host`` (default 80) at ``rate``;
- ``new-mac``: UDP datagrams to ``host`` from a new device: a random, locally administered
  MAC address and ``source_ip``, an unused address of the lab (it passes the scope guard
  like every other address; replies go to nobody);
- ``udp-canary``: one UDP datagram with a unique payload to ``host:port``.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_RATE = 500.0  # packets per second: fast enough for 2-minute windows, gentle on IoT


@dataclass(frozen=True)
class RecipeRun:
    """One recipe, ready to send: nping's arguments (without the program) and its reach."""

    recipe: str
    args: tuple[str, ...]
    addresses: tuple[str, ...]
    ports: tuple[int, ...] = ()
    packets: int = 0
    payload: str | None = None
    source_mac: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    program: str = "nping"  # nping | nmap

    def describe(self) -> str:
        where = self.addresses[0] if len(self.addresses) == 1 else \
            f"{len(self.addresses)} addresses"
        ports = ""
        if len(self.ports) == 1:
            ports = f" port {self.ports[0]}"
        elif self.ports:
            ports = f" {len(self.ports)} ports"
        return f"{self.recipe} to {where}{ports} ({self.packets} packet(s))"


def expand(targets: Sequence[str], count: int | None, limit: int = 1024) -> list[str]:
    """Addresses from CIDRs, ``a.b.c.d-e`` ranges or plain addresses, first ``count`` hosts.

    ASCII decimal only; the network and broadcast addresses of a CIDR are skipped.
    """
    out: list[str] = []
    for t in targets:
        if not t.isascii():
            raise ValueError(f"target {t!r} is not ASCII")
        if "/" in t:
            net = ipaddress.IPv4Network(t, strict=True)
            hosts = net.hosts() if net.prefixlen < 31 else iter(net)
            for h in hosts:
                out.append(str(h))
                if len(out) >= (count or limit):
                    break
        elif "-" in t.rsplit(".", 1)[-1]:
            base, _, last = t.rpartition(".")
            lo_s, _, hi_s = last.partition("-")
            lo, hi = int(lo_s), int(hi_s)
            if not 0 <= lo <= hi <= 255:
                raise ValueError(f"bad range {t!r}")
            out += [f"{base}.{i}" for i in range(lo, hi + 1)]
        else:
            out.append(str(ipaddress.IPv4Address(t)))
        if len(out) >= (count or limit):
            break
    out = list(dict.fromkeys(out))[: (count or limit)]
    if not out:
        raise ValueError("no addresses to send to")
    return out


def random_mac() -> str:
    """A random unicast, locally administered MAC (02:xx:...): never a real vendor's."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def canary_payload() -> str:
    return "labctl-canary-" + secrets.token_hex(8)


def build(recipe: str, *, host: str | None = None, port: int | None = None,
          ports: int | None = None, count: int | None = None,
          targets: Sequence[str] | None = None, rate: float | None = None,
          payload: str | None = None, source_mac: str | None = None,
          source_ip: str | None = None) -> RecipeRun:
    """The nping arguments of ``recipe`` with its (already resolved) parameters."""
    r = f"{rate or DEFAULT_RATE:g}"
    quiet = ("-H",)  # do not print every probe
    if recipe == "tcp-connect":
        assert host is not None and port is not None
        n = count or 3
        return RecipeRun(recipe, ("--tcp-connect", "-p", str(port), "-c", str(n),
                                  "--rate", r, *quiet, host), (host,), (port,), n)
    if recipe == "port-zero":
        assert host is not None
        n = count or 2
        return RecipeRun(recipe, ("--tcp", "--flags", "syn", "-p", "0", "-c", str(n),
                                  "--rate", r, *quiet, host), (host,), (0,), n)
    if recipe == "syn-sweep":
        assert host is not None and ports is not None
        return RecipeRun(recipe, ("--tcp", "--flags", "syn", "-p", f"1-{ports}", "-c", "1",
                                  "--rate", r, *quiet, host), (host,),
                         tuple(range(1, ports + 1)), ports)
    if recipe in ("address-sweep", "arp-sweep"):
        assert targets is not None
        addrs = expand(targets, count)
        common = ("-n", "--max-retries", "0", "--max-rate", r, "-oN", "-")
        if recipe == "address-sweep":
            args: tuple[str, ...] = ("-sS", "-Pn", "-p", "80", *common, *addrs)
            return RecipeRun(recipe, args, tuple(addrs), (80,), len(addrs), program="nmap")
        args = ("-sn", "-PR", *common, *addrs)
        return RecipeRun(recipe, args, tuple(addrs), (), len(addrs), program="nmap")
    if recipe == "icmp-burst":
        assert host is not None
        n = count or 80
        return RecipeRun(recipe, ("--icmp", "-c", str(n), "--rate", r, *quiet, host),
                         (host,), (), n)
    if recipe == "new-mac":
        assert host is not None and source_ip is not None
        mac = source_mac or random_mac()
        n = count or 3
        src = str(ipaddress.IPv4Address(source_ip))
        return RecipeRun(recipe, ("--udp", "-p", str(port or 9), "--send-eth",
                                  "--source-mac", mac, "--source-ip", src, "-c", str(n),
                                  "--rate", r, *quiet, host), (host, src), (port or 9,), n,
                         source_mac=mac)
    if recipe == "udp-canary":
        assert host is not None
        data = payload or canary_payload()
        p = port or 40000 + secrets.randbelow(20000)
        return RecipeRun(recipe, ("--udp", "-p", str(p), "--data-string", data, "-c", "1",
                                  *quiet, host), (host,), (p,), 1, payload=data)
    raise ValueError(f"unknown recipe {recipe!r}")


# ---------------------------------------------------------------------------- sending

NPING_ENV = "LABCTL_NPING"


@dataclass(frozen=True)
class SendResult:
    argv: tuple[str, ...]
    returncode: int
    started: float
    ended: float
    output: str

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def program_for(run: RecipeRun, override: str | None = None) -> str:
    import os

    if override:
        return override
    if run.program == "nmap":
        return os.environ.get("LABCTL_NMAP") or "nmap"
    return os.environ.get(NPING_ENV) or "nping"


def send(run: RecipeRun, spec: str, *, timeout: float = 60.0,
         ssh_key: str | None = None, program: str | None = None) -> SendResult:
    """Send ``run`` from the scanner's place: ``local``, ``netns:NAME`` or
    ``ssh://user@host[:port]`` (nping there, through ``sudo -n`` when not root).

    The caller has already passed every address of ``run`` through the scope guard.
    """
    import os
    import shutil
    import subprocess
    import time

    from labctl.core.errors import CommandError, PreflightError, ToolMissingError

    prog = program_for(run, program)
    started = time.time()
    if spec.startswith("ssh://"):
        from labctl.transport import sshexec

        target = sshexec.parse_ssh_spec(spec, key_filename=ssh_key)
        rc, out, _ = sshexec.ssh_exec(target, ["sh", "-c", 'command -v "$0"; id -u', prog],
                                      timeout=30)
        lines = [x.strip() for x in out.decode("utf-8", "replace").splitlines() if x.strip()]
        if rc != 0 or len(lines) < 2:
            raise ToolMissingError(f"{run.program} ({prog}) is not installed on {spec}",
                                   hint="it ships with nmap: sudo apt-get install nmap")
        prefix = [lines[0]] if lines[-1] == "0" else ["sudo", "-n", lines[0]]
        argv = [*prefix, *run.args]
        rc, raw, err = sshexec.ssh_exec(target, argv, timeout=timeout)
        text = (raw + err).decode("utf-8", "replace")
        if rc != 0:
            if "password is required" in text or "a terminal is required" in text:
                raise PreflightError(f"{spec} may not run {run.program} as root without a "
                                     "password",
                                     hint=f"add a sudoers rule: <user> ALL=(root) NOPASSWD: "
                                          f"{lines[0]}")
            raise CommandError([f"ssh {spec}", *argv], rc, text)
        return SendResult(tuple(argv), rc, started, time.time(), text)
    if not (shutil.which(prog) or os.path.isfile(prog)):
        raise ToolMissingError(f"{run.program} was not found ({prog})",
                               hint="it ships with nmap: apt-get install nmap")
    argv = [prog, *run.args]
    if spec.startswith("netns:"):
        from labctl.transport.netns import netns_argv, netns_exists

        ns = spec.split(":", 1)[1]
        if not netns_exists(ns):
            raise PreflightError(f"network namespace {ns!r} does not exist",
                                 hint="is the twin up? `ip netns list` shows namespaces")
        argv = netns_argv(ns, argv)
    elif spec != "local":
        raise PreflightError(f"unknown scanner place {spec!r}",
                             hint="use local, netns:NAME or ssh://user@host[:port]")
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            check=False)
    except subprocess.TimeoutExpired:
        raise CommandError(argv, -1, f"timed out after {timeout:g} s") from None
    if cp.returncode != 0:
        raise CommandError(argv, cp.returncode, (cp.stderr or cp.stdout)[-500:])
    return SendResult(tuple(argv), cp.returncode, started, time.time(),
                      cp.stdout + cp.stderr)
