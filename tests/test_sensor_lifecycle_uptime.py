"""The installer and installing phases read the sensor VM's state and Uptime from Hyper-V
facts (the facts template reads Get-VM's Uptime in seconds; the fake Hyper-V host models it
as stateful: it advances with the injected clock and restarts at 0 after a stop and start).
The phases count from the VM's Uptime, so a resumed `up` knows how far the install is.

The install is simulated on the VM's own Uptime: port 443 opens when the VM has been up for
INSTALL_DONE seconds. Nothing waits for real: LabContext.clock/.sleep are a fake clock."""

from __future__ import annotations

import json
import re
import types

import pytest

from labctl.app import lab as app
from labctl.app.sensor import (
    INSTALLER_AUTOSELECT,
    SensorProbe,
    phase_state_path,
    wait_phases,
)
from labctl.core.assets import asset_path
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import fake_factory, loaded, reference_data

VM = "d4iot-sensor"
INSTALL_DONE = 1500  # seconds of VM Uptime until the install ends and 443 opens


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.now += s


class Interrupt(Exception):
    pass


class UptimeProbe(SensorProbe):
    """The real probe's VM reading (Hyper-V facts through the provider); port 443 and HTTPS
    follow the VM's Uptime as the fake host reports it."""

    def __init__(self, ctx, host: FakeHyperVHost) -> None:
        super().__init__(ctx, driver=None, target=None, user="admin", password=None)
        self.host = host
        self.reads = 0

    def _read_vm(self):
        self.reads += 1
        return super()._read_vm()

    def _uptime(self) -> int:
        vm = next(v for v in self.host.vms if v["name"] == VM)
        return self.host._vm_facts(vm)["uptime_seconds"]

    def tcp_open(self):
        ok = self._uptime() >= INSTALL_DONE
        return ok, "TCP 443: " + ("open" if ok else "Connection refused")

    def http_answers(self):
        return True, "HTTPS: the sensor API answers"


def _lab(clock: Clock):
    host = FakeHyperVHost.reference()
    host.set_clock(clock)
    data = reference_data(keep_sensor=True)
    ctx = app.LabContext(loaded=loaded(data), provider_factory=fake_factory(host),
                         clock=clock, sleep=clock.sleep)
    return host, ctx


def _signed_in(_deadline):
    return types.SimpleNamespace(action="noop")


def _uptime_facts(ctx) -> tuple[str, int]:
    p = app.make_provider(ctx)
    try:
        vm = next(v for v in p.read_facts().vms if v.name == VM)
    finally:
        p.close()
    return vm.state, vm.uptime_seconds


def test_the_facts_template_reads_get_vms_uptime_in_seconds():
    text = asset_path("hyperv", "templates", "facts", "read.ps1.j2").read_text()
    assert "uptime_seconds = [int64][math]::Floor($vm.Uptime.TotalSeconds)" in text


def test_the_fake_hosts_uptime_advances_with_its_clock_and_restarts_on_stop_start():
    clock = Clock()
    host, ctx = _lab(clock)
    app.up(ctx, confirm=lambda p: True)
    assert _uptime_facts(ctx) == ("Running", 0)
    clock.sleep(90.7)
    assert _uptime_facts(ctx) == ("Running", 90)
    lab = ctx.playbook.lab
    host._do_vm_stop({"Name": VM, "Lab": lab})
    clock.sleep(60)
    assert _uptime_facts(ctx) == ("Off", 0)
    host._do_vm_start({"Name": VM})
    clock.sleep(12)
    assert _uptime_facts(ctx) == ("Running", 12)
    host._do_vm_start({"Name": VM})  # starting a running VM does not reset its Uptime
    assert _uptime_facts(ctx) == ("Running", 12)


def test_the_phases_show_the_vms_state_and_uptime_and_count_from_it():
    clock = Clock()
    host, ctx = _lab(clock)
    app.up(ctx, confirm=lambda p: True)
    clock.sleep(3)
    events: list = []
    probe = UptimeProbe(ctx, host)
    _done, waited = wait_phases(ctx, probe, signed_in=_signed_in, progress=events.append)
    done = {e.phase: e for e in events if e.kind == "done"}
    assert done["vm-running"].observed == f"VM {VM}: Running, up 3s"
    # the installer phase ends when the VM has been up for the 30 s auto-select
    # (the first observation at or past it: the stage looks every 5 s)
    up = _parse_up(done["installer"].observed)
    assert INSTALLER_AUTOSELECT <= up < INSTALLER_AUTOSELECT + 5
    assert done["installer"].elapsed == pytest.approx(up, abs=1)  # counted from the VM start
    ticks = [e for e in events if e.kind == "tick" and e.phase == "installing"]
    assert ticks and all(e.observed.startswith(f"VM {VM}: Running, up ") for e in ticks)
    assert any(re.fullmatch(f"VM {VM}: Running, up 10m0[0-4]s; TCP 443: Connection refused",
                            e.observed) for e in ticks)
    # elapsed in the installing phase is the VM's time since the auto-select
    for e in ticks:
        up = _parse_up(e.observed)
        assert e.elapsed == pytest.approx(up - INSTALLER_AUTOSELECT, abs=1)
    assert re.fullmatch(f"VM {VM}: Running, up 25m0[0-4]s; TCP 443: open",
                        done["installing"].observed)
    assert INSTALL_DONE - 3 <= waited < INSTALL_DONE + 5
    # Hyper-V facts are read at most every 30 s of (injected) time, not at every tick
    assert probe.reads <= INSTALL_DONE / SensorProbe.VM_READ_INTERVAL + 3


