"""`labctl up`'s sensor stage waits through named phases with deadlines, shows progress,
times out with a hint per phase (exit 4) and resumes where it stopped. An injected clock and
sleep (LabContext.clock/.sleep) stand in for the 20-30 minute install; the probe plays the
VM's state and TCP 443 as a scripted timeline, and the last phases run against the
embedded sensor's real HTTPS API."""

from __future__ import annotations

import json

import pytest

from labctl.app.sensor import PHASE_NAMES, phase_state_path, sensor_stage
from labctl.core.context import LabContext
from labctl.core.errors import ConvergenceError
from labctl.core.playbook import parse_playbook
from labctl.core.yamlfile import parse_yaml
from tests.helpers.sensor_api import running_api

PW = "Phase-Sensor-Pw-9c!"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


class Timeline:
    """The sensor VM as time passes: VM starts at ``vm_at``, port 443 opens at ``tcp_at``
    (the install ended), HTTPS answers at ``http_at``; None: never."""

    def __init__(self, clock: Clock, *, vm_at=10.0, tcp_at=1500.0, http_at=1600.0,
                 real_http=None) -> None:
        self.clock, self.vm_at, self.tcp_at, self.http_at = clock, vm_at, tcp_at, http_at
        self.real_http = real_http

    def _after(self, t):
        return t is not None and self.clock.now >= t

    def vm_state(self):
        st = "Running" if self._after(self.vm_at) else "Off"
        return st, f"VM sensor: {st}"

    def tcp_open(self):
        ok = self._after(self.tcp_at)
        return ok, "TCP 443: " + ("open" if ok else "Connection refused")

    def http_answers(self):
        if not self._after(self.http_at):
            return False, "HTTPS: no answer"
        return (self.real_http(), "HTTPS: the sensor API answers") if self.real_http \
            else (True, "HTTPS: the sensor API answers")


def _ctx(url, clock, *, timeouts="", wait=86400):
    text = f"""
lab: phases
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
sensor:
  kind: d4iot
  url: {url}
  admin_password: {{env: LABCTL_SENSOR_PASSWORD}}
  wait_seconds: {wait}
{timeouts}"""
    return LabContext(parse_playbook(parse_yaml(text, "phases.yaml")),
                      environ={"LABCTL_SENSOR_PASSWORD": PW}, clock=clock, sleep=clock.sleep)


def test_walks_every_phase_in_order_then_signs_in(tmp_path):
    clock = Clock()
    events = []
    with running_api(tmp_path / "s") as api:
        ctx = _ctx(api.url, clock)
        rep = sensor_stage(ctx, confirm=lambda _p: True, phase_progress=events.append,
                           probe=Timeline(clock))
    assert rep.action == "set-password" and rep.applied
    starts = [e.phase for e in events if e.kind == "start"]
    dones = [e.phase for e in events if e.kind == "done"]
    assert starts == dones == list(PHASE_NAMES)
    done = {e.phase: e for e in events if e.kind == "done"}
    assert done["vm-running"].observed == "VM sensor: Running"
    assert done["installer"].elapsed >= 30  # the boot menu's auto-select
    assert done["installing"].observed == "TCP 443: open"
    assert clock.now >= 1600  # the (simulated) install took its time
    assert rep.waited_seconds == pytest.approx(clock.now, abs=5)
    ticks = [e for e in events if e.kind == "tick"]
    assert ticks and all(e.elapsed <= e.deadline for e in ticks)
    assert {e.index for e in events} == {1, 2, 3, 4, 5} and events[0].total == 5
    doc = json.loads(phase_state_path(ctx.loaded).read_text())
    assert doc["phase"] == "signed-in"


@pytest.mark.parametrize("phase,timeline,needle", [
    ("vm-running", {"vm_at": None}, "Hyper-V Manager"),
    ("installer", {"vm_at": 0.0, "tcp_at": None}, None),
    ("installing", {"tcp_at": None}, "management NIC order"),
    ("web-ui", {"tcp_at": 100.0, "http_at": None}, "web UI is still starting"),
])
def test_a_phase_past_its_deadline_is_exit_4_with_its_hint(tmp_path, phase, timeline, needle):
    clock = Clock()
    installer = 120
    if phase == "installer":
        # the installer phase ends by itself after the 30 s auto-select; a 20 s deadline
        # is shorter than that
        installer, needle = 20, "secure boot template"
    timeouts = (f"  phase_timeouts: {{vm_running: 60, installer: {installer}, "
                "installing: 900, web_ui: 120}\n")
    ctx = _ctx("https://127.0.0.1:9", clock, timeouts=timeouts)
    events = []
    with pytest.raises(ConvergenceError) as ei:
        sensor_stage(ctx, confirm=lambda _p: True, phase_progress=events.append,
                     probe=Timeline(clock, **timeline))
    e = ei.value
    assert int(e.exit_code) == 4
    assert needle in e.hint and "resumes at this phase" in e.hint
    titles = dict(zip(PHASE_NAMES, ["the VM", "the installer", "installing", "the web UI"],
                      strict=False))
    assert f"({titles[phase]}" in e.message
    assert events[-1].kind == "timeout" and events[-1].phase == phase
    assert events[-1].elapsed == pytest.approx(events[-1].deadline)  # never slept past it
    assert json.loads(phase_state_path(ctx.loaded).read_text())["phase"] == phase


