"""The scope guard with real nmap, in a namespace that has only ``lo``.

``LABCTL_NMAP`` points at a wrapper (tests/helpers/scan_nmapwrap.py) that records each
invocation and then execs the real nmap. Every refused case below must leave the record
empty: nmap never started. A profile script that would write a marker file if nmap ever
ran it proves that no path-loaded Lua ran either. Accepted cases scan only addresses on the
namespace's own ``lo`` (10.77.0.0/24), so no packet leaves the namespace.
"""

from __future__ import annotations

import secrets
import subprocess

import pytest

from tests.helpers.scan_nmapwrap import make_wrapper, real_nmap

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(real_nmap() is None, reason="nmap is not installed")]

LAB = "10.77.0.0/24"
QUICK = "name: quick\nargs: [-sT, -n, -Pn, -p, '1,22']\ntimeout: 60\nstats_every: 1s\n"


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def ns():
    name = f"scg{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "addr", "add", "10.77.0.1/24", "dev", "lo")
        out = subprocess.run(["ip", "-n", name, "-o", "link"], capture_output=True,
                             text=True, check=True).stdout
        assert [ln.split(":")[1].strip() for ln in out.splitlines()] == ["lo"]
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.fixture
def wrapper(tmp_path, monkeypatch):
    prog, record = make_wrapper(tmp_path / "wrap")
    monkeypatch.setenv("LABCTL_NMAP", str(prog))
    monkeypatch.chdir(tmp_path)  # no ./labctl.yaml
    monkeypatch.delenv("LABCTL_PLAYBOOK", raising=False)
    return record


def recorded(record) -> list[list[str]]:
    import json

    if not record.exists():
        return []
    return [json.loads(ln) for ln in record.read_text().splitlines() if ln]


@pytest.fixture
def evil(tmp_path):
    """A script nmap would run as root if it ever loaded it: it writes a marker file."""
    marker = tmp_path / "EVIL-RAN"
    d = tmp_path / "data" / "scripts"
    d.mkdir(parents=True)
    lua = (f'description = "x"\ncategories = {{"safe"}}\nprerule = function() return true end\n'
           f'action = function() local f = io.open("{marker}", "w"); f:write("ran"); '
           f'f:close() end\n')
    script = tmp_path / "evil.nse"
    script.write_text(lua)
    (d / "banner.nse").write_text(lua)
    (d / "script.db").write_text('Entry { filename = "banner.nse", categories = { "safe", } }\n')
    return script, marker, tmp_path / "data"


def profile(tmp_path, body: str, name: str = "p") -> str:
    p = tmp_path / f"{name}-{secrets.token_hex(3)}.yaml"
    p.write_text(body)
    return str(p)


def bad_profiles(tmp_path, evil_script, datadir) -> list[tuple[str, str]]:
    e = str(evil_script)
    one = [
        ([f"--script={e}"], "never by path"),
        (["--script", e], "never by path"),
        ([f"-script={e}"], "single-dash long options"),
        (["--script", "evil"], "not in nmap's script database"),
        (["--script", "safe"], "category 'safe' is not allowed"),
        (["--script", "banner", "--script-args", "newtargets"], "adds targets"),
        (["--script", "banner", "--script-args", "targets-asn.asn=15169"], "adds targets"),
        (["--script-args", "ssh-hostkey.known-hosts-path=/etc/shadow"], "reads files"),
        (["-e", "lo"], "the interface"),
        (["--send-eth"], "raw Ethernet"),
        (["--send-ip"], "not allowed"),
        (["-S", "10.77.0.9"], "another source"),
        (["-D", "RND:3"], "another source"),
        (["-sI", "10.77.0.9"], "another source"),
        (["-b", "ftp.example"], "another source"),
        (["--spoof-mac", "0"], "another source"),
        (["--proxies", "http://10.77.0.9:3128"], "proxy relays"),
        (["--dns-servers", "10.77.0.9"], "DNS queries"),
        (["-excludefile=/etc/passwd"], "single-dash long options"),
        (["--excludefile", "/etc/passwd"], "exclusions come from"),
        (["--datadir", str(datadir)], "arbitrary directory"),
        (["-datadir", str(datadir)], "single-dash"),
        (["--servicedb", "/etc/passwd"], "arbitrary local file"),
        (["--resume", "/tmp/x"], "bypasses the scope guard"),
        (["-iL", "/etc/hosts"], "targets come from the command line"),
        (["-iR", "5"], "random targets"),
        (["-oN", str(tmp_path / "out.txt")], "output options"),
        (["--top-ports", "0"], "from 1 to 65535"),
        (["--max-rate", "-1"], "from 0.001"),
    ]
    out = []
    for args, msg in one:
        items = ", ".join(f"'{a}'" for a in ["-sT", "-n", "-Pn", "-p", "1", *args])
        out.append((profile(tmp_path, f"name: bad\nargs: [{items}]\ntimeout: 30\n"), msg))
    out.append((profile(tmp_path, f"name: s\nstrategy: smart\ndiscovery_args: [-n, --script, "
                                  f"'{e}']\nservice_args: [-sV]\n"), "never by path"))
    out.append((profile(tmp_path, "name: s\nstrategy: smart\ndiscovery_args: [-n]\n"
                                  "service_args: [-sV, -excludefile=/etc/passwd]\n"),
                "single-dash"))
    return out


