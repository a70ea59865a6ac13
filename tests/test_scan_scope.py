"""The scope guard refuses out-of-scope and badly routed targets before nmap starts.

nmap is replaced by a recording stand-in (LABCTL_NMAP): a refused scan leaves its record
empty; an allowed one (e.g. --force past the route check) shows exactly one call.
"""

from __future__ import annotations

import pytest

from tests.helpers.scan_lab import make_lab
from tests.helpers.scan_recorder import calls, make_recorder

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab():
    lab = make_lab({"10.213.0.11": {}})
    try:
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    prog, record = make_recorder(tmp_path / "rec")
    monkeypatch.setenv("LABCTL_NMAP", str(prog))
    return record


def test_out_of_scope_target_refused(cli_run, lab, recorder):
    k = f"netns:{lab.scanner_ns}"
    for args in (["--scope", "10.213.0.0/24", "10.214.0.5"],
                 ["--scope", "10.213.0.0/24", "10.213.0.0/16"],  # only partly inside
                 ["--scope", "10.213.0.0/24", "10.213.0.11", "192.0.2.1"],
                 ["--scope", "10.213.0.0/24", "--force", "10.214.0.5"]):
        r = cli_run("scan", "--scanner", k, "--profile", "discovery", *args)
        assert r.exit_code == 2, (args, r)
        assert "outside the lab scope (10.213.0.0/24)" in r.stderr
    assert calls(recorder) == []


def test_empty_scope_refused_even_with_force(cli_run, lab, recorder, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./labctl.yaml
    monkeypatch.delenv("LABCTL_PLAYBOOK", raising=False)
    for extra in ([], ["--force"]):
        r = cli_run("scan", "--scanner", f"netns:{lab.scanner_ns}", *extra, "10.213.0.11")
        assert r.exit_code == 2, r
        assert "scope is empty" in r.stderr and "--force does not override" in r.stderr
    assert calls(recorder) == []


def test_route_through_non_lab_interface_refused_and_force_overrides(cli_run, lab, recorder):
    k = f"netns:{lab.scanner_ns}"
    r = cli_run("scan", "--scanner", k, "--scope", "203.0.113.0/24", "--profile", "discovery",
                "203.0.113.7")
    assert r.exit_code == 2, r
    assert "leaves through up0 via 198.51.100.1, not a lab interface" in r.stderr
    assert calls(recorder) == []
    r = cli_run("scan", "--scanner", k, "--scope", "203.0.113.0/24", "--profile", "discovery",
                "--force", "--no-save", "--json", "203.0.113.7")
    assert r.exit_code == 0, r
    (argv,) = calls(recorder)
    assert argv[-1] == "203.0.113.7" and "-sn" in argv and argv[argv.index("-oX") + 1] == "-"


def test_no_route_refused(cli_run, lab, recorder):
    r = cli_run("scan", "--scanner", f"netns:{lab.scanner_ns}", "--scope", "fd00:99::/64",
                "fd00:99::5")
    assert r.exit_code == 2, r
    assert "no route from namespace" in r.stderr
    assert calls(recorder) == []


def test_local_scanner_checks_the_root_namespace_route(cli_run, lab, recorder):
    # The lab exists only inside namespaces; from this namespace 10.213.0.11 is not
    # reachable through any lab interface, so a local scan is refused.
    r = cli_run("scan", "--scanner", "local", "--scope", "10.213.0.0/24", "10.213.0.11")
    assert r.exit_code == 2, r
    assert "refusing to scan: the route to 10.213.0.11" in r.stderr
    assert calls(recorder) == []


def test_playbook_networks_are_the_scope_and_excludes_apply(cli_run, lab, recorder, tmp_path):
    pb = tmp_path / "lab.yaml"
    pb.write_text(
        "version: 1\nlab: sctest\nprovider: netns\n"
        "switches:\n  - {name: Lab, type: internal, host_ip: 10.213.0.1/24}\n"
        f"scanner:\n  spec: netns:{lab.scanner_ns}\n  profile: discovery\n"
        "  exclude: [10.213.0.66]\n")
    r = cli_run("scan", "-f", str(pb), "--exclude", "10.213.0.77", "--json", "10.213.0.0/24")
    assert r.exit_code == 0, r
    (argv,) = calls(recorder)
    assert argv[argv.index("--exclude") + 1] == "10.213.0.77,10.213.0.66"
    doc = r.json()
    assert doc["lab"] == "sctest" and doc["scanner"] == f"netns:{lab.scanner_ns}"
    assert doc["argv"][0][:5] == ["ip", "netns", "exec", lab.scanner_ns, str(
        __import__("os").environ["LABCTL_NMAP"])]
    r = cli_run("scan", "-f", str(pb), "172.16.1.5")
    assert r.exit_code == 2 and "outside the lab scope (10.213.0.0/24)" in r.stderr
    assert len(calls(recorder)) == 1
    # ot-safe: polite connect scan, no scripts, no UDP, and the playbook's exclusions
    r = cli_run("scan", "-f", str(pb), "--profile", "ot-safe", "--no-save", "10.213.0.0/24")
    assert r.exit_code == 0, r
    argv = calls(recorder)[1]
    assert argv[argv.index("--exclude") + 1] == "10.213.0.66"
    assert "-sT" in argv and argv[argv.index("--max-rate") + 1] == "10"
    assert not {"-sC", "-sU", "-A", "--script"} & set(argv)


def test_missing_namespace_and_missing_nmap(cli_run, recorder, monkeypatch):
    r = cli_run("scan", "--scanner", "netns:sc-does-not-exist", "--scope", "10.213.0.0/24",
                "--force", "10.213.0.11")
    assert r.exit_code == 6 and "does not exist" in r.stderr, r
    monkeypatch.setenv("LABCTL_NMAP", "/nonexistent/nmap")
    r = cli_run("scan", "--scanner", "local", "--scope", "10.213.0.0/24", "--force",
                "10.213.0.11")
    assert r.exit_code == 6 and "nmap was not found" in r.stderr, r
    assert calls(recorder) == []
