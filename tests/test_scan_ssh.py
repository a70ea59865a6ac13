"""The SSH scanner: nmap runs on a "Kali" reached over SSH, XML comes back and is parsed here.

The real test starts helper B's throwaway OpenSSH server *inside* the scanner namespace
(so nmap, run by sshd's session, is in the lab), and the client connects from inside that
namespace too (netns_context): nothing touches the root namespace's network.
"""

from __future__ import annotations

import pytest

from labctl.core.errors import PreflightError, ScopeError, ToolMissingError
from labctl.scans.scanners import SshScanner
from labctl.transport.netns import netns_context
from tests.helpers.scan_lab import make_lab
from tests.helpers.sshd import start_sshd

QUICK = "name: quick\nargs: [-sT, -n, -Pn, -p, '22,80,6668']\ntimeout: 60\n"


@pytest.fixture(scope="module")
def lab_sshd(tmp_path_factory):
    lab = make_lab({"10.213.0.11": {22: "ssh", 80: "http", 6668: "close"}})
    srv = None
    try:
        with netns_context(lab.scanner_ns):
            srv = start_sshd(tmp_path_factory.mktemp("sshd"))
        yield lab, srv
    finally:
        if srv is not None:
            srv.stop()
        lab.teardown()


@pytest.mark.netns
def test_ssh_scanner_runs_nmap_remotely(lab_sshd, tmp_path, _isolated_state):
    from labctl.app.scan import history, run_scan

    lab, srv = lab_sshd
    prof = tmp_path / "quick.yaml"
    prof.write_text(QUICK)
    sc = SshScanner(srv.spec, target=srv.target())
    with netns_context(lab.scanner_ns):
        res = run_scan(None, ["10.213.0.11"], profile=str(prof), scanner=sc,
                       scope=["10.213.0.0/24"])
    assert res.scanner == srv.spec
    assert res.open_ports() == {"10.213.0.11": ["22/tcp", "80/tcp", "6668/tcp"]}
    assert {p.port: p.state for p in res.host("10.213.0.11").ports}[22] == "open"
    (argv,) = res.argv
    assert argv[0].endswith("nmap") and argv[argv.index("-oX") + 1] == "-"
    assert argv[-1] == "10.213.0.11"
    cmds = srv.commands()
    assert any("command -v" in c for c in cmds)
    assert any(c.split()[0].endswith("nmap") and "-oX -" in c for c in cmds)
    assert history()[0]["scanner"] == srv.spec


@pytest.mark.netns
def test_ssh_scanner_missing_nmap_and_scope(lab_sshd):
    from labctl.app.scan import run_scan

    lab, srv = lab_sshd
    sc = SshScanner(srv.spec, target=srv.target(), program="nmap-not-installed")
    with netns_context(lab.scanner_ns):
        with pytest.raises(ToolMissingError, match="not installed on ssh://"):
            run_scan(None, ["10.213.0.11"], profile="discovery", scanner=sc,
                     scope=["10.213.0.0/24"])
        n = len(srv.commands())
        with pytest.raises(ScopeError):
            run_scan(None, ["10.214.0.1"], profile="discovery", scanner=sc,
                     scope=["10.213.0.0/24"])
        assert len(srv.commands()) == n  # refused before connecting


class FakeKali(SshScanner):
    """A non-root Kali account without passwordless sudo, as its shell would answer.

    Stateful: records each command; answers `command -v`/`id -u` and `sudo -n` the way
    Debian's sudo does without a NOPASSWD rule. (No sudo is installed on the test machine,
    so this path cannot run against the real sshd.)
    """

    def __init__(self, sudo_ok: bool) -> None:
        super().__init__("ssh://kali@10.213.0.50")
        self.sudo_ok = sudo_ok
        self.log: list[list[str]] = []

    def _exec(self, argv, timeout):
        self.log.append(list(argv))
        if argv[:2] == ["sh", "-c"]:
            return 0, "/usr/bin/nmap\n1000\n", ""
        if argv[:2] == ["sudo", "-n"]:
            if self.sudo_ok:
                return 0, "Nmap version 7.94SVN\n", ""
            return 1, "", "sudo: a password is required\n"
        raise AssertionError(f"unexpected command {argv}")


def test_sudo_rights_for_syn_scan():
    k = FakeKali(sudo_ok=False)
    with pytest.raises(PreflightError) as ei:
        k.preflight(["-sS", "-p", "22"])
    assert "may not run nmap as root without a password" in str(ei.value)
    assert "NOPASSWD: /usr/bin/nmap" in ei.value.hint and "kali ALL=(root)" in ei.value.hint
    # no explicit raw scan: fall back to an unprivileged (connect) nmap
    assert k.preflight(["-sV"]) == ["/usr/bin/nmap"]
    assert k.preflight(["-sT", "-p", "22"]) == ["/usr/bin/nmap"]
    ok = FakeKali(sudo_ok=True)
    assert ok.preflight(["-sS"]) == ["sudo", "-n", "/usr/bin/nmap"]
    assert ok.preflight(["-sV"]) == ["sudo", "-n", "/usr/bin/nmap"]
