"""Defender for IoT's Azure side over ARM against a local HTTPS fake of the management
endpoint (tests/helpers/fake_arm.py, shapes from the REST spec's examples), with a fake
credential: site and sensor created once, a second run sends no PUT, a 409 for an existing
site, a 429 with Retry-After, the activation file downloaded 0600 and checked."""

from __future__ import annotations

import ssl
import stat
import time

import pytest

pytest.importorskip("azure.identity")

from azure.core.credentials import AccessToken  # noqa: E402

from labctl.app.sensor import activation_file, azure_activation_path, azure_onboard  # noqa: E402
from labctl.core.context import LabContext  # noqa: E402
from labctl.core.errors import ApiError, AuthError  # noqa: E402
from labctl.core.playbook import load_playbook  # noqa: E402
from tests.helpers.fake_arm import TOKEN, FakeArm, serve  # noqa: E402

SUB = "20ff7fc3-e762-44dd-bd96-b71116dcdc23"


class FakeCredential:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kw):
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
def arm():
    import trustme

    ca = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    fake = FakeArm(SUB)
    srv = serve(fake, ctx)
    with ca.cert_pem.tempfile() as ca_path:
        yield fake, f"https://127.0.0.1:{srv.server_address[1]}", ca_path
    srv.stop()


def _ctx(tmp_path, url, sleeps=None, zone="Home Lab"):
    p = tmp_path / "lab.yaml"
    p.write_text(f"""lab: az
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
sensor:
  kind: d4iot
  azure:
    subscription: {SUB}
    location: eastus
    site: homelab
    site_display_name: Home lab
    sensor_name: d4iot-sensor
    zone: {zone}
    endpoint: {url}
""")
    sl = sleeps if sleeps is not None else []
    return LabContext(load_playbook(str(p)), environ={}, sleep=sl.append)


def test_creates_site_and_sensor_then_a_second_run_is_a_noop(tmp_path, arm):
    fake, url, ca = arm
    cred = FakeCredential()
    rep = azure_onboard(_ctx(tmp_path, url), credential=cred, verify=ca)
    assert [r["action"] for r in rep.results] == ["created", "created"]
    site = fake.resources[fake.prefix + "/sites/homelab"]
    assert site == {"displayName": "Home lab", "tags": {}}
    sensor = fake.resources[fake.prefix + "/sites/homelab/sensors/d4iot-sensor"]
    assert {k: sensor[k] for k in ("sensorType", "zone", "tiAutomaticUpdates")} == \
        {"sensorType": "Ot", "zone": "Home Lab", "tiAutomaticUpdates": True}
    assert cred.scopes[0] == (url + "/.default",)
    # the activation file: in the lab's state folder, 0600, and it passes the check
    path = azure_activation_path(_ctx(tmp_path, url).loaded)
    assert rep.downloaded and rep.activation_file == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    act = activation_file(_ctx(tmp_path, url))
    assert act.members == ("d4iot-sensor.conf",)
    # second run: reads only, no PUT, no second download
    n_put = len(fake.methods("PUT"))
    again = azure_onboard(_ctx(tmp_path, url), credential=cred, verify=ca)
    assert [r["action"] for r in again.results] == ["noop", "noop"]
    assert len(fake.methods("PUT")) == n_put and not again.downloaded
    assert len(fake.methods("POST")) == 1


def test_a_changed_zone_updates_the_sensor(tmp_path, arm):
    fake, url, ca = arm
    azure_onboard(_ctx(tmp_path, url), credential=FakeCredential(), verify=ca)
    rep = azure_onboard(_ctx(tmp_path, url, zone="Other"), credential=FakeCredential(),
                        verify=ca, dry_run=True)
    assert [r["action"] for r in rep.results] == ["noop", "would-update"]
    assert fake.resources[fake.prefix + "/sites/homelab/sensors/d4iot-sensor"]["zone"] == \
        "Home Lab"  # dry run: unchanged
    rep = azure_onboard(_ctx(tmp_path, url, zone="Other"), credential=FakeCredential(),
                        verify=ca)
    assert [r["action"] for r in rep.results] == ["noop", "updated"]
    assert fake.resources[fake.prefix + "/sites/homelab/sensors/d4iot-sensor"]["zone"] == \
        "Other"


