"""The lab's local state around `down`: state folders get a mode only when labctl created
them, `down` says where the router backups (the Wi-Fi passphrase) stay, and `down --purge`
removes this lab's secret-holding state files and nothing else."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from labctl.core.state import (
    SECRET_STATE,
    CreatedRecord,
    ensure_private_dir,
    lab_state_dir,
    write_private_json,
)
from labctl.netns.credentials import twin_secret
from labctl.router.asus.transaction import write_backup
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import fake_factory, write_playbook

PSK = "Azkaban-PSK-canary-5150"


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# -- folders: only what labctl created gets a mode ----------------------------------------------
def test_an_existing_shared_state_folder_keeps_its_mode(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    monkeypatch.setenv("LABCTL_STATE_DIR", str(shared))
    d = lab_state_dir("homelab")
    assert _mode(shared) == 0o775, "labctl must not chmod a folder it did not create"
    assert _mode(shared / "labs") == 0o700 and _mode(d) == 0o700


def test_ensure_private_dir_sets_0700_despite_the_umask_and_only_on_new_folders(tmp_path):
    os.chmod(tmp_path, 0o755)
    old = os.umask(0o022)
    try:
        ensure_private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert _mode(tmp_path) == 0o755
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700
    os.chmod(tmp_path / "a", 0o750)
    ensure_private_dir(tmp_path / "a" / "b")  # all exist: nothing changes
    assert _mode(tmp_path / "a") == 0o750


def test_private_json_is_a_new_0600_file_and_a_planted_symlink_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("untouched")
    link = tmp_path / "created.json"
    link.symlink_to(target)
    write_private_json({"k": 1}, link)
    assert not link.is_symlink() and _mode(link) == 0o600
    assert target.read_text() == "untouched"


def test_a_record_entry_survives_a_reload_and_the_file_is_0600():
    from labctl.hyperv.diff import nat_entry

    rec = CreatedRecord.of_lab("homelab")
    e = nat_entry("hyperv:h", "Core", "192.168.0.1/24")
    rec.add(e)
    rec.add(e)
    assert CreatedRecord.of_lab("homelab").entries() == [e]
    assert e.get("prefix") == "192.168.0.0/24"
    assert _mode(rec.path) == 0o600
    rec.remove(e)
    assert rec.entries() == []


# -- down: the notice and --purge -----------------------------------------------------------------
@pytest.fixture
def overrides() -> dict:
    return {"provider_factory": fake_factory(FakeHyperVHost.reference())}


def _plant_secrets(lab: str) -> list[Path]:
    d = lab_state_dir(lab)
    backup = write_backup({"sdn_rl": "x", "wl0_wpa_psk": PSK}, d / "router-backups")
    twin_secret(d, "iot_passphrase")
    (d / "router-nvram.json").write_text(json.dumps({"wl0_wpa_psk": PSK}))
    (d / "sensor").mkdir()
    (d / "sensor" / "sensor.db").write_text("tokens")
    return [backup, d / "twin-secrets.json", d / "router-nvram.json", d / "sensor"]


def test_down_says_the_router_backups_stay_and_offers_purge(cli_run, overrides, tmp_path):
    pb = str(write_playbook(tmp_path))
    files = _plant_secrets("homelab")
    r = cli_run("down", "-f", pb, "-y", overrides=overrides)
    assert r.exit_code == 0, r.stderr
    assert "1 router backup(s) of lab homelab stay in" in r.stdout
    assert "Wi-Fi passphrase" in r.stdout and "labctl down --purge" in r.stdout
    assert PSK not in r.stdout + r.stderr
    assert all(f.exists() for f in files)
    r = cli_run("down", "-f", pb, "-y", "--json", overrides=overrides)
    doc = r.json()
    assert doc["router_backups"] == [str(files[0])]
    assert set(doc["secrets_left"]) == {str(lab_state_dir("homelab") / n) for n in SECRET_STATE}
    assert doc["purged"] == []
    assert PSK not in r.stdout


def test_down_purge_removes_only_this_labs_secret_state(cli_run, overrides, tmp_path):
    pb = str(write_playbook(tmp_path))
    mine = _plant_secrets("homelab")
    other = _plant_secrets("otherlab")
    keep = lab_state_dir("homelab") / "scan-notes.txt"
    keep.write_text("not a secret")
    outside = tmp_path / "outside.json"
    outside.write_text("someone else's")
    (lab_state_dir("homelab") / "router-backups" / "link.json").symlink_to(outside)
    r = cli_run("down", "-f", pb, "-y", "--purge", "--json", overrides=overrides)
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert set(doc["purged"]) == {str(lab_state_dir("homelab") / n) for n in SECRET_STATE}
    assert doc["router_backups"] == [] and doc["secrets_left"] == []
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in other), "another lab's files are not touched"
    assert keep.exists() and outside.read_text() == "someone else's"
    r = cli_run("down", "-f", pb, "-y", overrides=overrides)
    assert "router backup" not in r.stdout and "--purge" not in r.stdout


def test_purge_happens_only_after_a_down_that_converged(cli_run, tmp_path):
    host = FakeHyperVHost.reference()
    overrides = {"provider_factory": fake_factory(host)}
    pb = str(write_playbook(tmp_path))
    assert cli_run("up", "-f", pb, "-y", overrides=overrides).exit_code == 0
    files = _plant_secrets("homelab")
    host.fail_at = 1 + len(host.writes)  # the first write of `down` fails
    r = cli_run("down", "-f", pb, "-y", "--purge", overrides=overrides)
    assert r.exit_code != 0
    assert all(f.exists() for f in files)


def test_read_only_commands_write_no_record(cli_run, overrides, tmp_path):
    pb = str(write_playbook(tmp_path))
    assert cli_run("plan", "-f", pb, overrides=overrides).exit_code == 0
    assert cli_run("status", "-f", pb, overrides=overrides).exit_code in (0, 4)
    assert not CreatedRecord.of_lab("homelab").path.exists()
    assert not Path(str(CreatedRecord.of_lab("homelab").path) + ".lock").exists()
