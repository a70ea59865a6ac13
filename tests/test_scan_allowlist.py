"""The profile allow-list, class by class: every refused form, in every place a profile's
arguments come from (bundled files, files given by path, both smart passes, ScanProfile
objects built in code) and at the last gate before any scanner (local, netns, SSH) starts
nmap. No packets are sent: refusals happen before nmap or SSH is started."""

from __future__ import annotations

import pytest

from labctl.core.errors import ConfigError, UsageError
from labctl.scans import scriptdb
from labctl.scans.profiles import ScanProfile, check_nmap_args, load_profile, revalidate
from labctl.scans.scanners import LocalScanner, SshScanner
from tests.helpers.scan_recorder import calls, make_recorder

NEEDS_DB = pytest.mark.skipif(scriptdb.db_path() is None, reason="nmap's script.db is missing")

REFUSED = [
    # scripts: by path, by file name, globs, expressions, forced, unknown, denied categories
    (["--script", "/tmp/evil.nse"], "never by path"),
    (["--script=/tmp/evil.nse"], "never by path"),
    (["--script", "evil.nse"], "never by path"),
    (["--script", "./evil"], "never by path"),
    (["--script", "+banner"], "never by path"),
    (["--script", "http-*"], "globs"),
    (["--script", "default,/usr/share/x"], "never by path"),
    (["--script", "all"], "every NSE script"),
    (["--script", "safe"], "category 'safe' is not allowed"),
    (["--script=default,safe"], "category 'safe' is not allowed"),
    (["--script", "discovery"], "category 'discovery' is not allowed"),
    (["--script", "vuln"], "category 'vuln' is not allowed"),
    (["--script", "external"], "category 'external' is not allowed"),
    (["--script", "broadcast"], "category 'broadcast' is not allowed"),
    (["--script", "intrusive"], "category 'intrusive' is not allowed"),
    # script arguments that add targets, read files or relay traffic; unknown keys
    (["--script", "banner", "--script-args", "newtargets"], "adds targets"),
    (["--script", "banner", "--script-args", "newtargets=1"], "adds targets"),
    (["--script-args", "targets-asn.asn=32"], "adds targets"),
    (["--script-args", "max-newtargets=10"], "adds targets"),
    (["--script-args", "userdb=/etc/shadow"], "reads"),
    (["--script-args", "ssh-hostkey.known-hosts-path=/root/.ssh/known_hosts"], "reads"),
    (["--script-args", "http-fetch.destination=/tmp/x"], "not one labctl allows"),
    (["--script-args", "unsafe=1"], "not one labctl allows"),
    (["--script-args", "http.useragent"], "needs a value"),
    (["--script-args=http.useragent=a,http.proxy=x"], "relays traffic"),
    # interface, spoofing, relays, DNS servers
    (["-e", "eth0"], "the interface"),
    (["-eeth0"], "the interface"),
    (["--send-eth"], "raw Ethernet"),
    (["--send-ip"], "not allowed"),
    (["-S", "192.0.2.9"], "another source"),
    (["-S192.0.2.9"], "another source"),
    (["-D", "RND:10"], "another source"),
    (["-DRND:10"], "another source"),
    (["-sI", "192.0.2.9"], "another source"),
    (["-sSI", "192.0.2.9"], "not an nmap option labctl knows"),
    (["-b", "ftp.example"], "another source"),
    (["--spoof-mac", "0"], "another source"),
    (["--proxies", "http://192.0.2.9:8080"], "proxy relays"),
    (["--proxy", "x"], "proxy relays"),
    (["--dns-servers", "8.8.8.8"], "DNS queries"),
    (["--ip-options", "L"], "source routing"),
    # files and directories nmap would read, resumed scans, input lists, outputs
    (["--datadir", "/tmp"], "arbitrary directory"),
    (["--servicedb", "/tmp/x"], "arbitrary local file"),
    (["--versiondb", "/tmp/x"], "arbitrary local file"),
    (["--script-args-file", "/etc/shadow"], "arbitrary local file"),
    (["--resume", "/tmp/x.log"], "bypasses the scope guard"),
    (["-iL", "hosts.txt"], "targets come from the command line"),
    (["-iLhosts.txt"], "targets come from the command line"),
    (["-iR", "10"], "random targets"),
    (["--excludefile", "x"], "exclusions come from"),
    (["--excludefile=x"], "exclusions come from"),
    (["-oG", "x"], "output options"),
    (["-oS-"], "output options"),
    (["--stylesheet", "x"], "output options"),
    (["--webxml"], "output options"),
    (["--script-updatedb"], "rewrites nmap's script database"),
    # the single-dash spelling of long options, and abbreviations
    (["-excludefile=x"], "single-dash long options"),
    (["-excludefile", "x"], "single-dash long options"),
    (["-script=/tmp/evil.nse"], "single-dash long options"),
    (["-script", "default"], "single-dash long options"),
    (["-script-args=newtargets"], "single-dash long options"),
    (["-datadir=/tmp"], "single-dash long options"),
    (["-proxies=http://x"], "single-dash long options"),
    (["-dns-servers=8.8.8.8"], "single-dash long options"),
    (["-open"], "single-dash long options"),
    (["-top-ports=10"], "single-dash long options"),
    (["--excl=x"], "abbreviation of --excludefile"),
    (["--datad=/tmp"], "abbreviation of --datadir"),
    (["--prox=x"], "abbreviation of --prox"),
    (["--scr=default"], "abbreviation of --script"),
    (["--frob=1"], "not an nmap option labctl knows"),
    (["--"], "every later item would be a target"),
    # values: ranges and forms
    (["-T9"], "timing template"),
    (["-T", "fast"], "timing template"),
    (["--max-rate", "0"], "from 0.001"),
    (["--max-rate", "-1"], "from 0.001"),
    (["--top-ports", "0"], "from 1 to 65535"),
    (["--top-ports=70000"], "from 1 to 65535"),
    (["-p", "70000"], "outside 0-65535"),
    (["-p100-1"], "backwards"),
    (["-p", "http"], "service names"),
    (["-p", "ftp*"], "globs"),
    (["-PS99999"], "outside 0-65535"),
    (["--mtu", "7"], "from 8"),
    (["--mtu", "12"], "multiple of 8"),
    (["--ttl", "0"], "from 1 to 255"),
    (["--max-retries", "1000"], "from 0 to 100"),
    (["--host-timeout", "-1"], "is not a time"),
    (["--scan-delay", "soon"], "is not a time"),
    (["-g", "0"], "from 1 to 65535"),
    (["--exclude", "example.com"], "not an IP address"),
    (["--nsock-engine=iocp"], "not an nsock engine"),
    # non-ASCII look-alikes
    (["-p٨٠"], "printable ASCII"),
    (["－sV"], "printable ASCII"),
    (["-sV\x00"], "printable ASCII"),
]


