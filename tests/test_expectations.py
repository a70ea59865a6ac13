"""Expectation files: the shipped set loads; bad files fail with file, key and line (exit 2)
before anything is sent; names cannot escape the asset folder."""

from __future__ import annotations

import pytest

from labctl.core.errors import ConfigError, ExitCode, UsageError
from labctl.core.expectations import load_expectations, parse_duration


def test_shipped_nmap_default_covers_the_reference_lab():
    exp = load_expectations("nmap-default")
    ids = [c.id for c in exp.cases]
    assert {"service-scan-subnet", "full-port-scan-feeder", "irc-6667-custom-rule",
            "port-zero", "sweep-below-threshold", "baseline-quiet"} <= set(ids)
    # negatives run before any scan that could hide them
    assert ids.index("sweep-below-threshold") < ids.index("full-port-scan-feeder")
    assert all(c.reference for c in exp.cases)


@pytest.mark.parametrize("body,key,line,text", [
    ("cases:\n  - id: x\n    stimulus: {recipe: syn-sweep, host: a}\n"
     "    expect: [{title: T}]\n", "cases[0].stimulus", 3, "needs ports"),
    ("cases:\n  - id: x\n    stimulus: {recipe: bogus, host: a}\n    expect: [{title: T}]\n",
     "cases[0].stimulus.recipe", 3, "Input should be"),
    ("cases:\n  - id: x\n    stimulus: {recipe: port-zero, host: '{device}'}\n"
     "    expect: [{title: T}]\n", "cases[0].stimulus.host", 3, "unknown placeholder"),
    ("cases:\n  - id: x\n    stimulus: {recipe: port-zero, host: a}\n"
     "    expect: [{title: T, within: '١٠s'}]\n", "cases[0].expect[0].within", 4,
     "duration"),
    ("cases:\n  - id: x\n    stimulus: {recipe: port-zero, host: a}\n"
     "    expect: [{title: T, min_count: 0}]\n", "cases[0].expect[0].min_count", 4,
     "greater than or equal"),
    ("cases:\n  - id: x\n    stimulus: {recipe: tcp-connect, host: a, port: 70000}\n"
     "    expect: [{title: T}]\n", "cases[0].stimulus.port", 3, "less than or equal"),
    ("cases:\n  - id: x\n    stimulus: {recipe: port-zero, host: a}\n",
     "cases[0]", 2, "needs expect"),
    ("cases:\n  - id: x\n    stimulus: {recipe: port-zero, host: a}\n    expect: [{}]\n"
     "  - id: x\n    stimulus: {recipe: port-zero, host: a}\n    expect: [{}]\n",
     "cases[1].id", 5, "duplicate case id"),
])
def test_bad_files_name_file_key_and_line(tmp_path, body, key, line, text):
    p = tmp_path / "bad.yaml"
    p.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load_expectations(str(p))
    e = ei.value
    assert e.exit_code == ExitCode.USAGE
    assert e.file == str(p) and e.key == key and e.line == line, (e.key, e.line, e.message)
    assert text in e.message


def test_names_cannot_escape_the_asset_folder():
    for name in ("../../etc/passwd", "..", "a b"):
        with pytest.raises(UsageError):
            load_expectations(name)
    with pytest.raises(UsageError, match="no such expectations file"):
        load_expectations("no-such-set")


def test_durations():
    assert parse_duration("250ms") == 0.25 and parse_duration("2m") == 120
    assert parse_duration(5) == 5.0
    for bad in ("0", "-1", "5x", "１０s", True, "1e3"):
        with pytest.raises(ValueError):
            parse_duration(bad)
