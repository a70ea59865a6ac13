"""``labctl scan``: guarded nmap scans, history and diff.

``scan`` is a group whose first argument is either a subcommand (``history``, ``diff``,
``profiles``, ``run``) or a target; in the latter case the hidden default ``run`` command
is used, so ``labctl scan 172.16.1.0/24`` and ``labctl scan run 172.16.1.0/24`` are the
same. paramiko, rich and the scan modules are imported only when a command runs.
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from labctl.cli._common import echo, emit_json, json_option, playbook_option
from labctl.core.errors import DriftError, ExitCode

if TYPE_CHECKING:
    from labctl.core.playbook import LoadedPlaybook
    from labctl.scans.result import ScanResult
    from labctl.scans.scanners import ProgressEvent, ProgressFn

SUBCOMMANDS = ("run", "history", "diff", "profiles")


class ScanGroup(click.Group):
    """A group that treats a first argument that is not a subcommand as a scan target."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path,
                              "[OPTIONS] TARGET... | history | diff [OLD] [NEW] | profiles")


def _load_playbook(path: str | None) -> LoadedPlaybook | None:
    """The playbook if one is given or found; None lets --scope alone define the scope."""
    import os
    from pathlib import Path

    from labctl.core.playbook import load_playbook

    if path or os.environ.get("LABCTL_PLAYBOOK") or Path("labctl.yaml").exists():
        return load_playbook(path)
    return None


@click.group(cls=ScanGroup, no_args_is_help=True,
             context_settings={"help_option_names": ["-h", "--help"]})
def scan() -> None:
    """nmap validation scans with a scope guard, history and diff.

    \b
    labctl scan 172.16.1.0/24                 smart profile, playbook's scanner
    labctl scan --profile full 172.16.1.24    all TCP ports of one device
    labctl scan history                       saved scans
    labctl scan diff                          last two scans of the same targets
    \b
    Targets are ASCII addresses, CIDRs or a.b.c.x-y ranges inside a network the playbook
    declares or --scope CIDR (private, link-local or documentation space; a public range
    only with --i-own-this-public-range CIDR), and (for local/netns scanners) routed into
    that network; otherwise the scan is refused with exit 2 before nmap starts. `diff` and
    `--baseline` exit 4 when something changed.
    """


def _fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _script_highlight(scripts: dict[str, str], width: int = 60) -> str:
    parts = []
    for sid, out in scripts.items():
        first = next((ln.strip() for ln in (out or "").splitlines() if ln.strip()), "")
        parts.append(f"{sid}: {first}" if first else sid)
    text = "; ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _progress_bar(enabled: bool) -> tuple[ProgressFn | None, Callable[[], None]]:
    """A rich progress bar on stderr fed by --stats-every events; (callback, stop)."""
    if not enabled:
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    prog = Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.percentage:>5.1f}%"), TimeRemainingColumn(),
                    console=console, transient=True)
    tasks: dict[str, TaskID] = {}
    prog.start()

    def _cb(ev: ProgressEvent) -> None:
        if ev.phase not in tasks:
            tasks[ev.phase] = prog.add_task(ev.phase, total=100.0)
        prog.update(tasks[ev.phase], completed=ev.percent,
                    description=f"{ev.phase}: {ev.task}")

    return _cb, prog.stop


