"""The nmap runner's failure paths (real subprocesses standing in for nmap), and the
twin/reference playbooks' scan defaults. No packets are sent."""

from __future__ import annotations

import stat
import sys

import pytest

from labctl.core.errors import CommandError, LabctlError, PreflightError, ScopeError
from labctl.scans.scanners import make_scanner, parse_progress, run_streaming


def script(tmp_path, body: str):
    p = tmp_path / "fake-nmap"
    p.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_timeout_kills_nmap(tmp_path):
    prog = script(tmp_path, "print('<nmaprun>', flush=True)\ntime.sleep(30)")
    with pytest.raises(LabctlError, match="did not finish within 1 s"):
        run_streaming([prog], timeout=1, progress=None, phase="scan", where="local")


def test_nonzero_exit_and_privilege_message(tmp_path):
    prog = script(tmp_path, "sys.stderr.write('Failed to resolve x\\n'); sys.exit(1)")
    with pytest.raises(CommandError, match="exited 1: Failed to resolve x"):
        run_streaming([prog], timeout=10, progress=None, phase="scan", where="local")
    prog = script(tmp_path, "sys.stderr.write('You requested a scan type which requires "
                            "root privileges.\\nQUITTING!\\n'); sys.exit(1)")
    with pytest.raises(PreflightError, match="needs root") as ei:
        run_streaming([prog], timeout=10, progress=None, phase="scan", where="local")
    assert "-sT" in ei.value.hint


def test_progress_lines_are_streamed(tmp_path):
    lines = [f'<taskprogress task="SYN Stealth Scan" time="1" percent="{p}" '
             f'remaining="{10 - p // 10}" etc="2"/>' for p in (10, 55, 90)]
    prog = script(tmp_path, "\n".join(f"print({ln!r}, flush=True)" for ln in lines))
    seen = []
    run = run_streaming([prog], timeout=10, progress=seen.append, phase="discovery",
                        where="local")
    assert [e.percent for e in seen] == [10.0, 55.0, 90.0]
    assert seen[0].task == "SYN Stealth Scan" and seen[0].phase == "discovery"
    assert seen[0].remaining == 9.0
    assert run.xml.count("taskprogress") == 3
    assert parse_progress("<host>", "x") is None


def test_scanner_specs():
    assert make_scanner("local").spec == "local"
    assert make_scanner("netns:twin-kali").argv(["-sn"], ["172.16.1.0/24"])[:5] == \
        ["ip", "netns", "exec", "twin-kali", "nmap"]
    assert make_scanner("ssh://kali@172.16.1.50").spec == "ssh://kali@172.16.1.50"
    from labctl.core.errors import UsageError

    with pytest.raises(UsageError):
        make_scanner("telnet://x")
    with pytest.raises(UsageError):
        make_scanner("netns:bad name")


def test_twin_and_reference_playbook_defaults(repo_root):
    from labctl.app.scan import default_scanner_spec, plan_scan
    from labctl.core.playbook import load_playbook

    twin = load_playbook(str(repo_root / "playbooks" / "twin.yaml"))
    assert default_scanner_spec(twin) == "netns:twin-kali"
    home = load_playbook(str(repo_root / "playbooks" / "home-lab.yaml"))
    assert default_scanner_spec(home) == "ssh://kali@172.16.1.50"
    # the ssh scanner has no local route check: scope alone decides, without connecting
    prof, targets, excl, sc = plan_scan(home, ["172.16.1.0/24", "192.168.0.101"])
    assert prof.name == "smart" and sc.spec == "ssh://kali@172.16.1.50"
    assert [t.text for t in targets] == ["172.16.1.0/24", "192.168.0.101"]
    with pytest.raises(ScopeError, match="outside the lab scope"):
        plan_scan(home, ["10.0.0.1"])
    with pytest.raises(ScopeError):
        plan_scan(home, ["8.8.8.8"], force=True)
    from labctl.core.errors import UsageError

    with pytest.raises(UsageError, match="allows at most 256"):
        plan_scan(home, ["172.16.0.0/16"], profile="full", scope=["172.16.0.0/16"])
    with pytest.raises(UsageError, match="cannot be mixed"):
        plan_scan(home, ["172.16.1.5", "fd00::5"], scope=["fd00::/64"])


def test_interrupt_stops_nmap(tmp_path):
    import os
    import time

    pidfile = tmp_path / "pid"
    prog = script(tmp_path, f"import os\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
                            "print('<taskprogress task=\"x\" percent=\"1\"/>', flush=True)\n"
                            "time.sleep(30)")

    def stop(_ev):
        raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_streaming([prog], timeout=60, progress=stop, phase="scan", where="local")
    assert time.monotonic() - t0 < 10
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)
