"""Where nmap runs: ``local``, ``netns:NAME`` or ``ssh://user@host[:port]``.

Every scanner runs nmap with an argv list (never a shell string), writes XML to stdout
(``-oX -``) and reports progress from the ``<taskprogress>`` elements that
``--stats-every`` adds to that XML stream, so the same parser serves all three.

The nmap program is ``$LABCTL_NMAP`` if set, else ``nmap`` on PATH. Tests point
``LABCTL_NMAP`` at a recording stand-in to prove the scope guard refuses before nmap starts.

Every scanner checks the argument list against the profile allow-list
(:func:`labctl.scans.nmapargs.check_nmap_args`) once more just before it runs nmap, so
options reach nmap through one gate whether it runs here, in a namespace or over SSH. A
local nmap runs without ``$NMAPDIR`` in its environment, so it loads scripts and data
files only from its own installation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from labctl.core.errors import (
    CommandError,
    LabctlError,
    PreflightError,
    ToolMissingError,
    UsageError,
)
from labctl.scans.nmapargs import check_nmap_args, scan_letters
from labctl.scans.result import NmapRun

if TYPE_CHECKING:
    from labctl.transport.sshexec import SshTarget


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: which pass, which nmap task, how far, seconds left (or None)."""

    phase: str
    task: str
    percent: float
    remaining: float | None = None


ProgressFn = Callable[[ProgressEvent], None]

_TASKPROGRESS = re.compile(r"<taskprogress\b([^>]*)/?>")
_ATTR = re.compile(r'(\w+)="([^"]*)"')
PRIV_MARKERS = ("requires root privileges", "You requested a scan type which requires root")


def parse_progress(line: str, phase: str) -> ProgressEvent | None:
    m = _TASKPROGRESS.search(line)
    if not m:
        return None
    attrs = dict(_ATTR.findall(m.group(1)))
    try:
        pct = float(attrs.get("percent", "0"))
    except ValueError:
        return None
    rem = attrs.get("remaining")
    return ProgressEvent(phase=phase, task=attrs.get("task", ""), percent=pct,
                         remaining=float(rem) if rem and rem.isdigit() else None)


def nmap_program() -> str:
    return os.environ.get("LABCTL_NMAP") or "nmap"


def _privilege_error(where: str, stderr: str) -> PreflightError | None:
    if any(m in stderr for m in PRIV_MARKERS):
        return PreflightError(
            f"nmap on {where} needs root for this scan type (-sS, -sU, -O or raw packets)",
            hint="run labctl as root, grant sudo for nmap, or use a profile with -sT")
    return None


class Scanner(Protocol):
    spec: str

    @property
    def route_netns(self) -> str | None: ...  # namespace for `ip route get`; "" = root ns

    @property
    def checks_routes(self) -> bool: ...

    def run(self, args: list[str], targets: list[str], *, timeout: float,
            progress: ProgressFn | None = None, phase: str = "scan") -> NmapRun: ...


def _nmap_tail(args: list[str], targets: list[str], stats_every: str) -> list[str]:
    return [*args, "--stats-every", stats_every, "-oX", "-", *targets]


def gate_args(args: list[str], targets: list[str], where: str) -> None:
    """The last check before nmap starts: allowed options, and targets that are addresses.

    Raises UsageError (exit 2); nothing has been started or contacted yet.
    """
    from labctl.scans.scope import parse_target

    try:
        check_nmap_args(list(args))
    except ValueError as e:
        raise UsageError(f"refusing to start nmap on {where}: {e}",
                         hint="see docs/scan.md for the options a profile may use") from None
    for t in targets:
        parse_target(t)  # UsageError unless an ASCII address, CIDR or a.b.c.x-y range


def nmap_environ() -> dict[str, str]:
    """This process's environment without ``NMAPDIR`` (nmap would load scripts from it)."""
    return {k: v for k, v in os.environ.items() if k != "NMAPDIR"}


