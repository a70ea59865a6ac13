"""plan / up / down / status for the lab's switches, NAT and VMs, through one provider.

``up`` runs stages: the provider stage (Hyper-V or the netns twin), then the router stage
(``labctl.app.router.iot_net_stage``) and the sensor stage (``labctl.app.sensor.sensor_stage``)
when those modules are part of this build and the playbook has the section. ``--only`` picks
one stage. A stage whose module is missing is reported as "not available in this build".
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from labctl.core.errors import ConvergenceError, Interrupted, UsageError
from labctl.core.model import Plan, ProgressFn, Provider, ResourceStatus
from labctl.core.playbook import LoadedPlaybook
from labctl.core.secrets import PromptFn

ProviderFactory = Callable[["LabContext"], Provider]
STAGES = ("hyperv", "router", "sensor")


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


@dataclass
class StageResult:
    """What one stage of `up` did: applied, converged (nothing to do), dry-run, skipped..."""

    stage: str
    status: str  # applied | converged | dry-run | skipped | not-available
    detail: str = ""
    report: Any = None

    def to_dict(self) -> dict[str, Any]:
        rep = self.report.to_dict() if hasattr(self.report, "to_dict") else self.report
        return {"stage": self.stage, "status": self.status, "detail": self.detail,
                "report": rep}


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
         progress: ProgressFn | None = None) -> UpReport:
    return _apply(ctx, down=True, confirm=confirm, progress=progress, dry_run=False)


def status(ctx: LabContext) -> list[ResourceStatus]:
    provider = make_provider(ctx)
    try:
        return provider.status(provider.read_facts())
    finally:
        provider.close()


# -- stages ------------------------------------------------------------------------------------
_STAGE_TARGETS = {
    "router": ("labctl.app.router", "iot_net_stage"),
    "sensor": ("labctl.app.sensor", "sensor_stage"),
}


def stage_function(stage: str) -> Callable[..., Any] | None:
    """The stage's entry point, or None when its module is not part of this build."""
    module, attr = _STAGE_TARGETS[stage]
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except ModuleNotFoundError:
        return None
    return getattr(importlib.import_module(module), attr, None)


def _accepted(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``fn`` accepts: stage modules come from other parts of labctl
    and may not take every option (e.g. no ``dry_run``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _has_section(ctx: LabContext, stage: str) -> bool:
    pb = ctx.loaded.model
    if stage == "router":
        return pb.router is not None and pb.router.iot_network is not None
    return pb.sensor is not None


def up_stages(ctx: LabContext, *, only: str | None = None,
              confirm: Callable[[Plan], bool],
              confirm_stage: Callable[[str, Any], bool] | None = None,
              progress: ProgressFn | None = None, dry_run: bool = False,
              on_stage: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Run `up`'s stages in order (or just ``only``) and report each one.

    The provider stage raises on failure (pre-flight, transport, convergence). Router and
    sensor stages run only after it succeeded, and only when their modules exist and the
    playbook has the section (or when asked for by ``only``).
    """
    if only is not None and only not in STAGES:
        raise UsageError(f"unknown stage {only!r}", hint=f"use one of: {', '.join(STAGES)}")
    results: list[StageResult] = []

    def done(r: StageResult) -> None:
        results.append(r)
        if on_stage is not None:
            on_stage(r)

    if only in (None, "hyperv"):
        rep = up(ctx, confirm=confirm, progress=progress, dry_run=dry_run)
        st = "dry-run" if dry_run else ("applied" if rep.applied else "converged")
        n = len(rep.plan.steps)
        done(StageResult("hyperv", st, f"{rep.plan.provider}: {n} step(s)"
                         + (" applied" if rep.applied else " pending" if dry_run else ""), rep))
    for stage in ("router", "sensor"):
        if only not in (None, stage):
            continue
        fn = stage_function(stage)
        if fn is None:
            if only == stage or _has_section(ctx, stage):
                done(StageResult(stage, "not-available", "not available in this build"))
            continue
        if not _has_section(ctx, stage):
            done(StageResult(stage, "skipped", f"the playbook has no {stage} section"))
            continue

        def stage_confirm(obj: Any, _stage: str = stage) -> bool:
            return confirm_stage(_stage, obj) if confirm_stage is not None else False

        report = fn(ctx, **_accepted(fn, confirm=stage_confirm, dry_run=dry_run))
        if report is None:
            done(StageResult(stage, "skipped", f"nothing to do for {stage}"))
            continue
        applied = bool(getattr(report, "applied", False))
        st = "dry-run" if dry_run else ("applied" if applied else "converged")
        done(StageResult(stage, st, str(getattr(report, "action", "")), report))
    return results
