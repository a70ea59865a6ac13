"""Supervised processes of a twin lab (personas, WAN services, router twin, sensor).

Each process runs as ``ip netns exec <ns> python -m labctl ...``, detached in its own session
(so it outlives the ``labctl up`` that started it), with its log in
``<lab state>/logs/<name>.log`` and a pid file ``<lab state>/run/<name>.json`` recording the
pid, the kernel start time (to tell a recycled pid apart), the namespace and the argv.
``status`` reads these; ``down`` stops them by process group and then kills anything left in
the lab's namespaces (``ip netns pids``), so it also works after a crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl.core.waiting import WaitTimeout, wait_until
from labctl.transport import proc
from labctl.transport.netns import netns_argv

MAX_LOG_BYTES = 2 * 1024 * 1024

# Popen objects of children started by this process, so their exit status is reaped
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcInfo:
    name: str
    pid: int
    netns: str
    argv: tuple[str, ...]
    alive: bool
    log: str
    started: float
    exit_code: int | None = None

    @property
    def state(self) -> str:
        return "running" if self.alive else "failed"

    def log_tail(self, lines: int = 5) -> list[str]:
        try:
            text = Path(self.log).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [ln for ln in text.splitlines() if ln.strip()][-lines:]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "netns": self.netns, "state": self.state,
                "argv": list(self.argv), "log": self.log, "started": self.started,
                "exit_code": self.exit_code}


def run_dir(state_dir: Path) -> Path:
    return state_dir / "run"


def log_dir(state_dir: Path) -> Path:
    return state_dir / "logs"


def _starttime(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw.rsplit(")", 1)[-1].split()
    if not rest or rest[0] in ("Z", "X"):
        return None
    return rest[19]


def _reap(pid: int) -> int | None:
    p = _children.get(pid)
    if p is not None:
        rc = p.poll()
        if rc is not None:
            _children.pop(pid, None)
        return rc
    return None


def spawn(state_dir: Path, name: str, netns: str | None, argv: list[str],
          env: dict[str, str] | None = None) -> int:
    """Start one supervised process and write its pid file. Returns the pid."""
    run_dir(state_dir).mkdir(parents=True, exist_ok=True)
    log_dir(state_dir).mkdir(parents=True, exist_ok=True)
    log_path = log_dir(state_dir) / f"{name}.log"
    try:
        if log_path.stat().st_size > MAX_LOG_BYTES:  # keep one previous log, bounded
            log_path.replace(log_path.with_suffix(".log.1"))
    except FileNotFoundError:
        pass
    full = netns_argv(netns, list(argv))
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting in {netns}\n".encode())
        log.flush()
        try:
            p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 close_fds=True, env=env, cwd=str(state_dir))
        except FileNotFoundError:
            raise proc.tool_missing(full[0]) from None
    _children[p.pid] = p
    record = {"name": name, "pid": p.pid, "netns": netns, "argv": list(argv),
              "log": str(log_path), "started": time.time(), "starttime": _starttime(p.pid)}
    tmp = run_dir(state_dir) / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record), encoding="utf-8")
    tmp.replace(run_dir(state_dir) / f"{name}.json")
    return p.pid


def read(state_dir: Path, name: str) -> ProcInfo | None:
    path = run_dir(state_dir) / f"{name}.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = int(rec.get("pid", 0))
    rc = _reap(pid)
    now = _starttime(pid) if pid > 0 else None
    alive = now is not None and (rec.get("starttime") in (None, now))
    return ProcInfo(name=rec.get("name", name), pid=pid, netns=rec.get("netns", ""),
                    argv=tuple(rec.get("argv", ())), alive=alive, log=rec.get("log", ""),
                    started=float(rec.get("started", 0)), exit_code=rc)


def read_all(state_dir: Path) -> dict[str, ProcInfo]:
    out: dict[str, ProcInfo] = {}
    d = run_dir(state_dir)
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        info = read(state_dir, p.stem)
        if info is not None:
            out[p.stem] = info
    return out


def stop(state_dir: Path, name: str, timeout: float = 3.0) -> None:
    """Stop a supervised process (its whole process group) and forget its pid file."""
    info = read(state_dir, name)
    if info is not None and info.alive:
        _signal_group(info.pid, signal.SIGTERM)
        if not _wait_gone([info.pid], timeout):
            _signal_group(info.pid, signal.SIGKILL)
            _reap(info.pid)
    (run_dir(state_dir) / f"{name}.json").unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def netns_pids(netns: str) -> list[int]:
    cp = proc.run(["ip", "netns", "pids", netns], check=False)
    return [int(x) for x in cp.stdout.split() if x.strip().isdigit()]


def kill_netns(netns: str, timeout: float = 2.0) -> list[int]:
    """Kill every process living in ``netns`` (TERM, then KILL). Returns the pids found."""
    pids = [p for p in netns_pids(netns) if p != os.getpid()]
    for p in pids:
        _signal_group(p, signal.SIGTERM) if _is_group_leader(p) else _kill(p, signal.SIGTERM)
    if not pids or _wait_gone(pids, timeout):
        return pids
    for p in pids:
        _kill(p, signal.SIGKILL)
        _reap(p)
    return pids


def _wait_gone(pids: list[int], timeout: float) -> bool:
    """Reap and poll until none of ``pids`` is alive; False if some still are at ``timeout``."""

    def gone() -> bool:
        for p in pids:
            _reap(p)
        return all(_starttime(p) is None for p in pids)

    try:
        return wait_until(gone, timeout=timeout, interval=0.02)
    except WaitTimeout:
        return False


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