def test_409_for_an_existing_site_is_read_back(tmp_path, arm):
    fake, url, ca = arm
    site = fake.prefix + "/sites/homelab"
    # made by someone else with other properties; the GET before the PUT sees it and ARM
    # refuses the PUT with 409
    fake.resources[site] = {"displayName": "Someone's", "tags": {}}
    fake.conflict_on_put.add(site)
    with pytest.raises(ApiError) as ei:
        azure_onboard(_ctx(tmp_path, url), credential=FakeCredential(), verify=ca)
    assert ei.value.status == 409 and "differs from the playbook" in ei.value.message
    assert TOKEN not in ei.value.message + (ei.value.hint or "")
    # the same properties: 409 is a noop
    fake.resources[site] = {"displayName": "Home lab", "tags": {}}
    rep = azure_onboard(_ctx(tmp_path, url), credential=FakeCredential(), verify=ca)
    assert rep.results[0]["action"] == "noop"


def test_409_on_put_after_a_concurrent_create_is_a_noop(tmp_path, arm):
    from labctl.sensor.arm import ArmClient

    fake, url, ca = arm
    site = fake.prefix + "/sites/homelab"
    client = ArmClient(SUB, "eastus", credential=FakeCredential(), endpoint=url, verify=ca,
                       sleep=lambda s: None)
    original = client.request

    def racing(method, path, body=None):
        if method == "PUT" and path == "/sites/homelab":
            # another run created it between our GET and our PUT
            fake.resources[site] = {"displayName": "Home lab", "tags": {}}
            fake.conflict_on_put.add(site)
        return original(method, path, body)

    client.request = racing
    assert client.ensure_site("homelab", "Home lab").action == "noop"


def test_429_is_retried_after_retry_after(tmp_path, arm):
    fake, url, ca = arm
    fake.throttle = 2
    sleeps: list[float] = []
    rep = azure_onboard(_ctx(tmp_path, url, sleeps), credential=FakeCredential(), verify=ca)
    assert [r["action"] for r in rep.results] == ["created", "created"]
    assert sleeps == [7.0, 7.0]
    # a service that keeps throttling: bounded retries, then an error naming the call
    fake.throttle = 100
    sleeps.clear()
    with pytest.raises(ApiError) as ei:
        azure_onboard(_ctx(tmp_path, url, sleeps), credential=FakeCredential(), verify=ca,
                      refresh=True)
    assert ei.value.status == 429 and len(sleeps) == 4


def test_a_refused_token_is_an_auth_error_without_the_token(tmp_path, arm):
    fake, url, ca = arm
    with pytest.raises(AuthError) as ei:
        azure_onboard(_ctx(tmp_path, url), credential=FakeCredential("wrong-secret-token"),
                      verify=ca)
    assert "401" in ei.value.message
    assert "wrong-secret-token" not in ei.value.message + (ei.value.hint or "")
    assert not fake.resources


def test_bad_azure_section_is_exit_2(cli_run, tmp_path):
    p = tmp_path / "lab.yaml"
    p.write_text("""lab: az
provider: hyperv
hyperv: {host: hv.example, transport: winrm}
sensor:
  azure:
    subscription: not-a-guid
    site: homelab
    sensor_name: s
""")
    r = cli_run("sensor", "status", "-f", str(p))
    assert r.exit_code == 2 and "sensor.azure.subscription" in r.stderr


