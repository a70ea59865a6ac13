"""The CLI root: version, help on every command, error reporting and exit codes."""

from __future__ import annotations

import click
import pytest

import labctl
from labctl import cli as cli_mod
from labctl.core.errors import (
    AuthError,
    ConfigError,
    ConvergenceError,
    ExitCode,
    LabctlError,
    PreflightError,
)


def test_version(cli_run):
    r = cli_run("--version")
    assert r.exit_code == 0 and labctl.__version__ in r.stdout


def test_unknown_command_is_usage_error(cli_run):
    r = cli_run("frobnicate")
    assert r.exit_code == 2 and "No such command" in r.stderr


def test_every_registered_command_has_help(cli_run):
    for name in cli_mod.COMMANDS:
        r = cli_run(name, "--help")
        assert r.exit_code == 0, (name, r)
        assert "Usage:" in r.stdout


@pytest.mark.parametrize("exc,code", [
    (LabctlError("boom", hint="try again"), ExitCode.ERROR),
    (ConfigError("bad key", file="x.yaml", key="a.b", line=3), ExitCode.USAGE),
    (PreflightError("refused"), ExitCode.PRECONDITION),
    (AuthError("denied"), ExitCode.UNREACHABLE),
    (ConvergenceError("not converged"), ExitCode.DRIFT),
])
def test_labctl_errors_map_to_exit_codes(cli_run, monkeypatch, exc, code):
    @click.command("explode")
    def explode():
        raise exc

    monkeypatch.setitem(cli_mod.cli.commands, "explode", explode)
    r = cli_run("explode")
    assert r.exit_code == int(code)
    assert r.stderr.startswith("Error: ")
    assert exc.message in r.stderr
    if exc.hint:
        assert f"Hint: {exc.hint}" in r.stderr
    assert r.stdout == ""


def test_unexpected_error_writes_debug_log(cli_run, monkeypatch, _isolated_state):
    @click.command("explode")
    def explode():
        raise ZeroDivisionError("kaboom")

    monkeypatch.setitem(cli_mod.cli.commands, "explode", explode)
    r = cli_run("explode")
    assert r.exit_code == 1
    assert "unexpected ZeroDivisionError" in r.stderr
    log = _isolated_state / "labctl-debug.log"
    assert log.exists() and "kaboom" in log.read_text()


def test_config_error_message_names_file_key_line():
    e = ConfigError("unknown key", file="lab.yaml", key="hyperv.colour", line=12)
    assert str(e) == "lab.yaml:12: hyperv.colour: unknown key"
