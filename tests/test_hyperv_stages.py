"""`up`'s stages: provider first, then router and sensor when their modules exist and the
playbook has the section; a missing module is reported, not a crash."""

from __future__ import annotations

import types

from helpers.fake_hyperv import FakeHyperVHost
from helpers.hyperv_lab import fake_factory, loaded, reference_data
from labctl.app import lab as app


def _ctx(host, data=None):
    return app.LabContext(loaded=loaded(data), provider_factory=fake_factory(host))


def test_stages_run_in_order_and_missing_modules_are_reported(monkeypatch):
    host = FakeHyperVHost.reference()
    seen = []

    def fake_stage(ctx, *, confirm):  # no dry_run: only accepted kwargs are passed
        seen.append(ctx.loaded.model.lab)
        rep = types.SimpleNamespace(applied=True, action="update", changed_keys=["vlan"])
        assert confirm(rep) is True
        return rep

    real = app.stage_function
    monkeypatch.setattr(app, "stage_function",
                        lambda s: fake_stage if s == "router" else None)
    data = reference_data(keep_router=True, keep_sensor=True)
    asked = []
    res = app.up_stages(_ctx(host, data), confirm=lambda p: True,
                        confirm_stage=lambda st, rep: asked.append(st) or True)
    assert [(r.stage, r.status) for r in res] == [("hyperv", "applied"), ("router", "applied"),
                                                   ("sensor", "not-available")]
    assert res[2].detail == "not available in this build"
    assert seen == ["homelab"] and asked == ["router"]
    monkeypatch.setattr(app, "stage_function", real)


def test_stage_without_section_is_skipped_and_only_runs_one_stage(monkeypatch):
    host = FakeHyperVHost.reference()
    monkeypatch.setattr(app, "stage_function", lambda s: (lambda ctx, **kw: None))
    res = app.up_stages(_ctx(host), confirm=lambda p: True)
    assert [(r.stage, r.status) for r in res] == [("hyperv", "applied"), ("router", "skipped"),
                                                   ("sensor", "skipped")]
    host.calls.clear()
    res = app.up_stages(_ctx(host), only="router", confirm=lambda p: True)
    assert [(r.stage, r.status) for r in res] == [("router", "skipped")]
    assert host.calls == []


def test_a_module_that_is_absent_is_none():
    assert app.stage_function("sensor") is None or callable(app.stage_function("sensor"))
    monkey = app._STAGE_TARGETS.copy()
    try:
        app._STAGE_TARGETS["sensor"] = ("labctl.app.no_such_module", "x")
        assert app.stage_function("sensor") is None
    finally:
        app._STAGE_TARGETS.clear()
        app._STAGE_TARGETS.update(monkey)
