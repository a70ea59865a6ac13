"""The local PowerShell runner (labctl on the Hyper-V host) and the shared stdin wrapper."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from labctl.core.errors import ConnectTimeout, PreflightError, RemoteCommandError, ToolMissingError
from labctl.core.playbook.hyperv import HyperVHost
from labctl.transport import pswrap
from labctl.transport.local import LocalRunner
from labctl.transport.powershell import RenderedScript
from labctl.transport.runners import make_runner

STANDIN = Path(__file__).parent / "helpers" / "fake_powershell.py"
HOSTILE = {"Name": "a'b\"c $(x) `y` ; z\r\n ü ✓", "List": [1, [2, "$null"]], "Map": {"k": None}}


@pytest.fixture
def standin(monkeypatch, tmp_path):
    log = tmp_path / "standin.jsonl"
    monkeypatch.setenv("LABCTL_POWERSHELL", str(STANDIN))
    monkeypatch.setenv("LABCTL_STANDIN_LOG", str(log))

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


def local_cfg(**kw) -> HyperVHost:
    return HyperVHost(transport="local", **kw)


def test_make_runner_local_roundtrips_hostile_params(standin):
    runner = make_runner(local_cfg())
    assert isinstance(runner, LocalRunner)
    with runner:
        assert runner.run(RenderedScript("t/echo", "#fake: echo", HOSTILE)) == {"params": HOSTILE}
    call = standin()[0]
    assert call["argv"] == ["-NoProfile", "-NonInteractive", "-Command", "-"]
    assert call["command"] is None and call["wrapper"] == pswrap.WRAPPER
    assert "$(x)" not in call["stdin"] and call["stdin"].isascii()


def test_local_error_envelope_is_remote_command_error(standin):
    with pytest.raises(RemoteCommandError) as ei:
        LocalRunner(local_cfg()).run(RenderedScript("nat/create", "#fake: error NetNat {N} "
                                                    "overlaps", {"N": "Core"}))
    assert ei.value.script == "nat/create" and "NetNat Core overlaps" in str(ei.value)
    assert "localhost" in str(ei.value)


def test_local_nonzero_exit_quotes_stderr(standin):
    with pytest.raises(RemoteCommandError, match="exited 9 .*boom"):
        LocalRunner(local_cfg()).run(RenderedScript("x/y", "#fake: die 9 boom", {}))


def test_local_timeout(standin):
    with pytest.raises(ConnectTimeout, match="^x/slow: "):
        LocalRunner(local_cfg(), timeout=0.5).run(RenderedScript("x/slow", "#fake: sleep 10", {}))


@pytest.mark.skipif(sys.platform == "win32", reason="the refusal is for non-Windows hosts")
def test_local_refuses_on_linux_without_override(monkeypatch):
    monkeypatch.delenv("LABCTL_POWERSHELL", raising=False)
    with pytest.raises(PreflightError) as ei:
        LocalRunner(local_cfg()).run(RenderedScript("x/y", "#fake: echo", {}))
    assert "not Windows" in str(ei.value) and "LABCTL_POWERSHELL" in ei.value.hint


def test_local_override_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv("LABCTL_POWERSHELL", str(tmp_path / "nope"))
    with pytest.raises(ToolMissingError):
        LocalRunner(local_cfg()).run(RenderedScript("x/y", "#fake: echo", {}))


def test_standin_rejects_a_wrong_command_line(standin, monkeypatch, tmp_path):
    """The stand-in really checks: a runner using other arguments would fail loudly."""
    monkeypatch.setattr(pswrap, "POWERSHELL_ARGS", ["-NoProfile", "-Command", "-"])
    with pytest.raises(RemoteCommandError, match="unexpected arguments"):
        LocalRunner(local_cfg()).run(RenderedScript("x/y", "#fake: echo", {}))


def test_standin_rejects_params_in_clear_text(standin, monkeypatch):
    monkeypatch.setattr(pswrap, "stdin_for", lambda s: (
        "& " + json.dumps(s.plain_params()) + "\n\n").encode())
    with pytest.raises(RemoteCommandError, match="bootstrap form"):
        LocalRunner(local_cfg()).run(RenderedScript("x/y", "#fake: echo", {"A": "b"}))


# --------------------------------------------------------------------- the wrapper itself


def _ts_errors(source: str) -> list[str]:
    tsp = pytest.importorskip("tree_sitter_powershell")
    from tree_sitter import Language, Parser

    tree = Parser(Language(tsp.language())).parse(source.encode("utf-8"))
    bad: list[str] = []

    def walk(node):
        if node.type == "ERROR" or node.is_missing:
            bad.append(f"{node.type} at {node.start_point}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return bad


def test_wrapper_and_bootstrap_parse_as_powershell():
    assert _ts_errors(pswrap.WRAPPER) == []
    line = pswrap.stdin_for(RenderedScript("t", "param($A)\n$A", HOSTILE)).decode()
    assert _ts_errors(line) == []


def test_wrapper_is_windows_powershell_51_compatible():
    w = pswrap.WRAPPER
    assert "-AsHashtable" not in w  # PowerShell 6+ only
    assert "??" not in w and "?." not in w  # PS7 operators
    assert "[scriptblock]::Create(" in w and "@labctlSplat" in w


def test_stdin_is_one_ascii_line_then_a_blank_line():
    data = pswrap.stdin_for(RenderedScript("t", "Get-VM", {"Name": "Zürich\n"}))
    text = data.decode("ascii")
    assert text.endswith("\n\n") and text.count("\n") == 2
    m = pswrap.BOOTSTRAP_RE.match(text.split("\n")[0])
    assert m is not None
    assert base64.b64decode(m.group(1)).decode() == pswrap.WRAPPER
    assert base64.b64decode(m.group(2)).decode() == "Get-VM"
    assert json.loads(base64.b64decode(m.group(3)).decode()) == {"Name": "Zürich\n"}


def _envelope(ok, output, errors) -> bytes:
    blob = json.dumps({"v": 1, "ok": ok, "output": output, "errors": errors}).encode()
    return b"noise\n" + pswrap.MARKER.encode() + base64.b64encode(blob) + b"\n"


def test_parse_result_cases():
    assert pswrap.parse_result("s", "h", 0, _envelope(True, ['{"a": 1}'], []), b"") == {"a": 1}
    # ConvertTo-Json in 5.1 may collapse a one-element array to a bare string
    blob = base64.b64encode(json.dumps({"v": 1, "ok": True, "output": "[1,2]",
                                        "errors": []}).encode())
    assert pswrap.parse_result("s", "h", 0, pswrap.MARKER.encode() + blob, b"") == [1, 2]
    with pytest.raises(RemoteCommandError, match="s failed on h: bad thing"):
        pswrap.parse_result("s", "h", 1, _envelope(False, [], ["bad thing"]), b"")


def test_clean_stderr_reduces_clixml():
    raw = ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/'
           '2004/04"><S S="Error">Get-VM : You do not have permission_x000D__x000A_</S>'
           '<S S="Error">at line 1 &amp; more_x000D__x000A_</S></Objs>')
    assert pswrap.clean_stderr(raw.encode()) == ("Get-VM : You do not have permission\r\n"
                                                 "at line 1 & more")


def test_cli_plan_and_status_through_the_local_runner(monkeypatch, tmp_path, cli_run):
    """`transport: local` end to end: CLI -> provider -> LocalRunner -> a real child process
    (the stand-in, handing the script to the stateful fake Hyper-V host)."""
    import pickle

    import yaml

    fake_hyperv = pytest.importorskip("helpers.fake_hyperv")
    state = tmp_path / "host.pkl"
    state.write_bytes(pickle.dumps(fake_hyperv.FakeHyperVHost.reference()))
    monkeypatch.setenv("LABCTL_POWERSHELL", str(STANDIN))
    monkeypatch.setenv("LABCTL_STANDIN_HYPERV_STATE", str(state))
    root = Path(__file__).resolve().parent.parent
    doc = yaml.safe_load((root / "playbooks" / "home-lab.yaml").read_text())
    doc["hyperv"] = {"transport": "local", "vhd_path": doc["hyperv"]["vhd_path"]}
    pb = tmp_path / "lab.yaml"
    pb.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = cli_run("plan", "-f", str(pb), "--json")
    assert r.exit_code == 0, r
    names = {s["resource"] for s in r.json()["steps"]}
    assert "hyperv.vmswitch:Core" in names and "hyperv.vm:d4iot-sensor" in names
    r = cli_run("status", "-f", str(pb))
    assert r.exit_code == 4, r  # nothing built yet: drift
