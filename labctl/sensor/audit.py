"""``labctl sensor audit``: look at a D4IoT OT sensor through its admin CLI over SSH.

The admin CLI (Microsoft's "CLI command reference from OT network sensors",
https://learn.microsoft.com/azure/defender-for-iot/organizations/cli-ot-sensor) is not a POSIX
shell: it is an interactive program with a ``shell>`` prompt. So the audit opens an
interactive channel (a PTY and a shell), reads until the prompt, sends one command at a time
and reads its output until the prompt comes back. It runs only documented, read-only commands:

- ``system version``: ``Version: 22.2.5.9-r-2121448``;
- ``system sanity``: one ``[+] <service> | Running for <uptime>`` line per service and a
  final ``System is UP! (<profile>)``;
- ``network list`` (``ifconfig`` output), twice, ``interval`` seconds apart: interfaces with
  ``PROMISC`` in their flags are the monitor interfaces, and a rising ``RX packets`` counter
  on one proves the mirror feeds it.

The OS base and kernel: none of these commands prints them. The audit reads them from the
text the sensor sends before its first prompt, when that text holds Debian's
``uname -snrvm`` motd line (``Linux <host> <release> #1 SMP Debian <upstream>-<rev> ...``);
otherwise the caller may pass them (``kernel=``, the ``--kernel`` option), and else they are
reported unknown. The kernel's upstream version is checked against ``sensor/cves.yaml``.

Exit code 4 (:attr:`AuditReport.exit_code`) when the mirror is dead (no PROMISC interface, or
no RX counter rising on any) or a known CVE applies.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.core.errors import ConfigError, ConnectTimeout, TransportError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from labctl.core.context import LabContext
    from labctl.transport.sshexec import SshTarget

log = logging.getLogger(__name__)

PROMPT = "shell>"
COMMANDS = ("system version", "system sanity", "network list")
MAX_OUTPUT = 1 << 20  # bytes one command may print before the audit gives up on it
COMMAND_TIMEOUT = 60.0
DEFAULT_INTERVAL = 5.0
#: the kernel series of Debian's stable releases (Debian's release notes)
DEBIAN_SERIES = {"4.9": "Debian 9 (Stretch)", "4.19": "Debian 10 (Buster)",
                 "5.10": "Debian 11 (Bullseye)", "6.1": "Debian 12 (Bookworm)",
                 "6.12": "Debian 13 (Trixie)"}

#: the Debian suite whose kernels are of each upstream series (for ``debian_fixed``)
DEBIAN_SUITE = {"4.9": "stretch", "4.19": "buster", "5.10": "bullseye", "6.1": "bookworm",
                "6.12": "trixie"}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]")
_VERSION = re.compile(r"^\s*Version:\s*(\S+)", re.M)
_SERVICE = re.compile(r"^\s*\[(?P<mark>[^\]]{1,2})\]\s*(?P<name>[^|]+?)\s*\|\s*(?P<detail>.*?)\s*$",
                      re.M)
_UP = re.compile(r"System is UP!\s*(?:\((?P<profile>[^)]*)\))?")
_IFACE = re.compile(r"^(?P<name>[^\s:]+):\s+flags=\d+<(?P<flags>[^>]*)>", re.M)
_RX = re.compile(r"RX packets[:\s]+(?P<packets>\d+)\s+bytes[:\s]+(?P<bytes>\d+)")
_INET = re.compile(r"\binet\s+(?:addr:)?(?P<ip>\d+\.\d+\.\d+\.\d+)")
_UNAME = re.compile(r"^Linux\s+\S+\s+(?P<release>\S+)\s+#\S+.*?\bDebian\s+"
                    r"(?P<upstream>\d+\.\d+(?:\.\d+)?)-(?P<rev>[\w.+~]+)", re.M)


# ---- parsing the documented outputs --------------------------------------------------------

@dataclass(frozen=True)
class Service:
    name: str
    running: bool
    detail: str


@dataclass(frozen=True)
class Interface:
    name: str
    flags: tuple[str, ...]
    rx_packets: int | None
    rx_bytes: int | None
    inet: str | None = None

    @property
    def promisc(self) -> bool:
        return "PROMISC" in self.flags


def clean(text: str) -> str:
    """Terminal output as text: ANSI escapes dropped, CR LF as LF."""
    return _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


def parse_version(text: str) -> str | None:
    m = _VERSION.search(text)
    return m.group(1) if m else None


def parse_sanity(text: str) -> tuple[list[Service], bool, str | None]:
    """``system sanity`` -> (services, the system says it is up, its profile)."""
    services = [Service(m["name"].strip(), m["mark"].strip() == "+" and
                        m["detail"].lower().startswith("running"), m["detail"].strip())
                for m in _SERVICE.finditer(text)]
    up = _UP.search(text)
    return services, up is not None, (up["profile"] if up and up["profile"] else None)


def parse_network_list(text: str) -> list[Interface]:
    """``network list`` (ifconfig blocks) -> interfaces with flags and RX counters."""
    heads = list(_IFACE.finditer(text))
    out: list[Interface] = []
    for i, h in enumerate(heads):
        block = text[h.end():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        rx = _RX.search(block)
        inet = _INET.search(block)
        out.append(Interface(h["name"], tuple(f.strip().upper() for f in h["flags"].split(",")
                                              if f.strip()),
                             int(rx["packets"]) if rx else None,
                             int(rx["bytes"]) if rx else None, inet["ip"] if inet else None))
    return out


def parse_uname(text: str) -> tuple[str | None, str | None, str | None]:
    """Debian's motd ``uname -snrvm`` line -> (release, upstream version, OS base)."""
    m = _UNAME.search(text)
    if not m:
        return None, None, None
    upstream = m["upstream"]
    series = ".".join(upstream.split(".")[:2])
    return m["release"], upstream, DEBIAN_SERIES.get(series, "Debian")


