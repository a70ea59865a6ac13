"""`labctl up`'s stages, as a static list: the provider, the router, Azure, the sensor.

Each stage says whether it applies to a playbook and runs with the same three inputs: the
context, a confirmation callback and ``dry_run``. Every stage ships with labctl; a stage
whose module fails to import is a bug and surfaces as one, never as "not available".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from labctl.app import lab
from labctl.app.router import iot_net_stage
from labctl.app.sensor import PhaseProgressFn, azure_stage, sensor_stage
from labctl.core.context import LabContext
from labctl.core.errors import UsageError
from labctl.core.model import Plan, ProgressFn


@runtime_checkable
class StageReport(Protocol):
    """What a stage returns: whether it applied something, and a JSON form."""

    @property
    def applied(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


Confirm = Callable[[Any], bool]


class Stage(Protocol):
    """One stage of `up`."""

    @property
    def name(self) -> str: ...

    def applies(self, playbook: Any) -> bool:
        """Whether the playbook has this stage's section."""
        ...

    def run(self, ctx: LabContext, *, confirm: Confirm, dry_run: bool,
            progress: ProgressFn | None = None) -> StageReport | None:
        """Converge this stage; None when there was nothing to do."""
        ...


@dataclass(frozen=True)
class ProviderStage:
    """The lab's switches, NAT and VMs (Hyper-V) or namespaces (the twin)."""

    name: str = "hyperv"

    def applies(self, playbook: Any) -> bool:
        return True

    def run(self, ctx: LabContext, *, confirm: Confirm, dry_run: bool,
            progress: ProgressFn | None = None) -> StageReport | None:
        return lab.up(ctx, confirm=confirm, progress=progress, dry_run=dry_run)


@dataclass(frozen=True)
class RouterStage:
    """The router's IoT network, applied as a transaction through the router driver."""

    name: str = "router"

    def applies(self, playbook: Any) -> bool:
        return playbook.router is not None and playbook.router.iot_network is not None

    def run(self, ctx: LabContext, *, confirm: Confirm, dry_run: bool,
            progress: ProgressFn | None = None) -> StageReport | None:
        report: StageReport | None = iot_net_stage(ctx, confirm=confirm, dry_run=dry_run)
        return report


@dataclass(frozen=True)
class AzureStage:
    """The sensor's Azure side (``sensor.azure``): the site and the OT sensor (PUT) and the
    activation file, planned from ARM facts and applied like the provider's plan. Before the
    sensor stage, so the activation file is there when the sensor is signed in.

    ``credential`` and ``verify`` replace DefaultAzureCredential and the system CA bundle
    (tests: a local fake of the management endpoint)."""

    name: str = "azure"
    #: a lab without sensor.azure has no azure stage: it is left out of the results
    #: (not reported as skipped) unless asked for with --only azure
    optional: bool = True
    credential: Any = None
    verify: Any = True

    def applies(self, playbook: Any) -> bool:
        return playbook.sensor is not None and playbook.sensor.azure is not None

    def run(self, ctx: LabContext, *, confirm: Confirm, dry_run: bool,
            progress: ProgressFn | None = None) -> StageReport | None:
        report: StageReport | None = azure_stage(ctx, confirm=confirm, dry_run=dry_run,
                                                 credential=self.credential,
                                                 verify=self.verify)
        return report


@dataclass(frozen=True)
class SensorStage:
    """The sensor: wait for its API, first sign-in, configuration."""

    name: str = "sensor"
    #: shows the phases of the wait (VM running, installer, installing, web UI, signed in)
    phase_progress: PhaseProgressFn | None = None

    def applies(self, playbook: Any) -> bool:
        return playbook.sensor is not None

    def run(self, ctx: LabContext, *, confirm: Confirm, dry_run: bool,
            progress: ProgressFn | None = None) -> StageReport | None:
        report: StageReport | None = sensor_stage(ctx, confirm=confirm, dry_run=dry_run,
                                                  phase_progress=self.phase_progress)
        return report


#: the stages of `up`, in order
STAGES: tuple[Stage, ...] = (ProviderStage(), RouterStage(), AzureStage(), SensorStage())
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


@dataclass
class StageResult:
    """What one stage of `up` did: applied, converged (nothing to do), dry-run, skipped."""

    stage: str
    status: str  # applied | converged | dry-run | skipped
    detail: str = ""
    report: StageReport | None = None

    def to_dict(self) -> dict[str, Any]:
        rep = self.report.to_dict() if self.report is not None else None
        return {"stage": self.stage, "status": self.status, "detail": self.detail,
                "report": rep}


def _detail(stage: Stage, report: StageReport, dry_run: bool) -> str:
    if isinstance(report, lab.UpReport):
        n = len(report.plan.steps)
        return (f"{report.plan.provider}: {n} step(s)"
                + (" applied" if report.applied else " pending" if dry_run else ""))
    return str(getattr(report, "action", ""))


def up_stages(ctx: LabContext, *, only: str | None = None,
              confirm: Callable[[Plan], bool],
              confirm_stage: Callable[[str, Any], bool] | None = None,
              progress: ProgressFn | None = None, dry_run: bool = False,
              on_stage: Callable[[StageResult], None] | None = None,
              stages: tuple[Stage, ...] = STAGES,
              sensor_progress: PhaseProgressFn | None = None) -> list[StageResult]:
    """Run `up`'s stages in order (or just ``only``) and report each one.

    The provider stage raises on failure (pre-flight, transport, convergence); the router
    and sensor stages run only after it succeeded, and only when the playbook has their
    section. ``confirm`` receives the provider's plan, ``confirm_stage(name, report)`` a
    later stage's pending change.
    """
    if sensor_progress is not None:
        stages = tuple(SensorStage(phase_progress=sensor_progress)
                       if isinstance(s, SensorStage) else s for s in stages)
    names = tuple(s.name for s in stages)
    if only is not None and only not in names:
        raise UsageError(f"unknown stage {only!r}", hint=f"use one of: {', '.join(names)}")
    results: list[StageResult] = []
    pb = ctx.playbook
    for stage in stages:
        if only not in (None, stage.name):
            continue
        if not stage.applies(pb):
            if getattr(stage, "optional", False) and only != stage.name:
                continue
            result = StageResult(stage.name, "skipped",
                                 f"the playbook has no {stage.name} section")
        else:
            if isinstance(stage, ProviderStage):
                ask: Confirm = confirm
            else:
                def ask(obj: Any, _name: str = stage.name) -> bool:
                    return confirm_stage(_name, obj) if confirm_stage is not None else False
            report = stage.run(ctx, confirm=ask, dry_run=dry_run, progress=progress)
            if report is None:
                result = StageResult(stage.name, "skipped", f"nothing to do for {stage.name}")
            else:
                st = "dry-run" if dry_run else ("applied" if report.applied else "converged")
                result = StageResult(stage.name, st, _detail(stage, report, dry_run), report)
        results.append(result)
        if on_stage is not None:
            on_stage(result)
    return results
