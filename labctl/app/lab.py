"""plan / up / down / status for the lab's switches, NAT and VMs, through one provider."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from labctl.core.errors import ConvergenceError, Interrupted, UsageError
from labctl.core.model import Plan, ProgressFn, Provider, ResourceStatus
from labctl.core.playbook import LoadedPlaybook
from labctl.core.secrets import PromptFn

ProviderFactory = Callable[["LabContext"], Provider]


@dataclass
class LabContext:
    loaded: LoadedPlaybook
    prompt_fn: PromptFn | None = None
    # Tests replace how providers are built (e.g. a fake Hyper-V host behind the runner).
    provider_factory: ProviderFactory | None = None
    options: dict[str, Any] = field(default_factory=dict)


def make_provider(ctx: LabContext) -> Provider:
    if ctx.provider_factory is not None:
        return ctx.provider_factory(ctx)
    pb = ctx.loaded.model
    if pb.provider == "hyperv":
        from labctl.hyperv.provider import HyperVProvider

        return HyperVProvider.from_context(ctx)
    if pb.provider == "netns":
        from labctl.netns.provider import NetnsProvider

        return NetnsProvider.from_context(ctx)
    raise UsageError(f"unknown provider {pb.provider!r}")  # pragma: no cover - schema forbids


@dataclass
class UpReport:
    plan: Plan
    applied: bool
    converged: bool
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "converged": self.converged, "dry_run": self.dry_run,
                "plan": self.plan.to_dict()}


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
    return _apply(ctx, down=False, confirm=confirm, progress=progress, dry_run=dry_run)


def down(ctx: LabContext, *, confirm: Callable[[Plan], bool],
         progress: ProgressFn | None = None) -> UpReport:
    return _apply(ctx, down=True, confirm=confirm, progress=progress, dry_run=False)


def status(ctx: LabContext) -> list[ResourceStatus]:
    provider = make_provider(ctx)
    try:
        return provider.status(provider.read_facts())
    finally:
        provider.close()
