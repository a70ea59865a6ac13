"""The SSH PowerShell runner against a real OpenSSH server on 127.0.0.1.

The server's ``powershell.exe`` is tests/helpers/fake_powershell.py, which checks the exact
command line, the one-line stdin bootstrap, the wrapper and the base64 body/params, and then
emulates the wrapper's JSON envelope (see its docstring for the ``#fake:`` directives).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from labctl.core.errors import AuthError, ConnectTimeout, HostUnreachable, RemoteCommandError
from labctl.core.playbook.hyperv import HyperVHost
from labctl.core.secrets import MASK, Secret
from labctl.transport import pswrap
from labctl.transport.powershell import RenderedScript
from labctl.transport.runners import make_runner
from labctl.transport.ssh import SshRunner
from labctl.transport.sshexec import HostKeyError
from tests.helpers.sshd import free_port, keygen, sshd_server

STANDIN = Path(__file__).parent / "helpers" / "fake_powershell.py"

HOSTILE = {
    "Name": "it's \"quoted\" $(Remove-Item C:\\ -Recurse) `whoami` ; exit 1\nsecond line",
    "Unicode": "Zürich ✓ 日本 \u202e",
    "Empty": "",
    "Number": 8192,
    "Flag": False,
    "Nothing": None,
    "List": [1, "two; `three`", [3, "$env:PATH"]],
    "Map": {"nested": {"deep": "'; Stop-Computer; '"}, "n": 1.5},
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with sshd_server(tmp_path_factory.mktemp("ssh-runner"), powershell_standin=STANDIN) as s:
        yield s


def cfg_for(srv, **kw) -> HyperVHost:
    base = dict(host=srv.host, transport="ssh", port=srv.port, user=srv.user,
                ssh_key=str(srv.key_path), ssh_known_hosts=str(srv.known_hosts), timeout=20)
    base.update(kw)
    return HyperVHost(**base)


def script(body: str = "#fake: echo", name: str = "test/echo", **params) -> RenderedScript:
    return RenderedScript(name=name, body=body, params=params)


def test_make_runner_builds_an_ssh_runner_without_connecting(srv, monkeypatch):
    monkeypatch.delenv("LABCTL_TEST_UNSET_PW", raising=False)
    cfg = cfg_for(srv, ssh_key=None, password={"env": "LABCTL_TEST_UNSET_PW"})
    runner = make_runner(cfg)  # no password yet, no connection: must not fail
    assert isinstance(runner, SshRunner) and runner.host == srv.host
    runner.close()


def test_hostile_params_arrive_intact_and_never_in_clear_text(srv):
    before = len(srv.standin_calls())
    body = "param($Name, $Unicode, $Empty, $Number, $Flag, $Nothing, $List, $Map)\n#fake: echo\n"
    with make_runner(cfg_for(srv)) as runner:
        result = runner.run(script(body, **HOSTILE))
    # a top-level None is left out (the script's default applies), as over WinRM
    assert result == {"params": {k: v for k, v in HOSTILE.items() if v is not None}}
    call = srv.standin_calls()[before]
    # the exact program and arguments, as Windows OpenSSH would pass them to cmd.exe
    assert call["command"] == "powershell.exe -NoProfile -NonInteractive -Command -"
    assert call["argv"] == ["-NoProfile", "-NonInteractive", "-Command", "-"]
    assert call["wrapper"] == pswrap.WRAPPER
    assert call["body"] == body
    # nothing of any value is visible on the wire: stdin is base64 inside single quotes
    for value in ("quoted", "Remove-Item", "whoami", "Zürich", "Stop-Computer", "$env:PATH"):
        assert value not in call["stdin"]
    assert call["stdin"].isascii()


def test_connection_is_reused_across_scripts(srv):
    log_before = srv.log().count("Accepted publickey")
    with make_runner(cfg_for(srv)) as runner:
        for i in range(3):
            assert runner.run(script(f"#fake: json {{\"i\": {i}}}")) == {"i": i}
    assert srv.log().count("Accepted publickey") - log_before == 1


def test_error_record_becomes_remote_command_error_quoting_the_message(srv):
    with make_runner(cfg_for(srv)) as runner:
        with pytest.raises(RemoteCommandError) as ei:
            runner.run(script("#fake: error Hyper-V was unable to find a virtual switch named "
                              "{Switch}.", name="vmswitch/create", Switch="Core"))
    e = ei.value
    assert e.script == "vmswitch/create"
    assert e.errors == ["Hyper-V was unable to find a virtual switch named Core."]
    assert "vmswitch/create" in str(e) and srv.host in str(e)
    assert "unable to find a virtual switch" in str(e)
    assert "#fake" not in str(e)  # never the body


def test_missing_mandatory_parameter_is_a_remote_error(srv):
    body = ("param(\n  [Parameter(Mandatory = $true)][string]$Name,\n  [int]$Size = 1\n)\n"
            "#fake: echo")
    with make_runner(cfg_for(srv)) as runner:
        with pytest.raises(RemoteCommandError, match="missing mandatory parameters: Name"):
            runner.run(script(body, Size=2))
        # a None value is left out, so a mandatory parameter set to None is missing too
        with pytest.raises(RemoteCommandError, match="mandatory"):
            runner.run(script(body, Name=None))
        assert runner.run(script(body, Name="x")) == {"params": {"Name": "x"}}


def test_undeclared_parameter_is_a_remote_error(srv):
    with make_runner(cfg_for(srv)) as runner:
        with pytest.raises(RemoteCommandError, match="matches parameter name 'Bogus'"):
            runner.run(script("param($Name)\n#fake: echo", Name="x", Bogus="y"))


@pytest.mark.parametrize("body,needle", [
    ("#fake: raw just some text", "without a result"),
    ("#fake: die 3 powershell.exe : The term is not recognized", "exited 3"),
    ("#fake: clixml Get-VM : You do not have the required permission", "required permission"),
    ("#fake: json not json at all", "not a JSON document"),
    ('#fake: outputs ["{\\"a\\": 1}", "{\\"b\\": 2}"]', "more than one JSON document"),
    ("#fake: outputs []", "printed nothing"),
    ("#fake: garble", "garbled"),
])
def test_bad_results_become_clear_remote_errors(srv, body, needle):
    with make_runner(cfg_for(srv)) as runner:
        with pytest.raises(RemoteCommandError) as ei:
            runner.run(script(body, name="facts/read"))
    msg = str(ei.value)
    assert needle in msg and msg.startswith("facts/read failed on 127.0.0.1")
    assert "CLIXML" not in msg and "_x000D_" not in msg


def test_host_noise_before_the_envelope_is_ignored(srv):
    with make_runner(cfg_for(srv)) as runner:
        assert runner.run(script('#fake: noise\n#fake: json {"ok": true}')) == {"ok": True}


def test_json_split_over_several_output_lines_is_one_document(srv):
    with make_runner(cfg_for(srv)) as runner:
        assert runner.run(script('#fake: outputs ["{", "\\"a\\": [1,", "2]}"]')) == {"a": [1, 2]}


def test_secret_param_reaches_the_host_but_is_masked_in_errors(srv, caplog):
    canary = "CANARY-param-5be0c2"
    caplog.set_level(logging.DEBUG)
    with make_runner(cfg_for(srv)) as runner:
        assert runner.run(script(Pw=Secret(canary))) == {"params": {"Pw": canary}}
        with pytest.raises(RemoteCommandError) as ei:
            runner.run(script("#fake: error logon failed for password {Pw}", Pw=Secret(canary)))
    assert canary not in str(ei.value) and MASK in str(ei.value)
    assert canary not in repr(ei.value.errors) and canary not in caplog.text


def test_wrong_key_is_auth_error_naming_the_script(srv, tmp_path):
    other = keygen(tmp_path / "wrong")
    with make_runner(cfg_for(srv, ssh_key=str(other))) as runner:
        with pytest.raises(AuthError) as ei:
            runner.run(script(name="facts/read"))
    assert str(ei.value).startswith("facts/read: ") and srv.user in str(ei.value)
    assert "administrators_authorized_keys" in ei.value.hint


def test_closed_port_is_host_unreachable(srv):
    with make_runner(cfg_for(srv, port=free_port())) as runner:
        with pytest.raises(HostUnreachable, match="^facts/read: "):
            runner.run(script(name="facts/read"))


def test_unknown_host_key_is_refused_with_a_hint(srv, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with make_runner(cfg_for(srv, ssh_known_hosts=str(kh))) as runner:
        with pytest.raises(HostKeyError) as ei:
            runner.run(script())
    assert "not in known_hosts" in str(ei.value) and "ssh_known_hosts" in ei.value.hint


def test_password_canary_never_in_errors_or_logs(tmp_path, monkeypatch, caplog):
    canary = "CANARY-hyperv-pw-91ab3c"
    monkeypatch.setenv("LABCTL_TEST_HV_PW", canary)
    caplog.set_level(logging.DEBUG)
    with sshd_server(tmp_path / "pw", powershell_standin=STANDIN, password_auth=True) as s:
        cfg = cfg_for(s, ssh_key=None, password={"env": "LABCTL_TEST_HV_PW"})
        with make_runner(cfg) as runner:
            with pytest.raises(AuthError) as ei:
                runner.run(script(name="facts/read"))
    text = " | ".join([str(ei.value), ei.value.hint or "", repr(ei.value), caplog.text,
                       repr(cfg)])
    assert canary not in text


def test_password_is_prompted_only_when_needed(srv, monkeypatch):
    """With a key configured, the password reference is never resolved (no prompt)."""
    asked: list[str] = []
    monkeypatch.delenv("LABCTL_TEST_UNSET_PW", raising=False)
    cfg = cfg_for(srv, password={"env": "LABCTL_TEST_UNSET_PW", "prompt": True})
    with make_runner(cfg, prompt_fn=lambda label: asked.append(label) or "x") as runner:
        assert runner.run(script('#fake: json {"a": 1}')) == {"a": 1}
    assert asked == []


def test_slow_script_times_out(srv):
    with make_runner(cfg_for(srv, timeout=5)) as runner:
        with pytest.raises(ConnectTimeout, match="^facts/read: "):
            runner.run(script("#fake: sleep 30", name="facts/read"))


def test_reference_lab_steps_travel_intact_over_ssh(srv):
    """Every step of the reference lab's plan (helper A's real templates and parameters) goes
    through the SSH runner; the stand-in checks each parameter is declared in the script's
    param() block and echoes what it decoded, which must equal what was sent."""
    import json

    load_playbook = pytest.importorskip("labctl.core.playbook").load_playbook
    diff = pytest.importorskip("labctl.hyperv.diff")
    facts = pytest.importorskip("labctl.hyperv.facts")
    repo = Path(__file__).resolve().parent.parent
    pb = load_playbook(repo / "playbooks" / "home-lab.yaml").model
    steps = [s for s in diff.plan_up(pb, facts.empty_facts()).plan.steps
             if s.kind == "powershell"]
    assert len(steps) >= 10
    with make_runner(cfg_for(srv)) as runner:
        for st in steps:
            rs = RenderedScript(st.name, st.script, st.params)
            sent = json.loads(pswrap.encode_params(pswrap.bound_params(rs)))
            assert runner.run(rs) == {"params": sent}, st.name


def test_missing_user_or_password_names_the_script_and_contacts_nothing(srv, monkeypatch):
    from labctl.core.errors import UsageError

    before = srv.log().count("Connection from")
    with make_runner(cfg_for(srv, user=None)) as runner:
        with pytest.raises(UsageError, match="^facts/read: hyperv.user is required"):
            runner.run(script(name="facts/read"))
    monkeypatch.delenv("LABCTL_TEST_UNSET_PW", raising=False)
    with make_runner(cfg_for(srv, ssh_key=None, password={"env": "LABCTL_TEST_UNSET_PW"})) as r:
        with pytest.raises(UsageError, match="^facts/read: password for"):
            r.run(script(name="facts/read"))
    assert srv.log().count("Connection from") == before
