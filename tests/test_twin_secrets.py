"""The twin owns its router's credentials when the playbook's variables are unset."""

from __future__ import annotations

import stat
from pathlib import Path

from labctl.core.playbook import load_playbook
from labctl.core.state import lab_state_dir
from labctl.netns.credentials import FILE, iot_passphrase, router_password

ROOT = Path(__file__).resolve().parent.parent
TWIN = str(ROOT / "playbooks" / "twin.yaml")


def test_twin_router_password_is_made_once_kept_private_and_stable():
    loaded = load_playbook(TWIN)
    first = router_password(loaded, environ={})
    again = router_password(loaded, environ={})
    assert first.reveal() == again.reveal() and len(first.reveal()) >= 20
    assert first.reveal() not in str(first) + repr(first)
    path = lab_state_dir(loaded.model.lab) / FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert iot_passphrase(loaded, environ={}).reveal() != first.reveal()


def test_playbook_variable_wins_over_the_twin_secret():
    loaded = load_playbook(TWIN)
    env_name = loaded.model.router.password.env
    assert router_password(loaded, environ={env_name: "from-the-env"}).reveal() == "from-the-env"


def test_router_target_of_a_twin_needs_no_environment():
    from labctl.app.router import desired_network, resolve_target

    loaded = load_playbook(TWIN)
    target = resolve_target(loaded, environ={})
    assert target.password.reveal() == router_password(loaded, environ={}).reveal()
    assert target.netns == f"{loaded.model.lab}-host"
    desired = desired_network(loaded, {}, environ={})
    assert desired.passphrase.reveal() == iot_passphrase(loaded, environ={}).reveal()


def test_twin_secrets_meet_the_sensor_password_policy(tmp_path):
    from labctl.netns.credentials import twin_secret
    from labctl.sensor.store import password_problems

    for i in range(200):
        value = twin_secret(tmp_path, f"s{i}").reveal()
        assert password_problems(value) == [], value


def test_twin_secrets_never_follow_a_planted_symlink(tmp_path):
    """The old writer opened the fixed name twin-secrets.tmp with O_TRUNC, following a
    symlink planted there; the secrets file itself must not follow one either."""
    import os
    import stat

    from labctl.netns.credentials import FILE, twin_secret

    victim = tmp_path / "victim"
    victim.write_text("keep me")
    state = tmp_path / "state"
    state.mkdir()
    (state / (FILE.rsplit(".", 1)[0] + ".tmp")).symlink_to(victim)
    (state / FILE).symlink_to(tmp_path / "elsewhere.json")
    twin_secret(state, "router_password")
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "elsewhere.json").exists()
    assert not (state / FILE).is_symlink()
    assert stat.S_IMODE(os.stat(state / FILE).st_mode) == 0o600
