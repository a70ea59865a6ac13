"""Shared option bundles and output helpers for the Click commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click

from labctl.core.errors import UsageError
from labctl.core.secrets import REDACTOR


class CliState:
    """What every command gets through ``ctx.obj``.

    ``overrides`` are :class:`labctl.core.context.LabContext` fields that the caller of
    :func:`run` replaces (tests and embedders: a fake provider, another environment); the
    commands build their context with them, so nothing is patched at module level.
    """

    def __init__(self, verbosity: int = 0, traceback: bool = False,
                 overrides: Mapping[str, Any] | None = None) -> None:
        self.verbosity = verbosity
        self.traceback = traceback
        self.overrides: dict[str, Any] = dict(overrides or {})



def playbook_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-f", "--file", "playbook", metavar="FILE", default=None,
        help="Playbook (default: $LABCTL_PLAYBOOK, then ./labctl.yaml).",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout.")(f)


def yes_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")(f)


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout, with any registered secret scrubbed."""
    text = json.dumps(REDACTOR.scrub_obj(obj), indent=2, default=str, sort_keys=False)
    click.echo(text)


def echo(text: str = "", err: bool = False, **style: Any) -> None:
    text = REDACTOR.scrub(text)
    if style:
        text = click.style(text, **style)
    click.echo(text, err=err)


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def confirm(question: str, yes: bool) -> bool:
    """Ask before changing anything. Without a terminal, refuse unless -y was given."""
    if yes:
        return True
    if not stdin_is_tty():
        raise UsageError("confirmation needed but there is no terminal to ask on",
                         hint="pass -y to apply without asking")
    return click.confirm(question, default=False, err=True)


def prompt_secret(label: str) -> str:
    """Prompt for a secret (hidden input); only when a terminal is attached."""
    if not stdin_is_tty():
        return ""
    return click.prompt(label, hide_input=True, err=True, default="", show_default=False)


def progress_printer(enabled: bool) -> Callable[[Any, int, int], None] | None:
    """A progress callback for plan steps: one line per step on stderr."""
    if not enabled:
        return None

    def _show(step: Any, index: int, total: int) -> None:
        click.echo(REDACTOR.scrub(f"[{index}/{total}] {step.resource}: {step.action}"
                                  + (f" ({step.description})" if step.description else "")),
                   err=True)

    return _show
