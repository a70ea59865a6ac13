"""The ``netns`` provider: the lab as Linux network namespaces (the "twin").

Same interface as the Hyper-V provider (:class:`labctl.core.model.Provider`): read facts,
diff to a plan of command steps (its blockers included), pre-flight, apply, status. See
:mod:`labctl.netns.topology_model` for what maps to what.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labctl.core.errors import CommandError, PreflightError
from labctl.core.model import Action, Plan, ProgressFn, ResourceStatus
from labctl.core.playbook import LoadedPlaybook
from labctl.core.state import lab_state_dir
from labctl.core.waiting import WaitTimeout, wait_until
from labctl.netns import facts as factsmod
from labctl.netns import ops as nops
from labctl.netns import plan as planmod
from labctl.netns import supervisor
from labctl.netns.topology import build, labctl_env
from labctl.netns.topology_model import Topology
from labctl.transport import proc

READY_TIMEOUT = 20.0  # seconds `up` waits for started processes to listen


class NetnsProvider:
    """Builds, converges, reports and removes a twin lab."""

    name = "netns"

    def __init__(self, loaded: LoadedPlaybook, state_dir: Path | None = None) -> None:
        self.loaded = loaded
        self.lab: str = loaded.model.lab
        self.state_dir = state_dir or lab_state_dir(self.lab)
        self.topology: Topology = build(loaded, self.state_dir)

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
        """Refuse before any change: the platform first, then the blockers the planner
        recorded on ``plan`` (the first one)."""
        check_platform()
        if plan.blockers:
            first = plan.blockers[0]
            raise PreflightError(first.message, hint=first.hint)

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

    def _child_env(self, name: str) -> dict[str, str]:
        env = labctl_env()
        if name == "router":
            from labctl.netns.credentials import ROUTER_PASSWORD_ENV, router_password

            env[ROUTER_PASSWORD_ENV] = router_password(self.loaded).reveal()
        return env

    def _apply(self, plan: Plan, progress: ProgressFn | None) -> None:
        from labctl.netns.topology import write_sensor_config

        if any(c.action != "delete" for c in plan.pending):
            for path, text in self.topology.files.items():
                write_sensor_config(self.state_dir, path, text)
        steps = plan.steps
        ctx = nops.OpContext(state_dir=self.state_dir, playbook_path=Path(self.loaded.path),
                          child_env=self._child_env)
        for i, step in enumerate(steps, 1):
            if progress is not None:
                progress(step, i, len(steps))
            ops: list[nops.Op] = list(step.params.get("ops", []))
            for op in ops:
                try:
                    op.run(ctx)
                except CommandError as e:
                    raise CommandError(e.argv, e.returncode, e.stderr,
                                       hint=f"step {i}/{len(steps)} ({step.resource}: "
                                            f"{step.action}) failed; run `labctl up` again to "
                                            "converge, or `labctl down` to remove the lab") \
                        from None
        self.wait_ready(ctx.started)

    def wait_ready(self, started: list[nops.Spawn], timeout: float = READY_TIMEOUT) -> list[str]:
        """Wait until the processes just started accept TCP on their ``ready`` address
        (connecting from inside their own namespace). Returns the names still not ready;
        a process that exits stops the wait for it (status and the convergence check
        report it)."""
        pending = {op.name: op for op in started if op.ready}

        def all_ready() -> bool:
            for name, op in list(pending.items()):
                info = supervisor.read(self.state_dir, name)
                if info is None or not info.alive or _accepts(op):
                    pending.pop(name)
            return not pending

        try:
            wait_until(all_ready, timeout=timeout, interval=0.05)
        except WaitTimeout:
            pass
        return sorted(pending)

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
            elif c.action is Action.CREATE:
                state = "missing"
            elif c.action is Action.DELETE:
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
    found = planmod.collisions(topo, root_routes)
    if found:
        raise PreflightError(found[0].message, hint=found[0].hint)


def _accepts(op: nops.Spawn) -> bool:
    """True when ``op``'s ready address accepts a TCP connection from inside its namespace."""
    from labctl.transport.netns import netns_context

    if op.ready is None:
        return False
    host, port = op.ready
    with netns_context(op.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.2)
    try:
        s.connect((host, int(port)))
        return True
    except OSError:
        return False
    finally:
        s.close()