class LocalScanner:
    """nmap on this machine (``local``) or inside a network namespace (``netns:NAME``)."""

    def __init__(self, netns: str | None = None, stats_every: str = "2s") -> None:
        self.netns = netns
        self.spec = f"netns:{netns}" if netns else "local"
        self.stats_every = stats_every

    @property
    def route_netns(self) -> str | None:
        return self.netns or ""

    @property
    def checks_routes(self) -> bool:
        return True

    def preflight(self) -> None:
        prog = nmap_program()
        if not (shutil.which(prog) or os.path.isfile(prog)):
            raise ToolMissingError(f"nmap was not found ({prog})",
                                   hint="install it: apt-get install nmap")
        if self.netns:
            from labctl.transport.netns import netns_exists

            if not netns_exists(self.netns):
                raise PreflightError(f"network namespace {self.netns!r} does not exist",
                                     hint="is the twin up? `ip netns list` shows namespaces")
            if not shutil.which("ip"):
                raise ToolMissingError("`ip` (iproute2) was not found",
                                       hint="apt-get install iproute2")

    def argv(self, args: list[str], targets: list[str]) -> list[str]:
        from labctl.transport.netns import netns_argv

        return netns_argv(self.netns, [nmap_program(),
                                       *_nmap_tail(args, targets, self.stats_every)])

    def run(self, args: list[str], targets: list[str], *, timeout: float,
            progress: ProgressFn | None = None, phase: str = "scan") -> NmapRun:
        gate_args(args, targets, self.spec)
        self.preflight()
        argv = self.argv(args, targets)
        return run_streaming(argv, timeout=timeout, progress=progress, phase=phase,
                             where=self.spec)


def run_streaming(argv: list[str], *, timeout: float, progress: ProgressFn | None,
                  phase: str, where: str) -> NmapRun:
    """Run nmap, feed ``<taskprogress>`` lines to ``progress``, return the whole XML."""
    started = time.time()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                env=nmap_environ())
    except FileNotFoundError:
        raise ToolMissingError(f"cannot run {argv[0]}: not found",
                               hint="install nmap (apt-get install nmap)") from None
    except PermissionError:
        raise ToolMissingError(f"cannot run {argv[0]}: permission denied") from None
    err_chunks: list[str] = []
    stderr_pipe = proc.stderr
    assert stderr_pipe is not None
    reader = threading.Thread(target=lambda: err_chunks.append(stderr_pipe.read()), daemon=True)
    reader.start()
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(timeout, _kill)
    watchdog.daemon = True
    watchdog.start()
    out: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if progress is not None and "<taskprogress" in line:
                ev = parse_progress(line, phase)
                if ev is not None:
                    progress(ev)
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        watchdog.cancel()
        reader.join(timeout=5)
    stderr = "".join(err_chunks)
    if timed_out.is_set():
        raise LabctlError(f"nmap on {where} did not finish within {timeout:.0f} s and was "
                          "stopped", hint="raise the profile's timeout or scan fewer targets")
    if proc.returncode != 0:
        priv = _privilege_error(where, stderr)
        if priv:
            raise priv
        raise CommandError(argv, proc.returncode, stderr)
    return NmapRun(argv=argv, started=started, ended=time.time(), xml="".join(out),
                   stderr=stderr, returncode=proc.returncode)


_PRIVILEGED = ("-O", "-A", "-PE", "-PP", "-PM", "-PR", "--privileged")
_RAW_SCAN_LETTERS = frozenset("SUAWMNFXOYZ")  # -sS -sU ... (also glued: -sSV)


def needs_root(args: list[str]) -> bool:
    """True if the arguments ask for raw sockets explicitly (-sS, -sU, -O ...)."""
    return any(a in _PRIVILEGED for a in args) or bool(scan_letters(args) & _RAW_SCAN_LETTERS)


def prefers_root(args: list[str]) -> bool:
    """True if nmap would pick a raw scan when root (no -sT/-sL given): use sudo if it
    is available, else nmap falls back to a connect scan by itself."""
    return not scan_letters(args) & {"T", "L"}


