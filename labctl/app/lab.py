"""plan / up / down / status for the lab's switches, NAT and VMs, through one provider.

Read facts, diff them to a plan of plain-data steps, check the plan's blockers, confirm,
apply, re-read, and fail if the state did not converge. The stages of `up` that follow the
provider (router, sensor) are in :mod:`labctl.app.stages`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from labctl.app.providers import make_provider
from labctl.core.context import LabContext
from labctl.core.errors import ConvergenceError, Interrupted
from labctl.core.model import Plan, ProgressFn, ResourceStatus
from labctl.core.state import (
    lab_state_dir,
    purge_secret_state,
    router_backups,
    secret_state_paths,
)

__all__ = ["DownReport", "LabContext", "UpReport", "down", "make_provider", "plan", "status",
           "up"]


@dataclass
class UpReport:
    plan: Plan
    applied: bool
    converged: bool
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "converged": self.converged, "dry_run": self.dry_run,
                "plan": self.plan.to_dict()}


@dataclass
class DownReport(UpReport):
    """`down`'s report, plus the lab's secret-holding state files left in the state home
    (router backups hold the Wi-Fi passphrase) and those ``purge`` removed (paths only)."""

    state_dir: str = ""
    router_backups: list[str] = field(default_factory=list)
    secrets_left: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(state_dir=self.state_dir, router_backups=self.router_backups,
                 secrets_left=self.secrets_left, purged=self.purged)
        return d


def plan(ctx: LabContext, *, assume_empty: bool = False, down: bool = False) -> Plan:
    provider = make_provider(ctx)
    try:
        facts = provider.empty_facts() if assume_empty else provider.read_facts()
        return provider.plan_down(facts) if down else provider.plan_up(facts)
    finally:
        provider.close()


def _apply(ctx: LabContext, *, down: bool, confirm: Callable[[Plan], bool],
           progress: ProgressFn | None, dry_run: bool) -> UpReport:
    provider = make_provider(ctx)
    try:
        facts = provider.read_facts()
        the_plan = provider.plan_down(facts) if down else provider.plan_up(facts)
        provider.preflight(facts, the_plan)
        if the_plan.empty or dry_run:
            return UpReport(the_plan, applied=False, converged=the_plan.empty, dry_run=dry_run)
        if not confirm(the_plan):
            raise Interrupted("nothing was changed (not confirmed)")
        provider.apply(the_plan, progress)
        after = provider.read_facts()
        again = provider.plan_down(after) if down else provider.plan_up(after)
        if not again.empty:
            left = ", ".join(f"{c.resource} ({c.action})" for c in again.pending)
            raise ConvergenceError(
                f"the lab did not converge; still pending after apply: {left}",
                hint="run `labctl status` for details, then `labctl up` again",
            )
        return UpReport(the_plan, applied=True, converged=True)
    finally:
        provider.close()


def up(ctx: LabContext, *, confirm: Callable[[Plan], bool], progress: ProgressFn | None = None,
       dry_run: bool = False) -> UpReport:
    """The provider stage of `up`: read, plan, pre-flight, confirm, apply, re-read."""
    return _apply(ctx, down=False, confirm=confirm, progress=progress, dry_run=dry_run)


def down(ctx: LabContext, *, confirm: Callable[[Plan], bool],
         progress: ProgressFn | None = None, purge: bool = False) -> DownReport:
    """Remove what this lab created. Then, with ``purge`` (and only once nothing of the lab
    is left: a failed `down` raises first), remove this lab's secret-holding state files;
    the report lists what is left either way."""
    rep = _apply(ctx, down=True, confirm=confirm, progress=progress, dry_run=False)
    lab = ctx.loaded.model.lab
    purged = [str(p) for p in purge_secret_state(lab)] if purge else []
    return DownReport(rep.plan, rep.applied, rep.converged, rep.dry_run,
                      state_dir=str(lab_state_dir(lab, create=False)),
                      router_backups=[str(p) for p in router_backups(lab)],
                      secrets_left=[str(p) for p in secret_state_paths(lab)], purged=purged)


def status(ctx: LabContext) -> list[ResourceStatus]:
    provider = make_provider(ctx)
    try:
        return provider.status(provider.read_facts())
    finally:
        provider.close()