def _parse_up(observed: str) -> int:
    up = observed.split("up ", 1)[1].split(";", 1)[0]
    total, num = 0, ""
    for ch in up:
        if ch.isdigit():
            num += ch
        else:
            total += int(num) * {"h": 3600, "m": 60, "s": 1}[ch]
            num = ""
    return total


def test_a_resumed_up_knows_how_far_the_install_is_from_the_vms_uptime():
    clock = Clock()
    host, ctx = _lab(clock)
    app.up(ctx, confirm=lambda p: True)

    def interrupted_sleep(s: float) -> None:
        clock.sleep(s)
        if clock.now - 1000 >= 600:  # Ctrl-C ten minutes into the install
            raise Interrupt

    ctx.sleep = interrupted_sleep
    with pytest.raises(Interrupt):
        wait_phases(ctx, UptimeProbe(ctx, host), signed_in=_signed_in)
    assert json.loads(phase_state_path(ctx.loaded).read_text())["phase"] == "installing"
    clock.sleep(600)  # the VM kept installing while nobody watched
    ctx.sleep = clock.sleep
    events: list = []
    _done, waited = wait_phases(ctx, UptimeProbe(ctx, host), signed_in=_signed_in,
                                progress=events.append)
    assert [e.phase for e in events if e.kind == "resume"] == ["vm-running", "installer"]
    first = next(e for e in events if e.phase == "installing" and e.kind in ("tick", "done"))
    # 20 minutes of Uptime: 19.5 minutes into the install, not 0
    assert first.elapsed == pytest.approx(1200 - INSTALLER_AUTOSELECT, abs=1)
    assert waited == pytest.approx(INSTALL_DONE - 1200, abs=6)


def test_a_resumed_up_past_the_install_deadline_by_uptime_times_out_at_once():
    from labctl.core.errors import ConvergenceError

    clock = Clock()
    host, ctx = _lab(clock)
    app.up(ctx, confirm=lambda p: True)
    ctx.sleep = lambda s: (_ for _ in ()).throw(Interrupt()) if clock.now - 1000 >= 100 \
        else clock.sleep(s)
    with pytest.raises(Interrupt):
        wait_phases(ctx, UptimeProbe(ctx, host), signed_in=_signed_in)
    ctx.sleep = clock.sleep
    limit = ctx.playbook.sensor.phase_timeouts.installing
    clock.sleep(limit + 60)  # the VM has been "installing" longer than the deadline

    class Stuck(UptimeProbe):
        def tcp_open(self):
            return False, "TCP 443: Connection refused"

    t0 = clock.now
    with pytest.raises(ConvergenceError) as ei:
        wait_phases(ctx, Stuck(ctx, host), signed_in=_signed_in)
    assert "installing" in ei.value.message and clock.now - t0 < 10
    assert "management NIC order" in ei.value.hint


def test_a_vm_restarted_during_the_install_resumes_at_the_installer():
    clock = Clock()
    host, ctx = _lab(clock)
    app.up(ctx, confirm=lambda p: True)
    ctx.sleep = lambda s: (_ for _ in ()).throw(Interrupt()) if clock.now - 1000 >= 300 \
        else clock.sleep(s)
    with pytest.raises(Interrupt):
        wait_phases(ctx, UptimeProbe(ctx, host), signed_in=_signed_in)
    ctx.sleep = clock.sleep
    host._do_vm_stop({"Name": VM, "Lab": ctx.playbook.lab})
    host._do_vm_start({"Name": VM})
    clock.sleep(5)
    events: list = []
    wait_phases(ctx, UptimeProbe(ctx, host), signed_in=_signed_in, progress=events.append)
    assert [e.phase for e in events if e.kind == "resume"] == ["vm-running"]
    inst = next(e for e in events if e.phase == "installer" and e.kind == "done")
    assert INSTALLER_AUTOSELECT <= _parse_up(inst.observed) < INSTALLER_AUTOSELECT + 5
