"""``labctl plan|up|down|status``: the lab's switches, NAT and VMs through its provider.

Click only: parse, build a LabContext, call one function of :mod:`labctl.app.lab`, render.
Results go to stdout (``--json``: one document); progress and questions go to stderr.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import click

from labctl.cli._common import (
    CliState,
    confirm,
    echo,
    emit_json,
    json_option,
    playbook_option,
    progress_printer,
    prompt_secret,
    yes_option,
)
from labctl.core.context import LabContext
from labctl.core.errors import ExitCode
from labctl.core.model import Change, Plan, ResourceStatus

if TYPE_CHECKING:
    from labctl.app.stages import StageResult
    from labctl.core.playbook import LoadedPlaybook

_SIGN = {"create": "+", "update": "~", "replace": "-/+", "delete": "-", "start": ">",
         "stop": "<", "noop": "="}


def _context(playbook: str | None) -> LabContext:
    from labctl.core.playbook import load_playbook

    loaded = load_playbook(playbook)
    hv = loaded.model.hyperv
    warning = hv.tls_warning if hv is not None else None
    if warning:  # loudly, before anything connects
        echo(f"WARNING: {warning}", err=True, fg="yellow", bold=True)
    return make_context(loaded)


def make_context(loaded: LoadedPlaybook) -> LabContext:
    """The LabContext of this command: the real process, plus the caller's overrides."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx else None
    overrides = obj.overrides if isinstance(obj, CliState) else {}
    fields: dict[str, Any] = {"environ": os.environ, "prompt_fn": prompt_secret, **overrides}
    return LabContext(loaded=loaded, **fields)


def _verbosity() -> int:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx else None
    return obj.verbosity if isinstance(obj, CliState) else 0


def _fmt(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, str):
        return v.replace("\n", "\\n")
    return json.dumps(v, default=str)


def render_plan(plan: Plan, *, show_steps: bool = False, show_noop: bool = True) -> str:
    """A readable plan: resource, action, before -> after per field, noop reasons."""
    lines: list[str] = []
    summary = plan.summary()
    if plan.empty:
        lines.append(f"Lab {plan.lab} ({plan.provider}): nothing to change, the host matches the "
                     "playbook.")
    else:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(summary.items()))
        lines.append(f"Lab {plan.lab} ({plan.provider}): {len(plan.pending)} resource(s) to "
                     f"change ({parts}), {len(plan.steps)} step(s).")
    lines.append("")
    n = 0
    for c in plan.changes:
        if c.is_noop and not show_noop:
            continue
        lines.append(_change_line(c))
        for k, old, new in _fields(c):
            lines.append(f"      {k}: {_fmt(old)} -> {_fmt(new)}")
        if show_steps:
            for s in c.steps:
                n += 1
                off = "  [needs the VM off]" if s.requires_vm_off else ""
                lines.append(f"    --- step {n}: {s.name} ({s.description}){off}")
                lines.append("    params: " + json.dumps(s.masked_params(), default=str,
                                                         sort_keys=True))
                for sl in s.script.rstrip("\n").splitlines():
                    lines.append("    | " + sl)
    if plan.warnings:
        lines.append("")
        lines.append("Warnings:")
        lines.extend(f"  ! {w}" for w in plan.warnings)
    return "\n".join(lines)


def _change_line(c: Change) -> str:
    action = "noop" if c.is_noop else c.action
    sign = _SIGN.get(action, "*")
    off = action != "create" and any(s.requires_vm_off for s in c.steps)
    tail = f"  ({c.reason})" if c.reason else ""
    if off:
        tail += "  [needs the VM off]"
    return f"  {sign} {c.resource}: {action}{tail}"


def _fields(c: Change) -> list[tuple[str, Any, Any]]:
    if c.is_noop:
        return []
    before = dict(c.before or {})
    after = dict(c.after or {})
    return [(k, before.get(k), after.get(k)) for k in list(dict.fromkeys([*before, *after]))
            if before.get(k) != after.get(k)]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@playbook_option
@click.option("--show-steps", is_flag=True,
              help="Print each step's rendered PowerShell and parameters (secrets masked).")
