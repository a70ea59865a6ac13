"""`labctl up`'s sensor stage against the real HTTPS sensor API on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from labctl.app.sensor import sensor_stage
from labctl.app.stages import up_stages
from labctl.core.context import LabContext
from labctl.core.errors import AuthError, TransportError
from labctl.core.playbook import parse_playbook
from labctl.core.yamlfile import parse_yaml
from tests.helpers.sensor_api import running_api

CANARY = "Canary-Sensor-Pw-7f3!"


def _playbook(url: str, wait: int = 5):
    text = f"""
lab: stg
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
sensor:
  kind: d4iot
  url: {url}
  admin_password: {{env: LABCTL_SENSOR_PASSWORD}}
  wait_seconds: {wait}
"""
    return parse_playbook(parse_yaml(text, "stage.yaml"))


def _ctx(url: str, password: str = CANARY, wait: int = 5, **kw) -> LabContext:
    return LabContext(_playbook(url, wait), environ={"LABCTL_SENSOR_PASSWORD": password}, **kw)


def _yes(_plan) -> bool:
    return True


def test_first_sign_in_sets_the_password_then_second_run_changes_nothing(tmp_path):
    with running_api(tmp_path / "s") as api:
        report = sensor_stage(_ctx(api.url), confirm=_yes)
        assert report.action == "set-password" and report.applied
        assert any("Upload" in n for n in report.notes)  # activation: honest next step
        again = sensor_stage(_ctx(api.url), confirm=_yes)
        assert again.action == "noop" and not again.applied
        # the factory default no longer works; the new password does
        r = api.session().post(api.url + "/api/external/authentication/validation",
                               json={"username": "admin", "password": "admin"})
        assert r.status_code != 200
        r = api.session().post(api.url + "/api/external/authentication/validation",
                               json={"username": "admin", "password": CANARY})
        assert r.status_code == 200


def test_certificate_is_pinned_on_first_use(tmp_path, _isolated_state):
    import json

    with running_api(tmp_path / "s") as api:
        sensor_stage(_ctx(api.url), confirm=_yes)
        pins = json.loads((_isolated_state / "pins.json").read_text())
        assert any(k.endswith(api.url.rsplit(":", 1)[1]) for k in pins)


def test_dry_run_changes_nothing(tmp_path):
    with running_api(tmp_path / "s") as api:
        report = sensor_stage(_ctx(api.url), confirm=_yes, dry_run=True)
        assert report.action == "would-set-password" and not report.applied
        assert sensor_stage(_ctx(api.url), confirm=_yes).action == "set-password"


def test_wrong_password_after_the_default_changed_is_an_auth_error(tmp_path):
    with running_api(tmp_path / "s") as api:
        sensor_stage(_ctx(api.url), confirm=_yes)
        with pytest.raises(AuthError) as ei:
            sensor_stage(_ctx(api.url, password="Other-Passw0rd!"), confirm=_yes)
        assert "factory default" in ei.value.message and int(ei.value.exit_code) == 5
        assert "Other-Passw0rd" not in ei.value.message + (ei.value.hint or "")


def test_unreachable_sensor_waits_bounded_then_fails_with_a_hint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    slept: list[float] = []
    with pytest.raises(TransportError) as ei:
        sensor_stage(_ctx(f"https://127.0.0.1:{port}", wait=1, sleep=slept.append),
                     confirm=_yes)
    assert "did not answer within 1 s" in ei.value.message
    assert "20-30 minutes" in ei.value.hint


def test_up_stages_only_sensor_reports_it(tmp_path):
    with running_api(tmp_path / "s") as api:
        results = up_stages(_ctx(api.url), only="sensor", confirm=lambda p: True)
        assert [(r.stage, r.status) for r in results] == [("sensor", "applied")]
        assert CANARY not in repr(results[0].report.to_dict())