@pytest.mark.parametrize("args,msg", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refused(args, msg):
    with pytest.raises(ValueError, match=msg):
        check_nmap_args(args)


@NEEDS_DB
def test_script_names_come_from_the_database():
    with pytest.raises(ValueError, match="not in nmap's script database"):
        check_nmap_args(["--script", "not-a-real-script"])
    check_nmap_args(["--script", "banner,http-title,ssh-hostkey,modbus-discover"])
    check_nmap_args(["--script=default,version"])
    check_nmap_args(["-sC", "-sV"])
    for name, cat in (("whois-ip", "external"), ("broadcast-dhcp-discover", "broadcast"),
                      ("http-slowloris", "dos"), ("ftp-brute", "brute"),
                      ("ftp-vsftpd-backdoor", "exploit")):
        with pytest.raises(ValueError, match=f"{name}.*{cat}"):
            check_nmap_args(["--script", name])


def test_without_a_script_database_no_name_is_accepted(monkeypatch, tmp_path):
    monkeypatch.setenv("LABCTL_NMAP_SCRIPT_DB", str(tmp_path / "missing.db"))
    with pytest.raises(ValueError, match="not in nmap's script database"):
        check_nmap_args(["--script", "banner"])
    check_nmap_args(["--script", "default"])
    db = tmp_path / "script.db"
    db.write_text('Entry { filename = "mine.nse", categories = { "safe", } }\n'
                  'Entry { filename = "leak.nse", categories = { "external", "safe", } }\n')
    monkeypatch.setenv("LABCTL_NMAP_SCRIPT_DB", str(db))
    check_nmap_args(["--script", "mine"])
    with pytest.raises(ValueError, match="external"):
        check_nmap_args(["--script", "leak"])


def test_profile_switches_still_apply_to_combined_forms():
    with pytest.raises(ValueError, match="NSE scripts"):
        check_nmap_args(["-sCV"], allow_scripts=False)
    with pytest.raises(ValueError, match="NSE scripts"):
        check_nmap_args(["--script-args", "http.useragent=x"], allow_scripts=False)
    with pytest.raises(ValueError, match="UDP"):
        check_nmap_args(["-sSU"], allow_udp=False)
    with pytest.raises(ValueError, match="UDP"):
        check_nmap_args(["-pT:22,U:53"], allow_udp=False)


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("key", ["discovery_args", "service_args"])
def test_both_smart_passes_are_checked(tmp_path, key):
    other = "service_args" if key == "discovery_args" else "discovery_args"
    path = write(tmp_path, f"name: s\nstrategy: smart\n{other}: [-n]\n"
                           f"{key}: [-n, --script, /tmp/evil.nse]\n")
    with pytest.raises(ConfigError, match="never by path") as ei:
        load_profile(path)
    assert ei.value.key == key and ei.value.line == 4 and ei.value.exit_code == 2


def test_profile_by_path_single_dash_excludefile(tmp_path):
    path = write(tmp_path, "name: mine\nargs: [-sT, -excludefile=/etc/passwd]\n")
    with pytest.raises(ConfigError, match="single-dash") as ei:
        load_profile(path)
    assert ei.value.file == path and ei.value.key == "args" and ei.value.line == 2


def test_every_bundled_profile_passes_the_allow_list():
    from labctl.scans.profiles import list_profiles

    for name in list_profiles():
        prof = load_profile(name)
        for key in ("args", "discovery_args", "service_args"):
            check_nmap_args(getattr(prof, key), allow_scripts=prof.allow_scripts,
                            allow_udp=prof.allow_udp)


def test_profiles_built_in_code_are_revalidated():
    from labctl.app.scan import plan_scan

    smart = load_profile("smart")
    bad = smart.model_copy(update={"discovery_args": ["-n", "--script", "/tmp/evil.nse"]})
    with pytest.raises(UsageError, match="discovery_args.*never by path"):
        revalidate(bad)
    with pytest.raises(UsageError, match="never by path"):
        plan_scan(None, ["10.0.0.5"], profile=bad, scope=["10.0.0.0/24"], scanner="local",
                  force=True)
    raw = ScanProfile.model_construct(name="raw", args=["-oX", "/tmp/out.xml"])
    with pytest.raises(UsageError, match="output options"):
        revalidate(raw)


class RecordingKali(SshScanner):
    """An SSH scanner that records every remote command instead of connecting."""

    def __init__(self) -> None:
        super().__init__("ssh://kali@10.0.0.50")
        self.log: list[list[str]] = []

    def _exec(self, argv, timeout):
        self.log.append(list(argv))
        raise AssertionError(f"SSH must not be used: {argv}")


@pytest.mark.parametrize("args", [["--script", "/tmp/evil.nse"], ["-excludefile=x"],
                                  ["--script-args", "newtargets"], ["-e", "eth0"],
                                  ["--dns-servers", "8.8.8.8"]])
def test_the_last_gate_before_nmap_local_and_ssh(tmp_path, monkeypatch, args):
    """The same check runs inside every scanner's run(), before nmap or SSH is started:
    arguments that never came from a profile (a caller passing argv directly) are refused."""
    prog, record = make_recorder(tmp_path / "rec")
    monkeypatch.setenv("LABCTL_NMAP", str(prog))
    with pytest.raises(UsageError, match="refusing to start nmap on local"):
        LocalScanner().run(args, ["10.0.0.5"], timeout=10)
    assert calls(record) == []
    kali = RecordingKali()
    with pytest.raises(UsageError, match="refusing to start nmap on ssh://kali@10.0.0.50"):
        kali.run(args, ["10.0.0.5"], timeout=10)
    assert kali.log == []
    with pytest.raises(UsageError, match="not an IP address"):
        kali.run(["-sT"], ["example.com"], timeout=10)
    assert kali.log == []


def test_ssh_scan_through_run_scan_uses_the_same_gate(tmp_path):
    from labctl.app.scan import run_scan

    kali = RecordingKali()
    bad = load_profile("service").model_copy(update={"args": ["-sV", "--script=/tmp/e.nse"]})
    with pytest.raises(UsageError, match="never by path"):
        run_scan(None, ["10.0.0.5"], profile=bad, scanner=kali, scope=["10.0.0.0/24"],
                 save=False)
    path = write(tmp_path, "name: mine\nargs: [-sT, -script=/tmp/e.nse]\n")
    with pytest.raises(ConfigError, match="single-dash"):
        run_scan(None, ["10.0.0.5"], profile=path, scanner=kali, scope=["10.0.0.0/24"],
                 save=False)
    assert kali.log == []


def test_local_nmap_runs_without_nmapdir(tmp_path, monkeypatch):
    import json
    import stat
    import sys

    out = tmp_path / "env.json"
    prog = tmp_path / "fake-nmap"
    prog.write_text(f"#!{sys.executable}\nimport json, os\n"
                    f"open({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
                    "print('<?xml version=\"1.0\"?><nmaprun><runstats><finished time=\"0\" "
                    "elapsed=\"0\" exit=\"success\"/><hosts up=\"0\" down=\"0\" total=\"0\"/>"
                    "</runstats></nmaprun>')\n")
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("LABCTL_NMAP", str(prog))
    monkeypatch.setenv("NMAPDIR", str(tmp_path / "planted"))
    LocalScanner().run(["-sT", "-p", "1"], ["10.0.0.5"], timeout=10)
    env = json.loads(out.read_text())
    assert "NMAPDIR" not in env and env["LABCTL_NMAP"] == str(prog)


@pytest.mark.parametrize("text,key", [
    ("name: n\nargs: [-sT]\ntimeout: '٦٠'\n", "timeout"),
    ("name: n\nargs: [-sT]\ntimeout: '60'\n", "timeout"),
    ("name: n\nargs: [-sT]\ntimeout: 0\n", "timeout"),
    ("name: n\nargs: [-sT]\nmax_addresses: '1_0'\n", "max_addresses"),
    ("name: n\nargs: [-sT]\nallow_udp: 'no'\n", "allow_udp"),
    ("name: n\nargs: [-sT]\nstats_every: '٢s'\n", "stats_every"),
])
def test_profile_values_are_strict(tmp_path, text, key):
    with pytest.raises(ConfigError) as ei:
        load_profile(write(tmp_path, text))
    assert ei.value.key == key and ei.value.line == 3 and ei.value.exit_code == 2


@pytest.mark.parametrize("port", ["٦٦٦٨/tcp", "６６６８", "70000/tcp", "22/icmp"])
def test_baseline_ports_are_ascii_and_in_range(tmp_path, port):
    from labctl.scans.diff import load_baseline

    path = write(tmp_path, f"name: b\nhosts:\n  10.0.0.5: {{open: ['{port}']}}\n", "b.yaml")
    with pytest.raises(ConfigError):
        load_baseline(path)


@pytest.mark.parametrize("spec", ["local\n", "netns:kali\n", "netns:ka li", "netns:kаli"])
def test_scanner_specs_are_whole_ascii_words(spec):
    from pydantic import ValidationError

    from labctl.core.playbook.scanner import ScannerSection
    from labctl.scans.scanners import make_scanner

    with pytest.raises(UsageError):
        make_scanner(spec)
    with pytest.raises(ValidationError):
        ScannerSection(spec=spec)


@pytest.mark.parametrize("scope", ["0.0.0.0/0", "8.8.8.0/24", "100.64.0.0/10"])
def test_playbook_scanner_scope_must_be_a_lab_range(scope):
    from pydantic import ValidationError

    from labctl.core.playbook.scanner import ScannerSection

    with pytest.raises(ValidationError, match="not a private, link-local or documentation"):
        ScannerSection(scope=[scope])
    assert ScannerSection(scope=["10.9.0.0/16", "192.0.2.0/24"]).scope