def test_refused_profiles_never_start_nmap(cli_run, ns, wrapper, evil, tmp_path):
    script, marker, datadir = evil
    for path, msg in bad_profiles(tmp_path, script, datadir):
        r = cli_run("scan", "--scanner", f"netns:{ns}", "--scope", LAB, "--profile", path,
                    "--no-save", "10.77.0.1")
        assert r.exit_code == 2, (path, r.stderr)
        assert msg in r.stderr and path in r.stderr, (path, r.stderr)
    assert recorded(wrapper) == []
    assert not marker.exists()


SCOPE_CASES = [
    (["--scope", "0.0.0.0/0", "8.8.8.8"], "not a private, link-local or documentation range"),
    (["--scope", "8.8.8.0/24", "8.8.8.8"], "--i-own-this-public-range"),
    (["--scope", "100.64.0.0/10", "100.64.0.5"], "not a private"),
    (["--scope", "::/0", "2001:4860:4860::8888"], "not a private"),
    (["--scope", LAB, "8.8.8.8"], "outside the lab scope"),
    (["--scope", LAB, "10.77.0.0/16"], "outside the lab scope"),
    (["--i-own-this-public-range", "0.0.0.0/0", "8.8.8.8"], "larger than a /16"),
    (["--i-own-this-public-range", "8.0.0.0/8", "8.8.8.8"], "larger than a /16"),
    (["--i-own-this-public-range", "224.0.0.0/24", "224.0.0.1"], "multicast"),
    (["--i-own-this-public-range", "2001:4860::/32", "2001:4860::1"], "larger than a /48"),
    # an owned public range is in scope, and the route check still refuses it here
    (["--i-own-this-public-range", "8.8.8.0/24", "8.8.8.8"], "no route from namespace"),
    # empty scope, also with --force
    (["--force", "10.77.0.1"], "scope is empty"),
]


@pytest.mark.parametrize("args,msg", SCOPE_CASES, ids=[" ".join(a) for a, _ in SCOPE_CASES])
def test_scope_too_wide_never_starts_nmap(cli_run, ns, wrapper, tmp_path, args, msg):
    quick = profile(tmp_path, QUICK)
    r = cli_run("scan", "--scanner", f"netns:{ns}", "--profile", quick, "--no-save", *args)
    assert r.exit_code == 2, r.stderr
    assert msg in r.stderr, r.stderr
    assert "hint" in r.stderr.lower() or "--" in r.stderr
    assert recorded(wrapper) == []


