"""The ``netns`` provider: the lab as Linux network namespaces (the "twin").

Same interface as the Hyper-V provider (:class:`labctl.core.model.Provider`): read facts,
diff to a plan of command steps, pre-flight, apply, status. See :mod:`labctl.netns.topology`
for what maps to what.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from labctl.core.errors import CommandError, LabctlError, PreflightError
from labctl.core.model import Plan, ProgressFn, ResourceStatus
from labctl.core.playbook import LoadedPlaybook
from labctl.core.state import lab_state_dir
from labctl.netns import facts as factsmod
from labctl.netns import plan as planmod
from labctl.netns import supervisor
from labctl.netns.topology import ETC_NETNS, Topology, build, labctl_env
from labctl.transport import proc


READY_TIMEOUT = 20.0  # seconds `up` waits for started processes to listen


class NetnsProvider:
    """Builds, converges, reports and removes a twin lab."""

    name = "netns"

    def __init__(self, loaded: LoadedPlaybook, state_dir: Path | None = None) -> None:
        self.loaded = loaded
        self.lab = loaded.model.lab
        self.state_dir = state_dir or lab_state_dir(self.lab)
        self.topology: Topology = build(loaded, self.state_dir)

    @classmethod
    def from_context(cls, ctx: Any) -> "NetnsProvider":
        return cls(ctx.loaded)

    # -- facts and plans
    def read_facts(self) -> factsmod.TwinFacts:
        return factsmod.read(self.topology, self.state_dir)

    def empty_facts(self) -> factsmod.TwinFacts:
        return factsmod.empty(self.topology)

    def plan_up(self, facts: factsmod.TwinFacts) -> Plan:
        return planmod.plan_up(self.topology, facts, str(self.state_dir))

    def plan_down(self, facts: factsmod.TwinFacts) -> Plan:
        return planmod.plan_down(self.topology, facts)

    # -- pre-flight
    def preflight(self, facts: factsmod.TwinFacts, plan: Plan) -> None:
        check_platform()
        if plan.empty:
            return
        present = planmod.lab_namespaces(self.topology, facts)
        if facts.marker is None and present:
            raise PreflightError(
                f"namespaces of lab {self.lab!r} already exist but labctl has no record of "
                f"creating them: {', '.join(present)}",
                hint="another tool or an earlier state directory left them; remove them "
                     "(and the processes inside) with: "
                     + "; ".join(f"ip netns pids {n} | xargs -r kill; ip netns del {n}"
                                 for n in present)
                     + f" (or use another lab: name), then run labctl again")
        building = any(c.action in ("create", "update", "replace") for c in plan.pending)
        if building:
            check_collisions(self.topology, facts.root_routes)

    # -- apply
    def apply(self, plan: Plan, progress: ProgressFn | None = None) -> None:
        with self._lock():
            self._apply(plan, progress)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One change at a time per lab (two concurrent `up`s would fight over names)."""
        import fcntl

        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.state_dir / ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PreflightError(f"another labctl is changing lab {self.lab!r} right now",
                                     hint="wait for it to finish, then run this again") \
                    from None
            yield
        finally:
            os.close(fd)

    def _apply(self, plan: Plan, progress: ProgressFn | None) -> None:
        steps = plan.steps
        self._started: list[dict[str, Any]] = []
        for i, step in enumerate(steps, 1):
            if progress is not None:
                progress(step, i, len(steps))
            for op in step.params.get("ops", []):
                try:
                    self._run_op(op)
                except CommandError as e:
                    raise CommandError(e.argv, e.returncode, e.stderr,
                                       hint=f"step {i}/{len(steps)} ({step.resource}: "
                                            f"{step.action}) failed; run `labctl up` again to "
                                            "converge, or `labctl down` to remove the lab") \
                        from None
        self.wait_ready(self._started)

    def wait_ready(self, started: list[dict[str, Any]], timeout: float = READY_TIMEOUT) -> list[str]:
        """Wait until the processes just started accept TCP on their ``ready`` address
        (connecting from inside their own namespace). Returns the names still not ready;
        a process that exits stops the wait for it (status and the convergence check
        report it)."""
        from labctl.transport.netns import netns_context

        pending = {op["name"]: op for op in started if op.get("ready")}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for name, op in list(pending.items()):
                info = supervisor.read(self.state_dir, name)
                if info is None or not info.alive:
                    pending.pop(name)
                    continue
                host, port = op["ready"]
                with netns_context(op["netns"]):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(0.2)
                try:
                    s.connect((host, int(port)))
                    pending.pop(name)
                except OSError:
                    pass
                finally:
                    s.close()
            if pending:
                time.sleep(0.05)
        return sorted(pending)

    def _run_op(self, op: dict[str, Any]) -> None:
        if "op" not in op:
            proc.run(op["argv"], netns=op.get("netns"), input=op.get("input"))
            return
        kind = op["op"]
        if kind == "sysctl":
            from labctl.transport.netns import netns_context

            path = "/proc/sys/" + op["key"].replace(".", "/")
            with netns_context(op["netns"]):
                if os.path.exists(path):
                    with open(path, "w", encoding="ascii") as fh:
                        fh.write(str(op["value"]))
        elif kind == "spawn":
            env = labctl_env()
            if op["name"] == "router":
                from labctl.netns.secrets import ROUTER_PASSWORD_ENV, router_password

                env[ROUTER_PASSWORD_ENV] = router_password(self.loaded).reveal()
            supervisor.spawn(self.state_dir, op["name"], op["netns"], op["argv"], env=env)
            getattr(self, "_started", []).append(op)
        elif kind == "stop":
            supervisor.stop(self.state_dir, op["name"])
        elif kind == "kill-netns":
            supervisor.kill_netns(op["netns"])
        elif kind == "resolv":
            d = Path(ETC_NETNS) / op["netns"]
            d.mkdir(parents=True, exist_ok=True)
            (d / "resolv.conf").write_text(op["text"], encoding="utf-8")
        elif kind == "unresolv":
            d = Path(ETC_NETNS) / op["netns"]
            conf = d / "resolv.conf"
            if conf.is_file() and conf.read_text(encoding="utf-8").startswith("# labctl twin"):
                conf.unlink()
                try:
                    d.rmdir()
                except OSError:
                    pass  # someone else put files there; leave them
        elif kind == "mark":
            marker = {"lab": op["lab"], "owner": "labctl", "provider": "netns",
                      "playbook": str(Path(self.loaded.path).resolve()),
                      "namespaces": op["namespaces"], "updated": time.time()}
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_dir / (factsmod.MARKER + ".tmp")
            tmp.write_text(json.dumps(marker, indent=2), encoding="utf-8")
            tmp.replace(self.state_dir / factsmod.MARKER)
        elif kind == "forget":
            for p in supervisor.read_all(self.state_dir):
                supervisor.stop(self.state_dir, p)
            (self.state_dir / factsmod.MARKER).unlink(missing_ok=True)
        else:  # pragma: no cover
            raise LabctlError(f"unknown twin operation {kind!r}")

    # -- status
    def status(self, facts: factsmod.TwinFacts) -> list[ResourceStatus]:
        plan = self.plan_up(facts)
        out: list[ResourceStatus] = []
        seg = {s["switch"]: s for s in self.topology.segments}
        for c in plan.changes:
            details: list[str] = [c.reason] if c.reason else []
            if c.resource.startswith("netns.bridge:"):
                s = seg.get(c.resource.split(":", 1)[1], {})
                details += [f"bridge {s.get('netns')}/{s.get('bridge')}"]
                if s.get("subnet"):
                    details.append(f"subnet {s['subnet']}")
                if s.get("vlan") is not None:
                    details.append(f"vlan {s['vlan']}")
                if s.get("span_source"):
                    details.append(f"mirrored to {s.get('mirror_to')}")
            if c.resource.startswith("netns.process:"):
                name = c.resource.split(":", 1)[1]
                info = facts.processes.get(name)
                if info is None:
                    out.append(ResourceStatus(c.resource, "stopped", tuple(details)))
                    continue
                details.append(f"pid {info.pid} in {info.netns}, log {info.log}")
                if info.alive and c.is_noop:
                    out.append(ResourceStatus(c.resource, "running", tuple(details)))
                elif not info.alive:
                    out.append(ResourceStatus(c.resource, "failed",
                                              tuple(details + info.log_tail(3))))
                else:
                    out.append(ResourceStatus(c.resource, "drift", tuple(details)))
                continue
            if c.is_noop:
                state = "ok"
            elif c.action == "create":
                state = "missing"
            elif c.action == "delete":
                state = "unmanaged"
            else:
                state = "drift"
            out.append(ResourceStatus(c.resource, state, tuple(details)))
        return out

    def close(self) -> None:
        return None


def check_platform() -> None:
    if not sys.platform.startswith("linux"):
        raise PreflightError("the netns twin needs Linux (network namespaces)",
                             hint="run the twin on a Linux machine or VM")
    if os.geteuid() != 0:
        raise PreflightError("the netns twin needs root (it creates network namespaces)",
                             hint="run labctl as root, e.g. sudo labctl up -f ...")
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            raise proc.tool_missing(tool)


def check_collisions(topo: Topology, root_routes: list[dict[str, Any]]) -> None:
    """Refuse a playbook subnet that overlaps a route of the machine (root namespace)."""
    for r in root_routes:
        dst = r.get("dst")
        if not dst or dst == "default":
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version != 4 or net.prefixlen == 0:
            continue
        for mine in topo.networks:
            if mine.overlaps(net):
                raise PreflightError(
                    f"playbook subnet {mine} collides with the machine's route {dst}"
                    + (f" (dev {r['dev']})" if r.get("dev") else ""),
                    hint="choose other subnets in the twin playbook so lab traffic cannot be "
                         "confused with the machine's real networks")
