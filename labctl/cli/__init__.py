"""labctl's command line. Click only: parse, call one app function, render.

Subcommands are registered here by import path and loaded lazily, so ``labctl --help``
imports none of scapy, pypsrp or paramiko (checked by a test and bench/startup.py).
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import click

from labctl import __version__
from labctl.cli._common import CliState
from labctl.core.errors import ExitCode, LabctlError
from labctl.core.secrets import REDACTOR, RedactingFilter

# name -> (module:attribute, one-line help). The help is shown by `labctl --help`
# without importing the module.
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("labctl.cli.lab:plan", "Show what `up` would change, without changing anything."),
    "up": ("labctl.cli.lab:up", "Build or converge the lab described by the playbook."),
    "down": ("labctl.cli.lab:down", "Remove what this lab created, in reverse order."),
    "status": ("labctl.cli.lab:status", "Show drift between the playbook and the host."),
    "router": ("labctl.cli.router:router", "ASUS router: IoT network as code, backup, restore."),
    "scan": ("labctl.cli.scan:scan", "nmap validation scans with a scope guard, history, diff."),
    "sensor": ("labctl.cli.sensor:sensor",
               "The sensor: status, alerts, devices, activation, audit; the embedded one."),
    "traffic": ("labctl.cli.traffic:traffic",
                "Who talks to whom, when, on which ports; export to syslog or Sentinel."),
    "verify-alerts": ("labctl.cli.verify:verify_alerts",
                      "Prove the sensor raised the expected alerts; explain each miss."),
    "twin": ("labctl.cli.twin:twin", "Linux twin helpers: demo, router twin, processes."),
}

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

log = logging.getLogger("labctl")


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module, _, attr = target.partition(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        self.commands[name] = cmd
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in COMMANDS:
                rows.append((name, COMMANDS[name][1]))
            else:
                cmd = self.commands[name]
                rows.append((name, cmd.get_short_help_str(80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING - 10 * verbosity
    root = logging.getLogger("labctl")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("--> %(message)s" if verbosity <= 1
                                           else "--> %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(max(logging.DEBUG, min(logging.ERROR, level)))
    root.propagate = False


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="labctl")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (repeatable).")
@click.option("-q", "--quiet", count=True, help="Only errors on stderr.")
@click.option("--traceback", is_flag=True, hidden=True, help="Re-raise unexpected errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, traceback: bool) -> None:
    """Build and prove a home IoT/OT security lab as code.

    \b
    Exit codes: 0 ok, 1 error, 2 bad input (nothing contacted), 3 changes pending
    (plan --exit-code), 4 drift / not converged / scan changed, 5 unreachable or
    authentication failed, 6 refused by a pre-flight check, 130 interrupted.
    """
    verbosity = verbose - quiet
    _setup_logging(verbosity)
    overrides = ctx.obj.overrides if isinstance(ctx.obj, CliState) else None
    ctx.obj = CliState(verbosity=verbosity, traceback=traceback, overrides=overrides)


def _report(err: LabctlError) -> None:
    click.echo(REDACTOR.scrub(f"Error: {err.message}"), err=True)
    if err.hint:
        click.echo(REDACTOR.scrub(f"Hint: {err.hint}"), err=True)


def _debug_log(exc: BaseException) -> str | None:
    try:
        from labctl.core.state import state_home

        path = state_home() / "labctl-debug.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(exc))
        path.write_text(REDACTOR.scrub(text), encoding="utf-8")
        return str(path)
    except OSError:
        return None


def run(args: list[str] | None = None, prog_name: str = "labctl", *,
        overrides: Mapping[str, Any] | None = None) -> int:
    """Run the CLI and return the exit code (never raises for expected errors).

    ``overrides``: LabContext fields to replace (see :class:`CliState`).
    """
    want_tb = "--traceback" in (args if args is not None else sys.argv[1:])
    try:
        rv = cli.main(args=args, prog_name=prog_name, standalone_mode=False,
                      obj=CliState(overrides=overrides))
        return int(rv) if isinstance(rv, int) else 0
    except LabctlError as e:
        _report(e)
        return int(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return int(ExitCode.INTERRUPTED)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return int(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return int(ExitCode.INTERRUPTED)
    except Exception as e:  # an unexpected bug: keep the trace, show a short message
        if want_tb:
            raise
        where = _debug_log(e)
        click.echo(REDACTOR.scrub(f"Error: unexpected {type(e).__name__}: {e}"), err=True)
        if where:
            click.echo(f"Hint: this is a bug in labctl; the traceback is in {where}", err=True)
        return int(ExitCode.ERROR)


def main() -> None:
    sys.exit(run())
