"""CliRunner tests of `labctl plan|up|down|status` against the fake Hyper-V host: output,
--json, every exit code, and a secret canary that must never show up anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.cli import lab as cli_lab
from labctl.core.errors import ExitCode
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import fake_factory, reference_data, write_playbook

CANARY = "Canary-W1nRM-p4ss-7f3a9c"


@pytest.fixture
def factory_box() -> dict:
    """LabContext overrides handed to every command of a test (labctl.cli.run(overrides=))."""
    return {}


@pytest.fixture
def host(factory_box):
    h = FakeHyperVHost.reference()
    factory_box["provider_factory"] = fake_factory(h)
    return h


@pytest.fixture
def cli_run(cli_run, factory_box):
    def _run(*args, **kw):
        kw.setdefault("overrides", dict(factory_box))
        return cli_run(*args, **kw)

    return _run


@pytest.fixture
def pb(tmp_path) -> str:
    return str(write_playbook(tmp_path))


def test_help_of_every_lab_command(cli_run):
    for cmd, flags in {"plan": ["--show-steps", "--assume-empty", "--json", "--exit-code"],
                       "up": ["--dry-run", "--only", "-y", "--json"],
                       "down": ["-y", "--purge", "--json"], "status": ["--json"]}.items():
        r = cli_run(cmd, "--help")
        assert r.exit_code == 0 and "-f, --file FILE" in r.stdout
        for f in flags:
            assert f in r.stdout, (cmd, f)


def test_plan_assume_empty_without_connecting_or_secrets(cli_run, repo_root, monkeypatch):
    # The real provider factory: it must not build a runner or ask for the WinRM password.
    monkeypatch.delenv("LABCTL_HYPERV_PASSWORD", raising=False)
    r = cli_run("plan", "-f", str(repo_root / "playbooks/home-lab.yaml"), "--assume-empty")
    assert r.exit_code == 0, r
    assert "hyperv.vmswitch:Core: create" in r.stdout
    assert "hyperv.vm:d4iot-sensor: create" in r.stdout
    assert "17 step(s)" in r.stdout


def test_plan_show_steps_prints_scripts_and_params(cli_run, repo_root):
    r = cli_run("plan", "-f", str(repo_root / "playbooks/home-lab.yaml"), "--assume-empty",
                "--show-steps")
    assert r.exit_code == 0
    assert r.stdout.count("--- step ") == 17
    assert "New-VMSwitch -Name $Name" in r.stdout and "Set-VMNetworkAdapterVlan" in r.stdout
    assert '"NetAdapterName": "Ethernet 2"' in r.stdout
    assert "[needs the VM off]" in r.stdout


def test_plan_json_document(cli_run, repo_root):
    r = cli_run("plan", "-f", str(repo_root / "playbooks/home-lab.yaml"), "--assume-empty",
                "--json")
    assert r.exit_code == 0
    doc = r.json()
    assert doc["provider"] == "hyperv" and doc["lab"] == "homelab" and not doc["empty"]
    assert len(doc["steps"]) == 17
    for s in doc["steps"]:
        assert {"resource", "action", "script", "params"} <= set(s)
        assert "ConvertTo-Json -Depth 10 -Compress" in s["script"]
    first = doc["steps"][0]
    assert first["resource"] == "hyperv.vmswitch:Core" and first["params"]["Name"] == "Core"


def test_plan_exit_code(cli_run, host, pb):
    r = cli_run("plan", "-f", pb, "--exit-code")
    assert r.exit_code == ExitCode.CHANGES_PENDING
    assert cli_run("up", "-f", pb, "-y").exit_code == 0
    r = cli_run("plan", "-f", pb, "--exit-code")
    assert r.exit_code == 0 and "nothing to change" in r.stdout


def test_bad_playbook_is_exit_2_and_nothing_is_contacted(cli_run, host, tmp_path):
    data = reference_data()
    data["vms"][0]["nics"][1]["switch"] = "Nowhere"
    p = write_playbook(tmp_path, data)
    for cmd in (["plan"], ["up", "-y"], ["down", "-y"], ["status"]):
        r = cli_run(*cmd, "-f", str(p))
        assert r.exit_code == ExitCode.USAGE, (cmd, r)
        assert "vms[0].nics[1].switch" in r.stderr and "unknown switch" in r.stderr
    assert host.calls == []


def test_playbook_default_from_env_and_cwd(cli_run, host, tmp_path, monkeypatch):
    p = write_playbook(tmp_path, name="other.yaml")
    monkeypatch.setenv("LABCTL_PLAYBOOK", str(p))
    assert cli_run("plan").exit_code == 0
    monkeypatch.delenv("LABCTL_PLAYBOOK")
    monkeypatch.chdir(tmp_path)
    assert cli_run("plan").exit_code == 2  # no ./labctl.yaml yet
    write_playbook(tmp_path, name="labctl.yaml")
    assert cli_run("plan").exit_code == 0


def test_up_then_up_again_changes_nothing(cli_run, host, pb):
    r = cli_run("up", "-f", pb, "-y")
    assert r.exit_code == 0, r
    assert "[hyperv] applied" in r.stderr and "[17/17]" in r.stderr
    host.calls.clear()
    r = cli_run("up", "-f", pb, "-y")
    assert r.exit_code == 0 and "up to date" in r.stdout
    assert [c.name for c in host.calls] == ["facts/read"]


def test_up_json(cli_run, host, pb):
    r = cli_run("up", "-f", pb, "-y", "--json")
    assert r.exit_code == 0
    doc = r.json()
    st = doc["stages"][0]
    assert st["stage"] == "hyperv" and st["status"] == "applied"
    assert st["report"]["converged"] and len(st["report"]["plan"]["steps"]) == 17


def test_up_needs_confirmation_without_a_terminal(cli_run, host, pb):
    r = cli_run("up", "-f", pb)
    assert r.exit_code == ExitCode.USAGE and "pass -y" in r.stderr
    assert not host.writes


def test_up_confirmation_refused(cli_run, host, pb, monkeypatch):
    monkeypatch.setattr("labctl.cli._common.stdin_is_tty", lambda: True)
    r = cli_run("up", "-f", pb, input="n\n")
    assert r.exit_code == ExitCode.INTERRUPTED and "not confirmed" in r.stderr
    assert not host.writes
    r = cli_run("up", "-f", pb, input="y\n")
    assert r.exit_code == 0 and host.writes


def test_up_dry_run_changes_nothing(cli_run, host, pb):
    r = cli_run("up", "-f", pb, "--dry-run")
    assert r.exit_code == 0 and "[hyperv] dry-run" in r.stderr
    assert "hyperv.netnat:Core: create" in r.stdout
    assert not host.writes


def test_up_preflight_refusal_is_exit_6(cli_run, host, pb):
    host.isos.clear()
    r = cli_run("up", "-f", pb, "-y")
    assert r.exit_code == ExitCode.PRECONDITION
    assert "does not exist on the host" in r.stderr and "Hint:" in r.stderr
    assert not host.writes


def test_unreachable_or_auth_failure_is_exit_5(cli_run, host, pb):
    host.fail_facts = "auth"
    assert cli_run("status", "-f", pb).exit_code == ExitCode.UNREACHABLE
    host.fail_facts = "timeout"
    r = cli_run("up", "-f", pb, "-y")
    assert r.exit_code == ExitCode.UNREACHABLE and "facts/read" in r.stderr


def test_remote_error_mid_apply_is_exit_1_and_names_the_script(cli_run, host, pb):
    host.fail_at = 5
    r = cli_run("up", "-f", pb, "-y")
    assert r.exit_code == ExitCode.ERROR
    assert "netnat/create failed: injected failure" in r.stderr
    assert "steps 1-4 of 17 were applied" in r.stderr
    host.fail_at = None
    assert cli_run("up", "-f", pb, "-y").exit_code == 0


def test_no_convergence_is_exit_4(cli_run, host, pb, monkeypatch):
    monkeypatch.setattr(host, "_do_vm_start", lambda p: {"changed": True})
    r = cli_run("up", "-f", pb, "-y")
    assert r.exit_code == ExitCode.DRIFT and "did not converge" in r.stderr


def test_status_exit_codes_and_json(cli_run, host, pb):
    r = cli_run("status", "-f", pb)
    assert r.exit_code == ExitCode.DRIFT and "missing" in r.stdout
    cli_run("up", "-f", pb, "-y")
    r = cli_run("status", "-f", pb, "--json")
    assert r.exit_code == 0
    doc = r.json()
    assert doc["drift"] is False and doc["lab"] == "homelab"
    assert {x["resource"] for x in doc["resources"]} >= {"hyperv.vmswitch:Core",
                                                         "hyperv.vm:d4iot-sensor"}
    host.vms[-1]["cpu"] = 2
    r = cli_run("status", "-f", pb)
    assert r.exit_code == ExitCode.DRIFT and "cpu: 2 -> 4" in r.stdout


def test_down_json_and_idempotent(cli_run, host, pb):
    cli_run("up", "-f", pb, "-y")
    r = cli_run("down", "-f", pb, "-y", "--json")
    assert r.exit_code == 0
    doc = r.json()
    assert doc["applied"] and doc["converged"]
    assert [s["action"] for s in doc["plan"]["steps"]][:2] == ["stop", "delete"]
    r = cli_run("down", "-f", pb, "-y")
    assert r.exit_code == 0 and "Nothing of lab homelab is left" in r.stdout
    assert sorted(s["name"] for s in host.switches) == ["Default Switch"]


def test_only_stages(cli_run, host, pb, tmp_path):
    r = cli_run("up", "-f", pb, "-y", "--only", "sensor", "--json")
    assert r.exit_code == 0
    st = r.json()["stages"]
    assert len(st) == 1 and st[0]["stage"] == "sensor"
    assert st[0]["status"] in ("not-available", "skipped")
    r = cli_run("up", "-f", pb, "-y", "--only", "router", "--json")
    assert r.exit_code == 0
    st = r.json()["stages"]
    assert [s["stage"] for s in st] == ["router"] and st[0]["status"] in ("skipped",
                                                                         "not-available")
    assert not host.writes  # --only router did not touch Hyper-V
    r = cli_run("up", "-f", pb, "-y", "--only", "hyperv", "--json")
    assert [s["stage"] for s in r.json()["stages"]] == ["hyperv"]
    assert cli_run("up", "-f", pb, "--only", "bogus").exit_code == 2


def test_secret_canary_never_appears(cli_run, tmp_path, monkeypatch, _isolated_state,
                                     factory_box):
    monkeypatch.setenv("LABCTL_HYPERV_PASSWORD", CANARY)
    host = FakeHyperVHost.reference()
    factory_box["provider_factory"] = fake_factory(host, "LABCTL_HYPERV_PASSWORD")
    pb = str(write_playbook(tmp_path))
    outputs = []
    for args in (["plan"], ["plan", "--show-steps"], ["plan", "--json"], ["status"],
                 ["status", "--json"], ["up", "--dry-run"], ["-vv", "up", "-y"],
                 ["down", "-y", "--json"]):
        r = cli_run(*args, "-f", pb)
        outputs.append((args, r))
    assert host.leak_in_errors == CANARY  # the fake really knows the password
    host.fail_facts = "auth"  # the remote message echoes the password
    outputs.append((["status"], cli_run("status", "-f", pb)))
    host.fail_facts = None
    host.calls.clear()
    host.fail_at, host.fault = 1, "error"
    outputs.append((["up"], cli_run("-vv", "up", "-y", "--json", "-f", pb)))
    assert outputs[-1][1].exit_code == ExitCode.ERROR
    assert outputs[-2][1].exit_code == ExitCode.UNREACHABLE
    assert "********" in outputs[-1][1].stderr  # the echoed password was masked
    for args, r in outputs:
        assert CANARY not in r.stdout and CANARY not in r.stderr, args
    for f in Path(_isolated_state).rglob("*"):
        if f.is_file():
            assert CANARY not in f.read_text(errors="replace"), f


def test_plan_shows_before_after_and_needs_the_vm_off(cli_run, host, pb):
    cli_run("up", "-f", pb, "-y")
    vm = [v for v in host.vms if v["name"] == "d4iot-sensor"][0]
    vm["cpu"], vm["dynamic_memory"] = 2, True
    r = cli_run("plan", "-f", pb)
    assert r.exit_code == 0
    assert "~ hyperv.vm:d4iot-sensor: update" in r.stdout
    assert "cpu: 2 -> 4" in r.stdout and "dynamic_memory: true -> false" in r.stdout
    assert "[needs the VM off]" in r.stdout
    assert "= hyperv.vmswitch:Core: noop  (switch exists with the wanted settings)" in r.stdout
    assert "pre-flight: VM d4iot-sensor is Running" in r.stdout  # shown before `up` refuses
    assert cli_run("up", "-f", pb, "-y").exit_code == ExitCode.PRECONDITION


def test_plan_against_the_host_needs_the_password_first(cli_run, repo_root, monkeypatch):
    # The real WinRM runner resolves the password before it opens any connection, so this
    # fails with a usage error (exit 2) and a hint, and nothing is contacted.
    monkeypatch.delenv("LABCTL_HYPERV_PASSWORD", raising=False)
    r = cli_run("plan", "-f", str(repo_root / "playbooks/home-lab.yaml"))
    assert r.exit_code == ExitCode.USAGE, r
    assert "LABCTL_HYPERV_PASSWORD" in r.stderr and "facts/read" in r.stderr


def test_render_plan_masks_secret_parameters():
    # No Hyper-V step carries a secret today; if one ever does, --show-steps and --json mask it.
    from labctl.core.model import Change, Plan, Step
    from labctl.core.secrets import MASK, Secret

    secret = Secret("Sup3r-S3cret-Param-Value")
    step = Step("hyperv.x:y", "create", "param([string]$P)\n", {"P": secret, "Q": "plain"},
                name="x/create")
    plan = Plan("hyperv", "homelab", [Change("hyperv.x:y", "create", "test", None, {"p": secret},
                                             (step,))])
    text = cli_lab.render_plan(plan, show_steps=True)
    assert "Sup3r-S3cret-Param-Value" not in text and MASK in text and '"Q": "plain"' in text
    doc = plan.to_dict()
    assert "Sup3r-S3cret-Param-Value" not in repr(doc)
    assert doc["steps"][0]["params"]["P"] == MASK