@click.option("--assume-empty", is_flag=True,
              help="Plan against an empty host without connecting (no secrets needed).")
@json_option
@click.option("--exit-code", "exit_code", is_flag=True,
              help="Exit 3 when the plan is not empty (for scripts and CI).")
def plan(playbook: str | None, show_steps: bool, assume_empty: bool, as_json: bool,
         exit_code: bool) -> int:
    """Show what `up` would change, without changing anything.

    \b
    labctl plan -f playbooks/home-lab.yaml --assume-empty --show-steps
    labctl plan --json | jq '.steps[].resource'
    labctl plan --exit-code     # 0 = converged, 3 = changes pending
    """
    from labctl.app import lab as app

    ctx = _context(playbook)
    the_plan = app.plan(ctx, assume_empty=assume_empty)
    azure_plan = None
    sensor = ctx.playbook.sensor
    if sensor is not None and sensor.azure is not None:
        if assume_empty:
            the_plan.warnings.append("sensor.azure was not read: --assume-empty connects to "
                                     "nothing, Azure included")
        else:
            from labctl.app.sensor import azure_plan as _azure_plan

            azure_plan = _azure_plan(ctx)
    if as_json:
        doc = the_plan.to_dict()
        doc["assume_empty"] = assume_empty
        if azure_plan is not None:
            doc["azure"] = azure_plan.to_dict()
        emit_json(doc)
    else:
        echo(render_plan(the_plan, show_steps=show_steps))
        if azure_plan is not None:
            echo("")
            echo(render_azure_plan(azure_plan, show_steps=show_steps))
    pending = not the_plan.empty or (azure_plan is not None and not azure_plan.empty)
    if exit_code and pending:
        return int(ExitCode.CHANGES_PENDING)
    return 0


def render_azure_plan(plan: Plan, *, show_steps: bool = False, show_noop: bool = True) -> str:
    """The Azure section of a plan (``sensor.azure``: site, sensor, activation file)."""
    text = render_plan(plan, show_steps=show_steps, show_noop=show_noop)
    if plan.empty:
        _first, _, rest = text.partition("\n")
        text = "Nothing to change: Azure matches the playbook, the activation file is fresh.\n" \
            + rest
    return "Azure (sensor.azure):\n" + text


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@playbook_option
@yes_option
@click.option("--dry-run", is_flag=True, help="Plan and run the pre-flight checks; change nothing.")
@click.option("--only", type=click.Choice(["hyperv", "router", "azure", "sensor"]), default=None,
              help="Run one stage: hyperv (the provider: switches, NAT, VMs), router, azure "
                   "(sensor.azure: site, sensor, activation file), sensor.")
@json_option
def up(playbook: str | None, yes: bool, dry_run: bool, only: str | None, as_json: bool) -> int:
    """Build or converge the lab described by the playbook.

    Shows the plan, asks for confirmation unless -y, applies, re-reads the host and fails
    (exit 4) if it did not converge. A second `up` changes nothing.

    \b
    labctl up -f playbooks/home-lab.yaml --dry-run
    labctl up -y --only hyperv
    """
    from labctl.app.lab import UpReport
    from labctl.app.stages import up_stages

    ctx = _context(playbook)
    shown: dict[str, bool] = {}

    def ask(the_plan: Plan) -> bool:
        if not as_json:
            echo(render_plan(the_plan, show_noop=False))
            shown["plan"] = True
        return confirm("Apply these changes?", yes)

    def ask_stage(stage: str, report: Any) -> bool:
        if isinstance(report, Plan):  # the azure stage confirms a plan
            if not as_json:
                echo(render_azure_plan(report, show_noop=False))
            return confirm(f"Apply the {stage} changes?", yes)
        if not as_json:
            echo(f"{stage}: {getattr(report, 'action', '')} "
                 f"{', '.join(getattr(report, 'changed_keys', []) or [])}")
            for d in getattr(report, "diff", []) or []:
                echo(f"      {d.get('field')}: {_fmt(d.get('old'))} -> {_fmt(d.get('new'))}")
        return confirm(f"Apply the {stage} changes?", yes)

    def on_stage(r: StageResult) -> None:
        if as_json:
            return
        rep = r.report
        if isinstance(rep, UpReport) and not shown.get("plan"):
            if not rep.plan.empty or dry_run:
                echo(render_plan(rep.plan, show_noop=False))
        if _verbosity() >= 0:
            echo(f"[{r.stage}] {r.status}: {r.detail}", err=True)

    from labctl.cli.sensor import phase_display

    disp = phase_display(_verbosity() >= 0 and not as_json)
    try:
        results = up_stages(ctx, only=only, confirm=ask, confirm_stage=ask_stage,
                            progress=progress_printer(_verbosity() >= 0 and not as_json),
                            dry_run=dry_run, on_stage=on_stage, sensor_progress=disp)
    finally:
        disp.close()
    if as_json:
        emit_json({"dry_run": dry_run, "only": only,
                   "stages": [r.to_dict() for r in results]})
    else:
        for r in results:
            if r.stage == "hyperv" and r.status == "converged":
                echo("The lab is up to date: nothing to change.")
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@playbook_option
@yes_option
@click.option("--purge", is_flag=True,
              help="Once nothing of the lab is left, also remove this lab's router backups "
                   "and other secret-holding state files (twin credentials, twin router "
                   "nvram, twin sensor state). Other labs' files are not touched.")
