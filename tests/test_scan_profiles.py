"""Scan profiles: bundled ones load; bad profiles and bad arguments are clear errors."""

from __future__ import annotations

import pytest

from labctl.core.errors import ConfigError, UsageError
from labctl.scans.profiles import check_nmap_args, list_profiles, load_profile


def test_bundled_profiles():
    assert set(list_profiles()) >= {"discovery", "service", "full", "ot-safe", "smart"}
    assert load_profile("discovery").args == ["-sn"]
    assert load_profile("service").args == ["-sV", "-sC"]
    assert load_profile("full").args == ["-p", "1-65535"]
    smart = load_profile("smart")
    assert smart.strategy == "smart" and "-sV" in smart.service_args
    ot = load_profile("ot-safe")
    assert not ot.allow_scripts and not ot.allow_udp and ot.playbook_excludes
    assert "-sC" not in ot.args and "-sU" not in ot.args


@pytest.mark.parametrize("args,msg", [
    (["-oX", "out.xml"], "output options"),
    (["-oN-"], "output options"),
    (["-oA", "x"], "output options"),
    (["--append-output"], "output options"),
    (["-iL", "hosts.txt"], "targets come from the command line"),
    (["-iR", "100"], "random targets"),
    (["--script-args-file", "/etc/shadow"], "arbitrary local file"),
    (["--datadir", "/tmp"], "arbitrary directory"),
    (["--stats-every", "1s"], "progress"),
    (["-p", "22 80"], "contains spaces"),
    (["-sV -sC"], "contains spaces"),
    (["-p", "22;reboot"], "shell metacharacters"),
    (["--script", "$(id)"], "shell metacharacters"),
    (["-sV", "|", "sh"], "shell metacharacters"),
    (["172.16.1.1"], "targets are given on the command line"),
    (["--frobnicate"], "not an nmap option labctl knows"),
    (["-p"], "needs a value"),
    (["-p", "-sV"], "needs a value"),
    ([""], "contains spaces"),
])
def test_bad_arguments(args, msg):
    with pytest.raises(ValueError, match=msg):
        check_nmap_args(args)


@pytest.mark.parametrize("args", [
    ["-sV", "-sC"], ["-p", "1-65535"], ["-p-"], ["-T4", "-n", "--max-retries", "2"],
    ["--script=default,version"], ["--top-ports", "100", "-sT"], ["-PS22,80", "-sn"],
    ["--exclude-ports", "9100"], ["-6", "-sV"],
    # the forms nmap accepts for the values an option needs
    ["-p80,443"], ["-pT:22,U:53", "-sU"], ["-p", "1024-"], ["-T", "aggressive"], ["-T0"],
    ["--max-rate", "10"], ["--max-rate=10.5"], ["--top-ports=100"], ["-sSV"], ["-sCV"],
    ["--script", "banner,http-title", "--script-args", "http.useragent=labctl"],
    ["--script=modbus-discover", "--script-args=modbus-discover.aggressive=true"],
    ["-g", "53"], ["--source-port=53"], ["-f", "--mtu", "16"], ["-PU", "-PS", "-PO1,6"],
    ["--exclude", "10.0.0.5,10.0.0.0/30,10.0.1.1-9"], ["--scan-delay", "50ms"],
    ["--nsock-engine=epoll"], ["--version-intensity", "0"],
])
def test_good_arguments(args):
    assert check_nmap_args(args) == args


def test_scripts_and_udp_forbidden_by_the_profile():
    with pytest.raises(ValueError, match="NSE scripts"):
        check_nmap_args(["-sC"], allow_scripts=False)
    with pytest.raises(ValueError, match="NSE scripts"):
        check_nmap_args(["--script", "banner"], allow_scripts=False)
    with pytest.raises(ValueError, match="UDP"):
        check_nmap_args(["-sU"], allow_udp=False)
    with pytest.raises(ValueError, match="UDP"):
        check_nmap_args(["-p", "T:22,U:53"], allow_udp=False)


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_bad_profile_names_file_key_and_line(tmp_path):
    path = write(tmp_path, "name: mine\ndescription: x\nargs:\n  - -sV\n  - -oX\n  - out.xml\n")
    with pytest.raises(ConfigError) as ei:
        load_profile(path)
    e = ei.value
    assert e.file == path and e.key == "args" and e.line == 3
    assert "output options" in str(e) and e.exit_code == 2


def test_ot_safe_style_profile_refuses_scripts(tmp_path):
    path = write(tmp_path, "name: mine\nallow_scripts: false\nargs: [-sT, -sC]\n")
    with pytest.raises(ConfigError, match="NSE scripts"):
        load_profile(path)


def test_unknown_key_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_profile(write(tmp_path, "name: mine\nargs: [-sV]\ntimout: 5\n"))
    assert ei.value.key == "timout" and ei.value.line == 3 and "unknown key" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        load_profile(write(tmp_path, "name: mine\nargs: [-sV\n", "bad.yaml"))
    assert ei.value.line is not None and "YAML syntax" in str(ei.value)


def test_smart_shape_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="discovery_args and service_args"):
        load_profile(write(tmp_path, "name: s\nstrategy: smart\nargs: [-sV]\n"))
    with pytest.raises(ConfigError, match="need strategy: smart"):
        load_profile(write(tmp_path, "name: s\nservice_args: [-sV]\n"))


def test_unknown_profile():
    with pytest.raises(UsageError, match="unknown scan profile 'nope'") as ei:
        load_profile("nope")
    assert "smart" in (ei.value.hint or "")


def test_cli_bad_profile_exit_2(cli_run, tmp_path):
    path = write(tmp_path, "name: mine\nargs: [-iL, hosts.txt]\n")
    r = cli_run("scan", "--profile", path, "--scope", "10.0.0.0/24", "10.0.0.5")
    assert r.exit_code == 2, r
    assert f"{path}:2: args" in r.stderr and "-iL is not allowed" in r.stderr


@pytest.mark.parametrize("target,msg", [
    ("example.com", "not an IP address"),
    ("10.0.0.300", "not an IP address"),
    ("10.0.0.9-3", "not a valid address range"),
    ("10.0.0.1;id", "not an IP address"),
])
def test_cli_bad_targets_exit_2(cli_run, target, msg):
    r = cli_run("scan", "--scope", "10.0.0.0/24", target)
    assert r.exit_code == 2, r
    assert msg in r.stderr


def test_cli_help_and_profiles(cli_run):
    r = cli_run("scan", "--help")
    assert r.exit_code == 0 and "history" in r.stdout and "diff" in r.stdout
    for sub in ("run", "history", "diff", "profiles"):
        r = cli_run("scan", sub, "--help")
        assert r.exit_code == 0 and "Usage" in r.stdout, sub
    r = cli_run("scan", "profiles", "--json")
    names = [p["name"] for p in r.json()["profiles"]]
    assert {"smart", "ot-safe", "full", "service", "discovery"} <= set(names)