class SshScanner:
    """nmap on a remote box (Kali) over SSH; XML comes back on stdout and is parsed here."""

    def __init__(self, spec: str, key: str | None = None, stats_every: str = "2s",
                 target: SshTarget | None = None, program: str = "nmap") -> None:
        self.spec = spec
        self.key = key
        self.program = program  # the remote nmap (name on the remote PATH, or a path)
        self.stats_every = stats_every
        self._target = target  # an SshTarget, when the caller built one (known_hosts...)

    @property
    def route_netns(self) -> str | None:
        return None

    @property
    def checks_routes(self) -> bool:
        return False

    def target(self) -> SshTarget:
        """The SSH login: the one given to the constructor, else parsed from the spec."""
        if self._target is None:
            from labctl.transport import sshexec

            self._target = sshexec.parse_ssh_spec(self.spec, key_filename=self.key)
        return self._target

    def _exec(self, argv: list[str], timeout: float) -> tuple[int, str, str]:
        from labctl.transport.sshexec import ssh_exec

        rc, out, err = ssh_exec(self.target(), argv, timeout=timeout)
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def preflight(self, args: list[str]) -> list[str]:
        """Return the remote argv prefix (``nmap`` or ``sudo -n nmap``), or raise clearly."""
        # the program travels as $0, a separate word, never spliced into the script
        rc, out, _ = self._exec(["sh", "-c", 'command -v "$0"; id -u', self.program],
                                timeout=30)
        lines = [x.strip() for x in out.splitlines() if x.strip()]
        uid = lines[-1] if lines else ""
        if rc != 0 or len(lines) < 2:
            raise ToolMissingError(f"nmap ({self.program}) is not installed on {self.spec}",
                                   hint="install it there: sudo apt-get install nmap")
        nmap_path = lines[0]
        if uid == "0" or not (needs_root(args) or prefers_root(args)):
            return [nmap_path]
        rc, _, err = self._exec(["sudo", "-n", nmap_path, "--version"], timeout=30)
        if rc != 0 and not needs_root(args):
            return [nmap_path]  # unprivileged nmap: a TCP connect scan instead of SYN
        if rc != 0:
            raise PreflightError(
                f"{self.spec} may not run nmap as root without a password, and this profile "
                f"needs root (SYN scan or raw packets): {err.strip()[:200]}",
                hint=f"add a sudoers rule such as `{self.target_user()} ALL=(root) NOPASSWD: "
                     f"{nmap_path}`, or use a profile with -sT")
        return ["sudo", "-n", nmap_path]

    def target_user(self) -> str:
        return self.target().user or "user"

    def run(self, args: list[str], targets: list[str], *, timeout: float,
            progress: ProgressFn | None = None, phase: str = "scan") -> NmapRun:
        gate_args(args, targets, self.spec)  # before any SSH connection
        prefix = self.preflight(args)
        argv = [*prefix, *_nmap_tail(args, targets, self.stats_every)]
        started = time.time()
        rc, out, err = self._exec(argv, timeout=timeout)
        if progress is not None:
            last = None
            for line in out.splitlines():
                ev = parse_progress(line, phase)
                if ev is not None:
                    last = ev
            progress(ProgressEvent(phase, last.task if last else "done", 100.0, 0))
        if rc != 0:
            priv = _privilege_error(self.spec, err)
            if priv:
                raise priv
            raise CommandError([f"ssh {self.spec}", *argv], rc, err)
        return NmapRun(argv=argv, started=started, ended=time.time(), xml=out, stderr=err,
                       returncode=rc)


def make_scanner(spec: str, *, ssh_key: str | None = None,
                 stats_every: str = "2s") -> LocalScanner | SshScanner:
    """Build the scanner for ``local``, ``netns:NAME`` or ``ssh://user@host[:port]``."""
    if spec == "local":
        return LocalScanner(None, stats_every)
    if spec.startswith("netns:"):
        name = spec[len("netns:"):]
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise UsageError(f"{spec!r}: bad namespace name")
        return LocalScanner(name, stats_every)
    if spec.startswith("ssh://"):
        return SshScanner(spec, ssh_key, stats_every)
    raise UsageError(f"{spec!r} is not a scanner spec",
                     hint="use local, netns:NAME or ssh://user@host[:port]")