def _render_result(result: ScanResult, verbose: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    hosts = Table(title=f"scan {result.id or '(not saved)'}: {', '.join(result.targets)} "
                        f"({result.profile} via {result.scanner})", show_lines=False)
    for col in ("host", "MAC", "vendor", "state", "open ports"):
        hosts.add_column(col)
    for h in result.hosts:
        hosts.add_row(h.addr, h.mac or "-", h.vendor or "-", h.state,
                      str(len(h.open_ports())))
    console.print(hosts)
    ports = Table(show_lines=False)
    for col in ("host", "port", "proto", "state", "service", "version", "scripts"):
        ports.add_column(col)
    n = 0
    for h in result.hosts:
        for p in h.ports:
            if p.state == "closed" and verbose <= 0:
                continue
            ports.add_row(h.addr, str(p.port), p.proto, p.state, p.service or "-",
                          p.version_text or "-", _script_highlight(p.scripts))
            n += 1
    if n:
        console.print(ports)
    else:
        console.print("no open ports")
    up = len(result.up_hosts())
    console.print(f"{up} host(s) up, {sum(len(h.open_ports()) for h in result.hosts)} open "
                  f"port(s), {result.ended - result.started:.1f} s")
    if verbose > 0:
        for argv in result.argv:
            echo("nmap argv: " + " ".join(argv), err=True)
        for path in result.xml_paths:
            echo(f"raw XML: {path}", err=True)


def _render_changes(changes: list[dict[str, Any]], title: str) -> None:
    if not changes:
        echo(f"{title}: no change")
        return
    echo(f"{title}: {len(changes)} change(s)")
    for c in changes:
        echo("  " + c["text"])


@scan.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
@playbook_option
@click.option("--profile", "profile", metavar="NAME",
              help="Scan profile (scans/profiles/NAME.yaml or a path); default: the "
                   "playbook's scanner.profile, else smart.")
@click.option("--scanner", "scanner", metavar="SPEC",
              help="local, netns:NAME or ssh://user@host[:port] (default: the playbook's).")
@click.option("--exclude", "excludes", multiple=True, metavar="ADDR",
              help="Never scan this address/CIDR (repeatable); added to scanner.exclude.")
@click.option("--scope", "scope", multiple=True, metavar="CIDR",
              help="Also allow targets inside this private, link-local or documentation "
                   "network (repeatable).")
@click.option("--i-own-this-public-range", "public_ranges", multiple=True, metavar="CIDR",
              help="Also allow this global range, which you own (repeat per range; at most "
                   "a /16, never 0.0.0.0/0).")
@click.option("--timeout", "timeout", type=click.IntRange(5, 86400), default=None,
              metavar="SECONDS", help="Stop the scan after SECONDS (5-86400; default: the "
                                      "profile's timeout).")
@click.option("--baseline", metavar="NAME",
              help="Compare with scans/baselines/NAME.yaml; exit 4 on deviations.")
@json_option
@click.option("--xml-out", metavar="FILE", help="Also write nmap's raw XML to FILE.")
@click.option("--no-save", is_flag=True, help="Do not record the scan in the history.")
@click.option("--force", is_flag=True,
              help="Skip the route check (never the scope check).")
@click.pass_context
def run_cmd(ctx: click.Context, targets: tuple[str, ...], playbook: str | None,
            profile: str | None, scanner: str | None, excludes: tuple[str, ...],
            scope: tuple[str, ...], public_ranges: tuple[str, ...], timeout: int | None,
            baseline: str | None, as_json: bool, xml_out: str | None, no_save: bool,
            force: bool) -> int:
    """Scan TARGET... (addresses, CIDRs, a.b.c.x-y ranges) inside the lab."""
    from labctl.app.scan import run_scan

    verbose = getattr(ctx.find_root().obj, "verbosity", 0) or 0
    loaded = _load_playbook(playbook)
    show_bar = not as_json and sys.stderr.isatty()
    cb, stop = _progress_bar(show_bar)
    try:
        result = run_scan(loaded, list(targets), profile=profile, scanner=scanner,
                          excludes=excludes, save=not no_save, progress=cb, scope=scope,
                          force=force, baseline=baseline, xml_out=xml_out,
                          public_ranges=public_ranges, timeout=timeout)
    finally:
        stop()
    if as_json:
        emit_json(result.to_dict())
    else:
        _render_result(result, verbose)
        if baseline:
            _render_changes(result.deviations or [], f"baseline {result.baseline}")
    if baseline and result.deviations:
        return int(ExitCode.DRIFT)
    return 0


@scan.command("history", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--lab", metavar="NAME", help="Only scans of this lab.")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
def history_cmd(lab: str | None, limit: int, as_json: bool) -> None:
    """List saved scans, newest first."""
    from labctl.app.scan import history

    rows = history(lab, limit)
    if as_json:
        emit_json({"scans": rows})
        return
    if not rows:
        echo("no scans saved yet")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for col in ("id", "started", "duration", "lab", "profile", "scanner", "targets", "up",
                "open"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["id"]), _fmt_time(r["started"]), f"{r['ended'] - r['started']:.1f}s",
                  r["lab"], r["profile"], r["scanner"], " ".join(r["targets"]),
                  str(r["hosts_up"]), str(r["open_ports"]))
    Console(width=None if sys.stdout.isatty() else 160).print(t)


@scan.command("diff", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("old", required=False, type=click.IntRange(min=1))
@click.argument("new", required=False, type=click.IntRange(min=1))
@click.option("--lab", metavar="NAME", help="Default pair: the last two scans of this lab.")
@json_option
def diff_cmd(old: int | None, new: int | None, lab: str | None, as_json: bool) -> int:
    """Compare two saved scans (default: the last two of the same targets).

    Exit 0 when nothing changed, 4 when hosts or ports changed.
    """
    from labctl.app.scan import diff

    d = diff(old, new, lab)
    if as_json:
        emit_json(d)
    else:
        _render_changes(d["changes"], f"scan {d['old']} -> {d['new']}")
    return int(ExitCode.DRIFT) if d["changed"] else 0


@scan.command("profiles", context_settings={"help_option_names": ["-h", "--help"]})
@json_option
def profiles_cmd(as_json: bool) -> None:
    """List the scan profiles and their nmap arguments."""
    from labctl.scans.profiles import list_profiles, load_profile

    profs = [load_profile(n) for n in list_profiles()]
    if as_json:
        emit_json({"profiles": [p.model_dump() for p in profs]})
        return
    for p in profs:
        args = p.args if p.strategy == "oneshot" else \
            [*p.discovery_args, "|", *p.service_args]
        echo(f"{p.name:10} {' '.join(args):50} {p.description}")


__all__ = ["scan", "DriftError"]