def test_playbook_scopes_are_lab_ranges(cli_run, ns, wrapper, tmp_path):
    quick = profile(tmp_path, QUICK)
    pb = tmp_path / "lab.yaml"
    pb.write_text("version: 1\nlab: g\nprovider: netns\n"
                  f"scanner:\n  spec: netns:{ns}\n  scope: [{LAB}, 0.0.0.0/0]\n")
    r = cli_run("scan", "-f", str(pb), "--profile", quick, "8.8.8.8")
    assert r.exit_code == 2, r.stderr
    assert f"{pb}:6: scanner.scope" in r.stderr and "0.0.0.0/0 is not a private" in r.stderr
    pb.write_text("version: 1\nlab: g\nprovider: netns\nswitches:\n"
                  "  - {name: Lab, type: internal, host_ip: 10.77.0.1/24}\n"
                  "  - {name: Wan, type: internal, host_ip: 8.8.8.1/24}\n"
                  f"scanner:\n  spec: netns:{ns}\n")
    r = cli_run("scan", "-f", str(pb), "--profile", quick, "10.77.0.1")
    assert r.exit_code == 2, r.stderr
    assert f"{pb}:6: switches[1].host_ip" in r.stderr and "8.8.8.0/24 is a public" in r.stderr
    assert "--i-own-this-public-range 8.8.8.0/24" in r.stderr
    r = cli_run("scan", "-f", str(pb), "--profile", quick, "--i-own-this-public-range",
                "8.8.8.0/24", "8.8.8.8")
    assert r.exit_code == 2 and "no route from namespace" in r.stderr, r.stderr
    assert recorded(wrapper) == []


TARGETS = ["١٧٢.16.1.1-5", "١٠.77.0.1", "１０.７７.0.1", "10.77.0.1-５", "10.77.0.١",
           "localhost", "scanme.nmap.org", "010.77.0.1", "10.77.1", "167772161", "0x0a.77.0.1",
           "10.77.0.1%lo", " 10.77.0.1", "10.77.0.1\n", "10.77.0.0/٢٤", "10.77.0.1/24 ",
           "fd00::1%lo", "10.77.0.*", "10.77.0-1.1"]


@pytest.mark.parametrize("target", TARGETS, ids=[repr(t) for t in TARGETS])
def test_targets_are_ascii_addresses(cli_run, ns, wrapper, tmp_path, target):
    quick = profile(tmp_path, QUICK)
    r = cli_run("scan", "--scanner", f"netns:{ns}", "--scope", LAB, "--scope", "172.16.1.0/24",
                "--scope", "fd00::/64", "--profile", quick, "--no-save", "--", target)
    assert r.exit_code == 2, r.stderr
    assert "is not an IP address, CIDR network or a.b.c.x-y range" in r.stderr, r.stderr
    assert recorded(wrapper) == []


@pytest.mark.parametrize("value", ["0", "-1", "4", "86401", "ten"])
def test_numbers_have_ranges(cli_run, ns, wrapper, tmp_path, value):
    r = cli_run("scan", "--scanner", f"netns:{ns}", "--scope", LAB, "--timeout", value,
                "--no-save", "10.77.0.1")
    assert r.exit_code == 2, r.stderr
    assert "--timeout" in r.stderr
    r = cli_run("scan", "diff", "0", "1")
    assert r.exit_code == 2
    assert recorded(wrapper) == []


def test_accepted_scans_run_real_nmap_inside_the_namespace(cli_run, ns, wrapper, tmp_path):
    quick = profile(tmp_path, QUICK)
    r = cli_run("scan", "--scanner", f"netns:{ns}", "--scope", LAB, "--profile", quick,
                "--no-save", "--json", "--timeout", "60", "10.77.0.1", "10.77.0.0/30")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    ups = sorted(h["addr"] for h in doc["hosts"] if h["state"] == "up")
    assert "10.77.0.1" in ups
    assert all(p["state"] == "closed" for h in doc["hosts"] for p in h["ports"])
    scripted = profile(tmp_path, "name: scripted\nargs: [-sT, -n, -Pn, -p, '1', --script, "
                                 "banner, --script-args, 'banner.timeout=1s']\ntimeout: 60\n")
    r = cli_run("scan", "--scanner", f"netns:{ns}", "--scope", LAB, "--profile", scripted,
                "--no-save", "--json", "10.77.0.1")
    assert r.exit_code == 0, r.stderr
    argvs = recorded(wrapper)
    assert len(argvs) == 2
    assert argvs[0][-2:] == ["10.77.0.1", "10.77.0.0/30"]
    assert argvs[1][argvs[1].index("--script") + 1] == "banner"
    assert all(a[a.index("-oX") + 1] == "-" for a in argvs)
