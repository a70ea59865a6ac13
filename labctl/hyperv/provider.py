"""HyperVProvider: the :class:`labctl.core.model.Provider` for a Windows Hyper-V host.

It reads facts with ONE script (``facts/read``), diffs in Python (:mod:`labctl.hyperv.diff`),
records the blockers of an unsafe plan on the plan itself (:meth:`preflight` refuses them),
and applies a plan step by step through a
:class:`~labctl.transport.powershell.PowerShellRunner`. The runner is created lazily, so
``plan --assume-empty`` never resolves a secret or opens a connection.

NetNat, its static mappings and VHDX carry no ownership marker, so the provider keeps the
lab's record of them (:class:`~labctl.core.state.CreatedRecord`): an entry is written
*before* the step that creates the resource runs (a create whose answer is lost is still
recorded), removed after the step that deletes it succeeds, and every fact read drops the
entries whose resource no longer exists on the host (a create that never took effect leaves
no claim behind).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from labctl.core.errors import LabctlError, PreflightError
from labctl.core.model import Action, Plan, ProgressFn, ResourceStatus, Step
from labctl.core.playbook import Playbook
from labctl.core.state import Created, CreatedRecord
from labctl.hyperv import diff as _diff
from labctl.hyperv.facts import HostFacts, empty_facts, owned_by, parse_facts
from labctl.hyperv.scripts import rendered, step_script

if TYPE_CHECKING:
    from labctl.transport.powershell import PowerShellRunner

log = logging.getLogger(__name__)

RunnerFactory = Callable[[], "PowerShellRunner"]


class HyperVProvider:
    """Switches, host vNIC IP/DNS, NetNat, SPAN, VHDX and VMs on one Hyper-V host."""

    name = "hyperv"

    def __init__(self, playbook: Playbook, runner: PowerShellRunner | None = None, *,
                 runner_factory: RunnerFactory | None = None,
                 record: CreatedRecord | None = None) -> None:
        self.playbook = playbook
        self._runner = runner
        self._factory = runner_factory
        self.record = record if record is not None else CreatedRecord.of_lab(playbook.lab)
        self.scope = _diff.scope_of(playbook)

    def recorded(self) -> _diff.Recorded:
        """The record's entries for this host, as pure data for the diff."""
        return _diff.Recorded.of(self.scope, self.record.entries(self.scope))

    # -- runner ----------------------------------------------------------------------------
    @property
    def runner(self) -> PowerShellRunner:
        if self._runner is None:
            if self._factory is None:
                raise LabctlError("no transport to the Hyper-V host was configured")
            self._runner = self._factory()
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            try:
                self._runner.close()
            finally:
                self._runner = None

    # -- Provider protocol -----------------------------------------------------------------
    def read_facts(self) -> HostFacts:
        script = rendered("facts/read", _diff.facts_params(self.playbook, self.recorded()))
        log.info("reading Hyper-V facts (%s)", script.name)
        facts = parse_facts(self.runner.run(script), script.name)
        self._prune(facts)
        return facts

    def _prune(self, facts: HostFacts) -> None:
        """Drop record entries whose resource the host no longer has."""
        nats = {_diff.nat_entry(self.scope, n.name, n.prefix) for n in facts.nats}
        for gone in self.record.keep_only(self.scope, "netnat", nats):
            log.info("record: NetNat %s is gone from the host", gone.get("name"))
        maps = {_diff.mapping_entry_of(self.scope, m) for m in facts.nat_mappings}
        for gone in self.record.keep_only(self.scope, "netnat-mapping", maps):
            log.info("record: NetNat static mapping on port %s is gone from the host",
                     gone.get("external_port"))
        vhds = {e for e in self.record.entries(self.scope, "vhd")
                if not any(f.path.lower() == e.get("path") and not f.exists
                           for f in facts.vhd_files)}
        for gone in self.record.keep_only(self.scope, "vhd", vhds):
            log.info("record: VHDX %s is gone from the host", gone.get("path"))

    def _entry(self, s: Step) -> Created | None:
        if s.name in ("netnat/create", "netnat/remove"):
            return _diff.nat_entry(self.scope, str(s.params["Name"]), str(s.params["Prefix"]))
        if s.name in ("netnat/static-add", "netnat/static-remove"):
            p = s.params
            return _diff.mapping_entry(self.scope, str(p["NatName"]), str(p["Protocol"]),
                                       int(p["ExternalPort"]), str(p["InternalIPAddress"]),
                                       int(p["InternalPort"]))
        if s.name in ("vhd/create", "vhd/remove"):
            return _diff.vhd_entry(self.scope, str(s.params["Path"]))
        return None

    def empty_facts(self) -> HostFacts:
        return empty_facts()

    def plan_up(self, facts: HostFacts) -> Plan:
        d = _diff.plan_up(self.playbook, facts, self._recorded_for(facts))
        d.plan.warnings.extend(f"pre-flight: {b.message}" for b in d.blockers)
        return d.plan

    def plan_down(self, facts: HostFacts) -> Plan:
        return _diff.plan_down(self.playbook, facts, self._recorded_for(facts))

    def _recorded_for(self, facts: HostFacts) -> _diff.Recorded:
        # --assume-empty plans read nothing, not even the local record
        return _diff.Recorded.of(self.scope, ()) if facts.assumed else self.recorded()

    def preflight(self, facts: HostFacts, plan: Plan) -> None:
        """Refuse before any change: every blocker the diff recorded on ``plan`` is a
        PreflightError (the first one, naming how many more there are)."""
        blockers = plan.blockers
        if not blockers:
            return
        first = blockers[0]
        if len(blockers) == 1:
            raise PreflightError(first.message, hint=first.hint)
        more = "; ".join(b.message for b in blockers[1:])
        raise PreflightError(f"{first.message} (and {len(blockers) - 1} more: {more})",
                             hint=first.hint)

    def apply(self, plan: Plan, progress: ProgressFn | None = None) -> None:
        steps = plan.steps
        total = len(steps)
        for i, s in enumerate(steps, 1):
            if progress is not None:
                progress(s, i, total)
            log.info("step %d/%d: %s %s (%s)", i, total, s.resource, s.action, s.name)
            entry = self._entry(s)
            if entry is not None and s.action is Action.CREATE:
                self.record.add(entry)  # before: a lost answer must not lose the claim
            try:
                self.runner.run(step_script(s))
                if entry is not None and s.action is Action.DELETE:
                    self.record.remove(entry)
            except LabctlError as e:
                if e.hint is None:
                    e.hint = (f"steps 1-{i - 1} of {total} were applied; fix the cause and run "
                              "the command again: it re-reads the host and resumes")
                raise

    def status(self, facts: HostFacts) -> list[ResourceStatus]:
        d = _diff.plan_up(self.playbook, facts, self._recorded_for(facts))
        out: list[ResourceStatus] = []
        for c in d.plan.changes:
            if c.is_noop:
                state = "unmanaged" if c.foreign else "ok"
                details: tuple[str, ...] = (c.reason,) if c.reason else ()
                if c.resource.startswith("hyperv.vmstate:"):
                    vm = facts.vms_named(c.resource.split(":", 1)[1])
                    if vm:
                        state = "running" if vm[0].state == "Running" else "ok"
            elif c.action is Action.CREATE:
                state, details = "missing", (c.reason,)
            elif c.action is Action.START:
                state, details = "stopped", (c.reason,)
            else:
                fields = sorted(set(c.before or {}) | set(c.after or {}))
                details = tuple(f"{k}: {(c.before or {}).get(k)!r} -> {(c.after or {}).get(k)!r}"
                                for k in fields) or (c.reason,)
                state = "drift"
            out.append(ResourceStatus(c.resource, state, details))
        for b in d.blockers:
            out.append(ResourceStatus("hyperv.preflight", "failed", (b.message,)))
        return out

    # -- helpers for tests and benches -------------------------------------------------------
    def owned(self, facts: HostFacts) -> dict[str, list[str]]:
        """Switches and VMs on the host that carry this lab's marker, and the NetNats and
        VHDX files the lab's record names."""
        lab = self.playbook.lab
        rec = self.recorded()
        return {"switches": [s.name for s in facts.switches if owned_by(s.notes, lab)],
                "vms": [v.name for v in facts.vms if owned_by(v.notes, lab)],
                "nats": [n.name for n in facts.nats if rec.nat(n.name, n.prefix)],
                "vhds": rec.vhd_paths}