def parse_debian_package(text: str) -> tuple[str | None, str | None]:
    """Debian's motd ``uname`` line -> (suite, kernel package version), e.g. ("bullseye",
    "5.10.92-2"); (None, None) without one."""
    m = _UNAME.search(text)
    if not m:
        return None, None
    series = ".".join(m["upstream"].split(".")[:2])
    return DEBIAN_SUITE.get(series), f"{m['upstream']}-{m['rev']}"


def _dpkg_part_cmp(a: str, b: str) -> int:
    """dpkg's verrevcmp for one part (upstream or revision): non-digits lexically with ``~``
    before everything (letters before other characters), digits numerically."""

    def order(c: str) -> int:
        if c == "~":
            return -1
        if c.isdigit():
            return 0
        if c.isalpha():
            return ord(c)
        return ord(c) + 256

    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += i < len(a) and not a[i].isdigit()
            j += j < len(b) and not b[j].isdigit()
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


def debian_version_cmp(a: str, b: str) -> int:
    """Compare two Debian package versions (``[epoch:]upstream[-revision]``) like dpkg."""

    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        up, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), up, rev

    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _dpkg_part_cmp(ua, ub) or _dpkg_part_cmp(ra, rb)


# ---- the CVE table --------------------------------------------------------------------------

Version = tuple[int, ...]


def parse_kernel_version(text: str) -> Version:
    """``5.10.158`` or ``5.10.0-20-amd64`` -> (5, 10, 158) / (5, 10, 0)."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise UsageError(f"{text!r} is not a kernel version",
                         hint="give the upstream version, e.g. 5.10.158")
    return int(m[1]), int(m[2]), int(m[3] or 0)


@dataclass(frozen=True)
class KnownCve:
    cve: str
    name: str
    summary: str
    introduced: Version
    fixed: tuple[Version, ...]
    sources: tuple[str, ...]
    debian_tracker: str | None = None
    #: suite -> the first fixed Debian kernel package version (a backport below upstream's)
    debian_fixed: Mapping[str, str] = field(default_factory=dict)

    def affects_debian(self, suite: str | None, package: str | None) -> bool | None:
        """By the Debian package version when this row knows the suite's fix, else None."""
        fixed = self.debian_fixed.get(suite or "")
        if fixed is None or package is None:
            return None
        return debian_version_cmp(package, fixed) < 0

    def affects(self, v: Version) -> bool:
        if v < self.introduced:
            return False
        for f in self.fixed:
            if f[:2] == v[:2]:
                return v < f
        return not (self.fixed and v > max(self.fixed))


