"""`labctl verify-alerts`: prove the sensor raised the expected alerts, explain each miss.

Click only: parse, call :func:`labctl.app.verify.verify_alerts`, render. A live table goes
to stderr while it runs (one line per case when stderr is not a terminal, or with --json or
-q); the final table goes to stdout, or one JSON document with --json; --junit writes JUnit
XML for CI.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import click

from labctl.cli._common import CliState, emit_json, json_option, playbook_option
from labctl.core.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from labctl.app.verify import VerifyEvent, VerifyReport
    from labctl.app.verify_core import CaseResult

COLOURS = {"PASS": "green", "FAIL": "red", "SKIP": "yellow", "ERROR": "magenta"}


def _duration(value: str | None, what: str, hi: float = 86400.0 * 7) -> float | None:
    if value is None:
        return None
    from labctl.core.expectations import parse_duration

    try:
        return parse_duration(value, what=what, hi=hi)
    except ValueError as e:
        raise UsageError(f"--{what}: {e}") from None


def _quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx else None
    return isinstance(obj, CliState) and obj.verbosity < 0


def case_rows(results: list[CaseResult]) -> list[tuple[str, str, str, str]]:
    rows = []
    for r in results:
        lat = (f"{r.latency:.2f} s / {r.seen_latency:.2f} s"
               if r.latency is not None and r.seen_latency is not None else "-")
        text = r.reason or ("matched " + "; ".join(a.line() for a in r.matched[:1]))
        rows.append((r.id, r.verdict.value, lat, text))
    return rows


def render_table(report: VerifyReport, *, file: Any = None, width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, width=width, highlight=False,
                      soft_wrap=False)
    t = Table(title=f"verify-alerts: {report.expectations} ({report.source})",
              title_justify="left")
    for col in ("case", "verdict", "latency (alert / seen)", "detail"):
        t.add_column(col, overflow="fold")
    for cid, verdict, latency, text in case_rows(report.results):
        t.add_row(cid, f"[{COLOURS[verdict]}]{verdict}[/]", latency, text)
    console.print(t)
    for r in report.results:
        if r.hint and r.verdict.value in ("FAIL", "ERROR", "SKIP"):
            console.print(f"  {r.id}: hint: {r.hint}", markup=False)
    c = report.counts
    lat, seen = report.latencies(), report.seen_latencies()
    tail = ""
    if lat:
        tail = (f"; detection latency median {lat[len(lat) // 2]:.2f} s, worst "
                f"{lat[-1]:.2f} s (seen through the API: median {seen[len(seen) // 2]:.2f} s, "
                f"worst {seen[-1]:.2f} s)")
    console.print(f"{c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped, "
                  f"{c['ERROR']} errors in {report.ended - report.started:.1f} s{tail}",
                  markup=False)
    for n in report.notes:
        console.print(f"note: {n}", markup=False)
    if report.unexpected:
        console.print(f"{len(report.unexpected)} alert(s) arrived that no case expected:",
                      markup=False)
        for a in report.unexpected[:10]:
            console.print(f"  {a.line()}", markup=False)


class LiveView:
    """Progress on stderr: a live rich table on a terminal, else one line per event."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.rows: dict[str, list[str]] = {}
        self.live: Any = None
        self.started = time.monotonic()
        self.interactive = enabled and sys.stderr.isatty()

    def __enter__(self) -> LiveView:
        if self.interactive:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._table(), console=Console(file=sys.stderr),
                             refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def _table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"verify-alerts ({time.monotonic() - self.started:.0f} s)",
                  title_justify="left")
        for col in ("case", "state", "detail"):
            t.add_column(col, overflow="fold")
        for cid, (state, text) in self.rows.items():
            colour = COLOURS.get(state, "cyan")
            t.add_row(cid, f"[{colour}]{state}[/]", text)
        return t

    def __call__(self, ev: VerifyEvent) -> None:
        if not self.enabled:
            return
        if ev.kind == "case-start" and ev.case:
            self.rows[ev.case] = ["running", ev.text]
        elif ev.kind == "case-done" and ev.case and ev.result is not None:
            lat = f" ({ev.result.latency:.2f} s)" if ev.result.latency is not None else ""
            self.rows[ev.case] = [ev.result.verdict.value, (ev.text or "") + lat]
        if self.live is not None:
            self.live.update(self._table())
            return
        if ev.kind == "case-start":
            click.echo(f"--> {ev.case}: {ev.text}", err=True)
        elif ev.kind == "case-done" and ev.result is not None:
            click.echo(f"--> {ev.case}: {ev.result.verdict.value} {ev.text}", err=True)
        else:
            click.echo(f"--> {ev.text}", err=True)


