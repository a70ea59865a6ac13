"""The route check with two lab networks on two interfaces, and guard_addresses().

Scanner namespace (built here, deleted in ``finally``; every veth's peer stays inside it, so
nothing is routed anywhere)::

    a0  10.31.1.1/24   lab network A
    b0  10.31.2.1/24   lab network B
    u0  198.51.100.2/24, default via 198.51.100.1 (an "uplink", not a lab network)
    10.31.1.128/25 dev b0           A's upper half routed out of B's interface: refused
    10.31.9.0/24 via 10.31.2.254    a lab router on B: accepted
    10.31.8.0/24 (scope only)       leaves by the default route via the uplink: refused
"""

from __future__ import annotations

import secrets
import subprocess

import pytest

from labctl.core.errors import ScopeError, UsageError
from tests.helpers.scan_recorder import calls, make_recorder

pytestmark = pytest.mark.netns


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def ns():
    name = f"scr{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        for dev, addr in (("a0", "10.31.1.1/24"), ("b0", "10.31.2.1/24"),
                          ("u0", "198.51.100.2/24")):
            sh("ip", "-n", name, "link", "add", dev, "type", "veth", "peer", "name", dev + "p")
            sh("ip", "-n", name, "link", "set", dev + "p", "up")
            sh("ip", "-n", name, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", name, "link", "set", dev, "up")
        sh("ip", "-n", name, "route", "add", "default", "via", "198.51.100.1")
        sh("ip", "-n", name, "route", "add", "10.31.1.128/25", "dev", "b0")
        sh("ip", "-n", name, "route", "add", "10.31.9.0/24", "via", "10.31.2.254")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.fixture
def pb(ns, tmp_path):
    from labctl.core.playbook import load_playbook

    p = tmp_path / "lab.yaml"
    p.write_text("version: 1\nlab: rt\nprovider: netns\nswitches:\n"
                 "  - {name: A, type: internal, host_ip: 10.31.1.1/24}\n"
                 "  - {name: B, type: internal, host_ip: 10.31.2.1/24}\n"
                 f"scanner:\n  spec: netns:{ns}\n  scope: [10.31.9.0/24, 10.31.8.0/24]\n")
    return load_playbook(str(p))


def test_route_through_another_lab_networks_interface_is_refused(pb, ns):
    from labctl.app.scan import guard_addresses

    assert guard_addresses(pb, ["10.31.1.5"]) == f"netns:{ns}"
    assert guard_addresses(pb, ["10.31.2.0/24", "10.31.1.1-100"]) == f"netns:{ns}"
    for target in ("10.31.1.200", "10.31.1.0/24", "10.31.1.100-130"):
        with pytest.raises(ScopeError) as ei:
            guard_addresses(pb, [target])
        msg = str(ei.value)
        assert "leaves through b0 (10.31.2.1/24), whose lab networks do not contain" in msg
        assert "--force skips this route check" in ei.value.hint
    # --force skips only the route check
    assert guard_addresses(pb, ["10.31.1.200"], force=True) == f"netns:{ns}"


def test_gateway_on_a_lab_network_is_accepted_and_the_uplink_is_not(pb, ns):
    from labctl.app.scan import guard_addresses

    assert guard_addresses(pb, ["10.31.9.7", "10.31.9.0/28"]) == f"netns:{ns}"
    with pytest.raises(ScopeError, match="leaves through u0 via 198.51.100.1, not a lab "
                                         "interface or a gateway on a lab network"):
        guard_addresses(pb, ["10.31.8.7"])


def test_guard_addresses_scope_and_targets(pb, ns):
    from labctl.app.scan import guard_addresses

    with pytest.raises(ScopeError, match="outside the lab scope"):
        guard_addresses(pb, ["8.8.8.8"], force=True)
    with pytest.raises(ScopeError, match="outside the lab scope"):
        guard_addresses(pb, ["198.51.100.1"])  # the uplink's network is not declared
    with pytest.raises(UsageError, match="not an IP address"):
        guard_addresses(pb, ["١٠.31.1.5"])
    with pytest.raises(UsageError, match="not an IP address"):
        guard_addresses(pb, ["example.com"])
    with pytest.raises(ScopeError, match="no route from namespace"):
        guard_addresses(pb, ["10.31.1.5"], scanner="netns:scr-does-not-exist")


def test_cli_scan_refuses_before_nmap_starts(cli_run, pb, ns, tmp_path, monkeypatch):
    prog, record = make_recorder(tmp_path / "rec")
    monkeypatch.setenv("LABCTL_NMAP", str(prog))
    r = cli_run("scan", "-f", pb.path, "--profile", "discovery", "--no-save", "10.31.1.200")
    assert r.exit_code == 2, r.stderr
    assert "whose lab networks do not contain 10.31.1.200" in r.stderr
    assert calls(record) == []
    r = cli_run("scan", "-f", pb.path, "--profile", "discovery", "--no-save", "10.31.9.7")
    assert r.exit_code == 0, r.stderr
    (argv,) = calls(record)
    assert argv[-1] == "10.31.9.7"


def test_twin_wan_networks_only_for_the_netns_provider(repo_root):
    from labctl.app.scan import allowed_networks, guard_addresses
    from labctl.core.playbook import load_playbook

    twin = load_playbook(str(repo_root / "playbooks" / "twin.yaml"))
    home = load_playbook(str(repo_root / "playbooks" / "home-lab.yaml"))
    assert twin.model.provider == "netns" and home.model.provider == "hyperv"
    wan = [w.network for w in twin.model.twin.wan_services]
    assert set(wan) <= set(allowed_networks(twin))
    # the SSH scanner has no local route check: scope alone decides, nothing is contacted
    assert guard_addresses(twin, ["203.0.113.10"], "ssh://kali@172.16.1.50") == \
        "ssh://kali@172.16.1.50"
    with pytest.raises(ScopeError, match="outside the lab scope"):
        guard_addresses(home, ["203.0.113.10"], "ssh://kali@172.16.1.50")
    assert not set(wan) & set(allowed_networks(home))
    assert guard_addresses(home, ["172.16.1.20"]) == "ssh://kali@172.16.1.50"