def load_cves(path: Path | None = None) -> list[KnownCve]:
    """Read the sourced CVE table; a bad row is a ConfigError naming the file, key and
    line."""
    from labctl.core.assets import asset_path
    from labctl.core.yamlfile import load_yaml

    path = path or asset_path("sensor", "cves.yaml")
    doc = load_yaml(path)
    rows = doc.data.get("cves") if isinstance(doc.data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError("expected a mapping with a 'cves' list", file=str(path),
                          key="cves", line=doc.line_of(("cves",)))
    out: list[KnownCve] = []
    for i, row in enumerate(rows):

        def bad(msg: str, key: str | None = None, i: int = i) -> ConfigError:
            loc: tuple[str | int, ...] = ("cves", i, key) if key else ("cves", i)
            return ConfigError(msg, file=str(path), key=f"cves[{i}]" + (f".{key}" if key
                                                                         else ""),
                               line=doc.line_of(loc))

        if not isinstance(row, dict):
            raise bad("a row is a mapping")
        for k in ("cve", "name", "summary", "introduced", "fixed", "sources"):
            if k not in row:
                raise bad(f"missing key {k!r}")
        srcs = row["sources"]
        if not isinstance(srcs, list) or not srcs or not all(
                isinstance(x, str) and x.startswith("https://") for x in srcs):
            raise bad("every row needs a list of https:// sources", "sources")
        if not isinstance(row["fixed"], list):
            raise bad("a list of the first fixed release of each stable branch", "fixed")
        try:
            introduced = parse_kernel_version(str(row["introduced"]))
        except UsageError as e:
            raise bad(e.message, "introduced") from None
        try:
            fixed = tuple(parse_kernel_version(str(f)) for f in row["fixed"])
        except UsageError as e:
            raise bad(e.message, "fixed") from None
        tracker = row.get("debian_tracker")
        deb = row.get("debian_fixed") or {}
        if not isinstance(deb, dict) or not all(
                isinstance(k, str) and isinstance(v, str)
                and re.fullmatch(r"\d+\.\d+(?:\.\d+)?-[\w.+~]+", v) for k, v in deb.items()):
            raise bad("a mapping of Debian suite to package version, e.g. "
                      "{bullseye: 5.10.92-2}", "debian_fixed")
        out.append(KnownCve(cve=str(row["cve"]), name=str(row["name"]),
                            summary=str(row["summary"]), introduced=introduced, fixed=fixed,
                            sources=tuple(srcs),
                            debian_tracker=str(tracker) if tracker else None,
                            debian_fixed=dict(deb)))
    return out


# ---- the report -----------------------------------------------------------------------------

@dataclass
class CveFinding:
    cve: str
    name: str
    affected: bool | None  # None: the kernel is unknown
    sources: tuple[str, ...]
    note: str = ""


@dataclass
class AuditReport:
    target: str
    version: str | None = None
    system_up: bool = False
    profile: str | None = None
    services: list[Service] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    rx_delta: dict[str, int | None] = field(default_factory=dict)
    interval: float = 0.0
    os_base: str | None = None
    kernel: str | None = None
    kernel_source: str = "unknown"
    cves: list[CveFinding] = field(default_factory=list)

    @property
    def monitor_interfaces(self) -> list[str]:
        return [i.name for i in self.interfaces if i.promisc]

    @property
    def fed_interfaces(self) -> list[str]:
        return [n for n in self.monitor_interfaces if (self.rx_delta.get(n) or 0) > 0]

    @property
    def mirror_alive(self) -> bool:
        return bool(self.fed_interfaces)

    @property
    def services_down(self) -> list[str]:
        return [s.name for s in self.services if not s.running]

    @property
    def known_cves(self) -> list[str]:
        return [c.cve for c in self.cves if c.affected]

    @property
    def problems(self) -> list[str]:
        out: list[str] = []
        if not self.monitor_interfaces:
            out.append("no interface is in PROMISC mode: the sensor monitors nothing")
        elif not self.mirror_alive:
            out.append(f"no RX packets on {', '.join(self.monitor_interfaces)} in "
                       f"{self.interval:g} s: the mirror does not feed the sensor")
        if not self.system_up:
            out.append("system sanity did not report 'System is UP!'")
        if self.services_down:
            out.append(f"services not running: {', '.join(self.services_down)}")
        for c in self.cves:
            if c.affected:
                out.append(f"kernel {self.kernel} is affected by {c.cve} ({c.name})")
        return out

    @property
    def exit_code(self) -> int:
        """4 (a failed check) when the mirror is dead or a known CVE applies, else 0."""
        return 4 if (not self.mirror_alive or self.known_cves) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "version": self.version, "system_up": self.system_up,
            "profile": self.profile,
            "services": [asdict(s) for s in self.services],
            "interfaces": [{"name": i.name, "flags": list(i.flags), "promisc": i.promisc,
                            "rx_packets": i.rx_packets, "rx_bytes": i.rx_bytes,
                            "rx_delta": self.rx_delta.get(i.name), "inet": i.inet}
                           for i in self.interfaces],
            "interval_seconds": self.interval,
            "monitor_interfaces": self.monitor_interfaces,
            "mirror_alive": self.mirror_alive,
            "os_base": self.os_base, "kernel": self.kernel, "kernel_source": self.kernel_source,
            "cves": [{"cve": c.cve, "name": c.name, "affected": c.affected,
                      "sources": list(c.sources), "note": c.note} for c in self.cves],
            "problems": self.problems, "exit_code": self.exit_code,
        }