@json_option
def down(playbook: str | None, yes: bool, purge: bool, as_json: bool) -> int:
    """Remove what this lab created, in reverse order.

    Only what the lab can prove it created is touched: switches and VMs whose Notes hold
    the line "managed-by: labctl lab=<lab>", the host IP on such a switch, and the NetNat
    and VHDX files the lab's record says it created. Order: stop VM, remove VM, VHDX,
    NetNat, host IP, switches. Router backups (they hold the Wi-Fi passphrase) stay in the
    lab's state directory unless --purge.

    \b
    labctl down -f playbooks/home-lab.yaml
    labctl down -y --purge
    """
    from labctl.app import lab as app

    ctx = _context(playbook)

    def ask(the_plan: Plan) -> bool:
        if not as_json:
            echo(render_plan(the_plan, show_noop=True))
        return confirm("Remove these resources?", yes)

    rep = app.down(ctx, confirm=ask, progress=progress_printer(_verbosity() >= 0 and not as_json),
                   purge=purge)
    if as_json:
        emit_json(rep.to_dict())
        return 0
    if not rep.applied:
        echo(f"Nothing of lab {rep.plan.lab} is left on the host.")
    else:
        echo(f"Removed {len(rep.plan.pending)} resource(s) of lab {rep.plan.lab}.")
    for p in rep.purged:
        echo(f"Purged {p}")
    if rep.router_backups:
        echo(f"{len(rep.router_backups)} router backup(s) of lab {rep.plan.lab} stay in "
             f"{rep.state_dir}/router-backups: they hold the Wi-Fi passphrase.")
    if rep.secrets_left:
        echo("Left in the state home (secrets): " + ", ".join(rep.secrets_left))
        echo("`labctl down --purge` removes them (this lab's files only).")
    return 0


def render_status(items: list[ResourceStatus]) -> str:
    width = max((len(s.resource) for s in items), default=10)
    lines = []
    for s in items:
        mark = "ok " if not s.drifted else "!! "
        lines.append(f"{mark}{s.resource.ljust(width)}  {s.state}")
        for d in s.details:
            if s.drifted:
                lines.append(f"      {d}")
    drift = sum(1 for s in items if s.drifted)
    lines.append("")
    lines.append(f"{len(items)} resource(s), {drift} with drift." if drift else
                 f"{len(items)} resource(s), no drift.")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@playbook_option
@json_option
def status(playbook: str | None, as_json: bool) -> int:
    """Show drift between the playbook and the host, per resource (exit 4 on drift)."""
    from labctl.app import lab as app

    ctx = _context(playbook)
    items = app.status(ctx)
    drift = any(s.drifted for s in items)
    if as_json:
        emit_json({"lab": ctx.loaded.model.lab, "drift": drift,
                   "resources": [s.to_dict() for s in items]})
    else:
        echo(render_status(items))
    return int(ExitCode.DRIFT) if drift else 0