def test_activate_with_azure_polls_sensor_status_and_connectivity_time(tmp_path, arm):
    """A real sensor with sensor.azure: after the instructions, labctl polls ARM until the
    sensor is Ok with a connectivityTime (the fake flips it after two polls)."""
    from labctl.app.sensor import sensor_activate
    from tests.helpers import fake_d4iot

    fake, url, ca = arm
    cred = FakeCredential()
    azure_onboard(_ctx(tmp_path, url), credential=cred, verify=ca)
    srv, sensor_url, _ = fake_d4iot.serve(fake_d4iot.FakeSensor(), tmp_path / "d4")
    try:
        ctx = _ctx(tmp_path, url)
        text = (tmp_path / "lab.yaml").read_text().replace(
            "  kind: d4iot\n", f"  kind: d4iot\n  url: {sensor_url}\n")
        (tmp_path / "lab.yaml").write_text(text)
        now = [0.0]
        sleeps: list[float] = []
        path = fake.prefix + "/sites/homelab/sensors/d4iot-sensor"

        def sleep(s: float) -> None:
            sleeps.append(s)
            now[0] += s
            if len(sleeps) == 2:
                fake.resources[path].update(sensorStatus="Ok",
                                            connectivityTime="2026-12-02T05:00:00Z")

        ctx = LabContext(load_playbook(str(tmp_path / "lab.yaml")),
                         environ={"LABCTL_SENSOR_TOKEN": fake_d4iot.TOKEN},
                         clock=lambda: now[0], sleep=sleep)
        events: list[dict] = []
        rep = sensor_activate(ctx, progress=events.append, credential=cred, verify=ca)
        assert events[0]["phase"] == "instructions"
        assert [e["phase"] for e in events[1:]] == ["waiting", "waiting", "activated"]
        assert "sensorStatus Unavailable" in events[1]["observed"]
        assert rep.activated and "connectivityTime 2026-12-02T05:00:00Z" in rep.evidence
    finally:
        srv.shutdown()
        srv.server_close()


# ---- plan and up: the Azure changes as a plan of plain-data steps ---------------------------

def test_plan_lists_the_azure_steps_up_applies_them_and_a_second_plan_is_empty(tmp_path, arm):
    from labctl.app import stages as st
    from labctl.app.sensor import azure_plan
    from labctl.cli.lab import render_azure_plan

    fake, url, ca = arm
    cred = FakeCredential()
    plan = azure_plan(_ctx(tmp_path, url), credential=cred, verify=ca)
    assert fake.methods("PUT") == [] and fake.methods("POST") == []  # planning sends nothing
    assert [(c.resource, str(c.action)) for c in plan.changes] == [
        ("azure.site:homelab", "create"), ("azure.sensor:d4iot-sensor", "create"),
        ("azure.activation:d4iot-sensor", "create")]
    prefix = f"{url}/subscriptions/{SUB}/providers/Microsoft.IoTSecurity/locations/eastus"
    q = "?api-version=2021-09-01-preview"
    assert [s.script for s in plan.steps] == [
        f"PUT {prefix}/sites/homelab{q}",
        f"PUT {prefix}/sites/homelab/sensors/d4iot-sensor{q}",
        f"POST {prefix}/sites/homelab/sensors/d4iot-sensor/downloadActivation{q}"]
    assert plan.steps[1].params == {"properties": {"sensorType": "Ot", "zone": "Home Lab",
                                                   "tiAutomaticUpdates": True}}
    doc = plan.to_dict()
    assert TOKEN not in str(doc) and doc["provider"] == "azure"
    text = render_azure_plan(plan, show_steps=True)
    assert "+ azure.site:homelab: create" in text and "downloadActivation" in text

    # up's azure stage applies that plan (confirmed as a plan), in the stage order
    asked: list = []
    stages = (st.ProviderStage(), st.AzureStage(credential=cred, verify=ca), st.SensorStage())
    assert [s.name for s in st.STAGES] == ["hyperv", "router", "azure", "sensor"]
    [res] = st.up_stages(_ctx(tmp_path, url), only="azure", confirm=lambda p: False,
                         confirm_stage=lambda name, obj: asked.append((name, obj)) or True,
                         stages=stages)
    assert res.status == "applied" and [a[0] for a in asked] == ["azure"]
    assert [c.resource for c in asked[0][1].pending] == [c.resource for c in plan.changes]
    assert len(fake.methods("PUT")) == 2 and len(fake.methods("POST")) == 1
    assert azure_activation_path(_ctx(tmp_path, url).loaded).is_file()

    # a second plan has no Azure step; a second up sends nothing and asks nothing
    again = azure_plan(_ctx(tmp_path, url), credential=cred, verify=ca)
    assert again.empty and [str(c.action) for c in again.changes] == ["noop"] * 3
    assert "nothing to change" in render_azure_plan(again).lower()
    [res] = st.up_stages(_ctx(tmp_path, url), only="azure", confirm=lambda p: False,
                         confirm_stage=lambda name, obj: pytest.fail("asked"), stages=stages)
    assert res.status == "converged"
    assert len(fake.methods("PUT")) == 2 and len(fake.methods("POST")) == 1

    # a changed zone: one update step with the value before and after
    changed = azure_plan(_ctx(tmp_path, url, zone="Other"), credential=cred, verify=ca)
    [c] = changed.pending
    assert c.resource == "azure.sensor:d4iot-sensor" and str(c.action) == "update"
    assert c.before["zone"] == "Home Lab" and c.after["zone"] == "Other"
    # a dry run of up plans but changes nothing
    [res] = st.up_stages(_ctx(tmp_path, url, zone="Other"), only="azure", dry_run=True,
                         confirm=lambda p: False, confirm_stage=lambda n, o: pytest.fail("asked"),
                         stages=stages)
    assert res.status == "dry-run" and len(fake.methods("PUT")) == 2