def check_kernel(kernel: str | None, table: Iterable[KnownCve], *,
                 debian_suite: str | None = None,
                 debian_package: str | None = None) -> list[CveFinding]:
    """Each row against the kernel: by its Debian package version where the row knows that
    suite's (backported) fix, else by the upstream version."""
    if kernel is None:
        return [CveFinding(c.cve, c.name, None, c.sources, "kernel version unknown")
                for c in table]
    v = parse_kernel_version(kernel)
    out = []
    for c in table:
        by_deb = c.affects_debian(debian_suite, debian_package)
        if by_deb is not None:
            fixed = c.debian_fixed[debian_suite or ""]
            note = (f"by the Debian package {debian_package} against {debian_suite}'s fix in "
                    f"{fixed}")
            out.append(CveFinding(c.cve, c.name, by_deb, c.sources, note))
            continue
        hit = c.affects(v)
        note = ""
        if hit and c.debian_tracker:
            note = (f"by upstream version; a distribution backport may fix it at a lower "
                    f"number: see {c.debian_tracker}")
        out.append(CveFinding(c.cve, c.name, hit, c.sources, note))
    return out


# ---- the interactive admin CLI --------------------------------------------------------------

class AdminCli:
    """One SSH login to the sensor's admin CLI, driven through an interactive channel."""

    def __init__(self, target: SshTarget, *, via: SshTarget | None = None,
                 timeout: float = COMMAND_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.via = via
        self._stack = ExitStack()
        self.timeout = timeout
        self.clock = clock
        self.banner = ""
        self._client: Any = None
        self._chan: Any = None

    def __enter__(self) -> AdminCli:
        from labctl.transport.sshexec import connect_client
        from labctl.transport.tunnel import ssh_through

        if self.via is not None:
            self._client = self._stack.enter_context(ssh_through(self.via, self.target))
        else:
            self._client = connect_client(self.target)
        try:
            transport = self._client.get_transport()
            chan = transport.open_session(timeout=self.target.timeout)
            chan.get_pty(term="dumb", width=200, height=50)
            chan.invoke_shell()
            self._chan = chan
            self.banner = self._read_until_prompt("the login")
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._chan is not None:
            try:
                self._chan.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                log.debug("closing the admin CLI channel failed")
            self._chan = None
        if self._client is not None:
            self._client.close()
            self._client = None
        self._stack.close()

    def run(self, command: str) -> str:
        """Send one command, return its output (the echoed command and prompt removed)."""
        if "\n" in command or "\r" in command:
            raise UsageError("one admin CLI command per call")
        self._chan.sendall((command + "\n").encode("utf-8"))
        out = self._read_until_prompt(repr(command))
        lines = out.split("\n")
        if lines and lines[0].strip().endswith(command):
            lines = lines[1:]
        return "\n".join(lines).strip("\n")

    def _read_until_prompt(self, what: str) -> str:
        import select

        buf = b""
        deadline = self.clock() + self.timeout
        while True:
            text = clean(buf.decode("utf-8", errors="replace"))
            last = text.rstrip(" ").rsplit("\n", 1)[-1].strip()
            if last == PROMPT:
                return text.rstrip(" ")[: -len(PROMPT)].rstrip("\n ")
            left = deadline - self.clock()
            if left <= 0:
                raise ConnectTimeout(f"{self.target.where}: no '{PROMPT}' prompt after {what} "
                                     f"within {self.timeout:g} s",
                                     hint="is this the sensor's admin CLI? log in as admin "
                                          "with ssh and check the prompt")
            ready, _, _ = select.select([self._chan], [], [], min(left, 0.5))
            if not ready:
                continue
            chunk = self._chan.recv(65536)
            if not chunk:
                raise TransportError(f"{self.target.where} closed the admin CLI session "
                                     f"while waiting for {what}",
                                     hint="the admin user may lack CLI access, or the "
                                          "command ended the session")
            buf += chunk
            if len(buf) > MAX_OUTPUT:
                raise TransportError(f"{self.target.where}: more than {MAX_OUTPUT} bytes "
                                     f"after {what} without a '{PROMPT}' prompt")


# ---- the use case ---------------------------------------------------------------------------

def sensor_ssh_target(ctx: LabContext, *, known_hosts: str | None = None,
                      port: int = 22) -> SshTarget:
    """The sensor's admin SSH login from the playbook: ``sensor.management_ip`` (or the host
    of ``sensor.url``), ``sensor.admin_user`` and ``sensor.admin_password`` (shared by SSH
    and the web UI)."""
    from urllib.parse import urlsplit

    from labctl.transport.sshexec import SshTarget

    sensor = ctx.loaded.model.sensor
    if sensor is None:
        raise UsageError(f"{ctx.loaded.path}: the playbook has no sensor: section",
                         hint="add sensor: (management_ip, admin_user, admin_password)")
    host = urlsplit(sensor.base_url).hostname or str(sensor.management_ip)
    password = sensor.admin_password.resolve(f"password of {sensor.admin_user} on the sensor",
                                             ctx.prompt_fn)
    return SshTarget(user=sensor.admin_user, host=host, port=port, known_hosts=known_hosts,
                     password=password, timeout=30.0)


def jump_host(ctx: LabContext) -> SshTarget | None:
    """The Hyper-V host's SSH login when ``sensor.access`` goes through it (``ssh-tunnel``;
    ``netnat`` too, since it publishes only the web port), else None."""
    pb = ctx.loaded.model
    if pb.sensor is None or pb.sensor.access.mode == "direct":
        return None
    if pb.hyperv is None:
        raise UsageError(f"sensor.access.mode {pb.sensor.access.mode} goes through the "
                         "Hyper-V host, but the playbook has no hyperv: section",
                         hint="add hyperv: (host, user, ssh_key, ssh_known_hosts)")
    from labctl.transport.tunnel import host_ssh_target

    return host_ssh_target(pb.hyperv, ctx.prompt_fn)


def audit_cli(cli: AdminCli, *, interval: float, sleep: Callable[[float], None],
              kernel: str | None = None, table: list[KnownCve] | None = None) -> AuditReport:
    """Run the documented commands on an open admin CLI and build the report."""
    rep = AuditReport(target=cli.target.where, interval=interval)
    rep.version = parse_version(cli.run("system version"))
    rep.services, rep.system_up, rep.profile = parse_sanity(cli.run("system sanity"))
    first = parse_network_list(cli.run("network list"))
    sleep(interval)
    second = {i.name: i for i in parse_network_list(cli.run("network list"))}
    rep.interfaces = [second.get(i.name, i) for i in first]
    for i in first:
        later = second.get(i.name)
        rep.rx_delta[i.name] = (later.rx_packets - i.rx_packets
                                if later and later.rx_packets is not None
                                and i.rx_packets is not None else None)
    release, upstream, os_base = parse_uname(cli.banner)
    if kernel is not None:
        rep.kernel, rep.kernel_source = kernel, "given"
    elif upstream is not None:
        rep.kernel, rep.kernel_source = upstream, f"login banner ({release})"
    rep.os_base = os_base
    suite, package = parse_debian_package(cli.banner) if kernel is None else (None, None)
    rep.cves = check_kernel(rep.kernel, table if table is not None else load_cves(),
                            debian_suite=suite, debian_package=package)
    return rep


def run_audit(ctx: LabContext, *, target: SshTarget | None = None,
              known_hosts: str | None = None, port: int = 22,
              interval: float = DEFAULT_INTERVAL, kernel: str | None = None,
              cves: Path | None = None,
              overrides: Mapping[str, Any] | None = None) -> AuditReport:
    """``labctl sensor audit``: SSH to the sensor's admin CLI and audit it.

    ``target`` replaces the login built from the playbook (tests; another address). When
    ``sensor.access`` goes through the Hyper-V host, the SSH session to the sensor rides a
    ``direct-tcpip`` channel from the host (:func:`labctl.transport.tunnel.ssh_through`).
    Host keys are checked as for every SSH login of labctl: ``known_hosts`` or the user's,
    the sensor's under its own address."""
    if kernel is not None:
        parse_kernel_version(kernel)  # bad input fails before anything is contacted
    if not 1 <= port <= 65535:
        raise UsageError(f"SSH port {port} is out of range", hint="use 1-65535")
    if not 0 < interval <= 600:
        raise UsageError(f"interval {interval:g} s is out of range", hint="use 1-600 seconds")
    table = load_cves(cves)
    tgt = target or sensor_ssh_target(ctx, known_hosts=known_hosts, port=port)
    via = jump_host(ctx)
    with AdminCli(tgt, via=via, clock=ctx.clock, **dict(overrides or {})) as cli:
        return audit_cli(cli, interval=interval, sleep=ctx.sleep, kernel=kernel, table=table)