def test_a_later_up_resumes_at_the_phase_it_reached(tmp_path):
    clock = Clock()
    timeouts = "  phase_timeouts: {installing: 600}\n"
    with running_api(tmp_path / "s") as api:
        ctx = _ctx(api.url, clock, timeouts=timeouts)
        with pytest.raises(ConvergenceError):
            sensor_stage(ctx, confirm=lambda _p: True, probe=Timeline(clock, tcp_at=5000.0))
        assert json.loads(phase_state_path(ctx.loaded).read_text())["phase"] == "installing"
        # later: the install finished; the VM and installer phases are not waited again
        clock2 = Clock()
        clock2.now = 10_000.0
        probe = Timeline(clock2, vm_at=0.0, tcp_at=0.0, http_at=0.0)  # still running
        events = []
        rep = sensor_stage(_ctx(api.url, clock2, timeouts=timeouts), confirm=lambda _p: True,
                           phase_progress=events.append, probe=probe)
    assert rep.action == "set-password"
    assert [e.phase for e in events if e.kind == "resume"] == ["vm-running", "installer"]
    assert [e.phase for e in events if e.kind == "start"] == ["installing", "web-ui",
                                                              "signed-in"]
    assert clock2.sleeps == []  # everything was already up


def test_dry_run_records_no_phase(tmp_path):
    clock = Clock()
    with running_api(tmp_path / "s") as api:
        ctx = _ctx(api.url, clock)
        rep = sensor_stage(ctx, confirm=lambda _p: True, dry_run=True, probe=Timeline(clock))
    assert rep.action == "would-set-password"
    assert not phase_state_path(ctx.loaded).exists()


def test_the_real_probe_without_a_vm_watches_tcp_then_https(tmp_path):
    """No injected probe: TCP 443 and HTTPS of the embedded sensor are really looked at."""
    clock = Clock()
    events = []
    with running_api(tmp_path / "s") as api:
        text = f"""
lab: rp
provider: hyperv
hyperv: {{host: hv.example, transport: winrm}}
sensor: {{kind: d4iot, url: "{api.url}", admin_password: {{env: P}}}}
"""
        ctx = LabContext(parse_playbook(parse_yaml(text, "p.yaml")), environ={"P": PW},
                         clock=clock, sleep=clock.sleep)
        rep = sensor_stage(ctx, confirm=lambda _p: True, phase_progress=events.append)
    assert rep.action == "set-password"
    done = {e.phase: e.observed for e in events if e.kind == "done"}
    assert done["vm-running"] == "no Hyper-V VM to watch"
    assert done["installing"].startswith("TCP ") and done["installing"].endswith(": open")
    assert done["web-ui"] == "HTTPS: the sensor API answers"


def test_bad_phase_timeout_is_exit_2_naming_the_key(cli_run, tmp_path):
    p = tmp_path / "lab.yaml"
    p.write_text("""lab: x
provider: hyperv
hyperv: {host: hv.example, transport: winrm}
sensor:
  phase_timeouts: {installing: "30 minutes"}
""")
    r = cli_run("plan", "-f", str(p))
    assert r.exit_code == 2 and "sensor.phase_timeouts.installing" in r.stderr


def test_the_cli_display_prints_one_line_per_phase_change_when_not_interactive(capsys):
    from labctl.app.sensor import PhaseEvent
    from labctl.cli.sensor import PhaseDisplay

    d = PhaseDisplay(interactive=False)
    for kind, elapsed in (("start", 0), ("tick", 5), ("tick", 10), ("done", 12)):
        d(PhaseEvent(kind, "installing", 3, 5, "installing (20 to 30 minutes)", elapsed,
                     2400, "TCP 443: open" if kind == "done" else "TCP 443: refused"))
    d(PhaseEvent("timeout", "web-ui", 4, 5, "the web UI answering", 600, 600, "no answer"))
    d.close()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "sensor [3/5] installing (20 to 30 minutes): waiting (TCP 443: refused)",
        "sensor [3/5] installing (20 to 30 minutes): done after 12 s (TCP 443: open)",
        "sensor [4/5] the web UI answering: timed out after 600 s (no answer)",
    ]


def test_the_cli_display_renders_ticks_live_on_a_terminal(capsys):
    from labctl.app.sensor import PhaseEvent
    from labctl.cli.sensor import PhaseDisplay

    d = PhaseDisplay(interactive=True)
    d(PhaseEvent("start", "installing", 3, 5, "installing", 0, 2400))
    d(PhaseEvent("tick", "installing", 3, 5, "installing", 65, 2400, "TCP 443: refused"))
    assert d._live is not None  # a live line while waiting
    d(PhaseEvent("done", "installing", 3, 5, "installing", 70, 2400, "TCP 443: open"))
    assert d._live is None
    d.close()
    assert "done after 70 s" in capsys.readouterr().err


def test_resume_starts_over_when_the_vm_is_off_again(tmp_path):
    clock = Clock()
    with running_api(tmp_path / "s") as api:
        sensor_stage(_ctx(api.url, clock), confirm=lambda _p: True, probe=Timeline(clock))
        # the VM was rebuilt: off now, starting 20 s later
        clock2 = Clock()
        events = []
        sensor_stage(_ctx(api.url, clock2), confirm=lambda _p: True,
                     phase_progress=events.append,
                     probe=Timeline(clock2, vm_at=20.0, tcp_at=100.0, http_at=100.0))
    assert not [e for e in events if e.kind == "resume"]
    assert [e.phase for e in events if e.kind == "start"] == list(PHASE_NAMES)
    assert clock2.now >= 100.0