def test_up_refused_confirmation_changes_nothing_in_azure(tmp_path, arm):
    from labctl.app import stages as st
    from labctl.core.errors import Interrupted

    fake, url, ca = arm
    stages = (st.AzureStage(credential=FakeCredential(), verify=ca),)
    with pytest.raises(Interrupted):
        st.up_stages(_ctx(tmp_path, url), confirm=lambda p: True,
                     confirm_stage=lambda n, o: False, stages=stages)
    assert fake.methods("PUT") == [] and fake.methods("POST") == []


def test_plan_cli_assume_empty_does_not_read_azure(cli_run, tmp_path, arm):
    _fake, url, _ca = arm
    _ctx(tmp_path, url)
    r = cli_run("plan", "-f", str(tmp_path / "lab.yaml"), "--assume-empty", "--json")
    assert r.exit_code == 0, r
    doc = r.json()
    assert "azure" not in doc and any("sensor.azure was not read" in w for w in doc["warnings"])


def test_plan_and_up_cli_show_and_apply_the_azure_steps(cli_run, tmp_path, arm):
    """`labctl plan` lists the Azure changes beside the host's, like any other change;
    `up -y --only azure` applies them; a second plan has only Azure noops."""
    from tests.helpers.fake_hyperv import FakeHyperVHost
    from tests.helpers.hyperv_lab import fake_factory, reference_data, write_playbook

    fake, url, ca = arm
    data = reference_data()
    data["sensor"] = {"kind": "d4iot", "azure": {
        "subscription": SUB, "location": "eastus", "site": "homelab",
        "sensor_name": "d4iot-sensor", "zone": "Home Lab", "endpoint": url}}
    pb = str(write_playbook(tmp_path, data))
    host = FakeHyperVHost.reference()
    overrides = {"provider_factory": fake_factory(host), "arm_credential": FakeCredential(),
                 "arm_verify": ca}
    r = cli_run("plan", "-f", pb, "--json", overrides=overrides)
    assert r.exit_code == 0, r
    doc = r.json()
    assert [(c["resource"], c["action"]) for c in doc["azure"]["changes"]] == [
        ("azure.site:homelab", "create"), ("azure.sensor:d4iot-sensor", "create"),
        ("azure.activation:d4iot-sensor", "create")]
    assert fake.methods("PUT") == [] and fake.methods("POST") == []  # planning sends nothing
    text = cli_run("plan", "-f", pb, overrides=overrides)
    assert text.exit_code == 0 and "azure.site:homelab" in text.stdout, text
    up = cli_run("up", "-f", pb, "-y", "--only", "azure", overrides=overrides)
    assert up.exit_code == 0, up
    assert len(fake.methods("PUT")) == 2 and len(fake.methods("POST")) == 1
    again = cli_run("plan", "-f", pb, "--json", overrides=overrides)
    assert again.exit_code == 0, again
    assert all(c["action"] == "noop" for c in again.json()["azure"]["changes"])