def exit_code(report: VerifyReport) -> int:
    return 0 if report.ok else int(ExitCode.DRIFT)


def write_junit(report: VerifyReport, path: str) -> None:
    from labctl.app import junit

    stamp = dt.datetime.fromtimestamp(report.started, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    junit.write(path, junit.render(report.results, suite=report.expectations,
                                   timestamp=stamp))


@click.command("verify-alerts", context_settings={"help_option_names": ["-h", "--help"]})
@playbook_option
@click.option("--expectations", "expectations", metavar="NAME|FILE", default=None,
              help="Expectation file (default: the playbook's sensor.expectations, "
                   "nmap-default).")
@click.option("--source", type=click.Choice(["sensor", "sentinel", "both"]), default="sensor",
              show_default=True, help="Where to read alerts: the sensor's API, Microsoft "
                                      "Sentinel, or both.")
@click.option("--only", "only", multiple=True, metavar="ID",
              help="Run only this case (repeatable).")
@click.option("--junit", "junit_path", metavar="FILE", default=None,
              help="Write JUnit XML (one testcase per case).")
@click.option("--timeout", "timeout", metavar="DURATION", default=None,
              help="Deadline of every case after its stimulus (e.g. 30s, 5m; default: the "
                   "case's own within, 30m for Sentinel).")
@click.option("--no-stimulus", is_flag=True,
              help="Send nothing: match the alerts already on the sensor since --since "
                   "(for a scan run by hand).")
@click.option("--since", "since", metavar="DURATION", default=None,
              help="With --no-stimulus: how far back to look (e.g. 2h; default 1h).")
@json_option
def verify_alerts(playbook: str | None, expectations: str | None, source: str,
                  only: tuple[str, ...], junit_path: str | None, timeout: str | None,
                  no_stimulus: bool, since: str | None, as_json: bool) -> int:
    """Prove that the sensor raised the expected alerts, and explain every miss.

    Sends each case's stimulus (a scan or a packet recipe) from the scanner's place, after
    the scope guard, then polls the alert source until the case's deadline. Verdicts: PASS,
    FAIL (with the reason: authorized scanner, alert disabled, learning mode, threshold not
    reached, traffic not seen, or no matching alert), SKIP (an alert that is off by default),
    ERROR (the sensor is blind, or the stimulus failed).

    \b
    Exit codes: 0 every case passed or was skipped, 4 a case failed or errored,
    5 the sensor or Sentinel could not be reached or refused the credentials, 2 bad input.

    \b
    labctl verify-alerts -f playbooks/twin.yaml
    labctl verify-alerts --only port-zero --junit report.xml
    labctl verify-alerts --no-stimulus --since 2h --source sentinel
    """
    from labctl.app.verify import SourceName, VerifyOptions
    from labctl.app.verify import verify_alerts as run_verify
    from labctl.cli.lab import make_context
    from labctl.core.playbook import load_playbook

    if since is not None and not no_stimulus:
        raise UsageError("--since only applies with --no-stimulus")
    t = _duration(timeout, "timeout")
    back = _duration(since or ("1h" if no_stimulus else None), "since")
    opts = VerifyOptions(expectations=expectations, source=cast(SourceName, source),
                         only=only, timeout=t, no_stimulus=no_stimulus,
                         since=time.time() - back if back else None)
    ctx = make_context(load_playbook(playbook))
    with LiveView(enabled=not as_json and not _quiet()) as view:
        report = run_verify(ctx, opts, progress=view)
    if junit_path:
        write_junit(report, junit_path)
    if as_json:
        emit_json(report.to_dict())
    else:
        render_table(report)
    return exit_code(report)
