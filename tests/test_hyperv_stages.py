"""`up`'s stages: a static list run in order; provider first, then router and sensor when
the playbook has the section; one stage with --only; a failing stage is an error, never
"not available"."""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest

from labctl.app import lab as app
from labctl.app import stages as st
from labctl.core.errors import UsageError
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import fake_factory, loaded, reference_data


def _ctx(host, data=None):
    return app.LabContext(loaded=loaded(data), provider_factory=fake_factory(host))


@dataclass(frozen=True)
class FakeRouterStage:
    seen: list
    name: str = "router"

    def applies(self, playbook):
        return playbook.router is not None and playbook.router.iot_network is not None

    def run(self, ctx, *, confirm, dry_run, progress=None):
        self.seen.append(ctx.loaded.model.lab)
        rep = types.SimpleNamespace(applied=True, action="update", changed_keys=["vlan"],
                                    to_dict=lambda: {"action": "update"})
        assert confirm(rep) is True
        return rep


def test_the_stage_list_is_static_and_typed():
    assert st.STAGE_NAMES == ("hyperv", "router", "azure", "sensor")
    for stage in st.STAGES:
        assert callable(stage.applies) and callable(stage.run)


def test_stages_run_in_order_and_later_stages_are_confirmed_by_name():
    host = FakeHyperVHost.reference()
    seen: list = []
    data = reference_data(keep_router=True, keep_sensor=True)
    asked = []
    stages = (st.ProviderStage(), FakeRouterStage(seen))
    res = st.up_stages(_ctx(host, data), confirm=lambda p: True,
                       confirm_stage=lambda name, rep: asked.append(name) or True,
                       stages=stages)
    assert [(r.stage, r.status) for r in res] == [("hyperv", "applied"), ("router", "applied")]
    assert res[1].detail == "update"
    assert seen == ["homelab"] and asked == ["router"]
    assert res[1].to_dict()["report"] == {"action": "update"}


def test_stage_without_section_is_skipped_and_only_runs_one_stage():
    host = FakeHyperVHost.reference()
    res = st.up_stages(_ctx(host), confirm=lambda p: True)
    # azure (a part of sensor:) is left out when the playbook has no sensor.azure
    assert [(r.stage, r.status) for r in res] == [("hyperv", "applied"), ("router", "skipped"),
                                                   ("sensor", "skipped")]
    res = st.up_stages(_ctx(host), only="azure", confirm=lambda p: True)
    assert [(r.stage, r.status) for r in res] == [("azure", "skipped")]
    host.calls.clear()
    res = st.up_stages(_ctx(host), only="router", confirm=lambda p: True)
    assert [(r.stage, r.status) for r in res] == [("router", "skipped")]
    assert host.calls == []
    with pytest.raises(UsageError):
        st.up_stages(_ctx(host), only="bogus", confirm=lambda p: True)


def test_a_failing_stage_is_an_error_not_not_available():
    """The old scaffolding turned a real ImportError into "not available in this build"."""
    host = FakeHyperVHost.reference()

    @dataclass(frozen=True)
    class Broken:
        name: str = "router"

        def applies(self, playbook):
            return True

        def run(self, ctx, *, confirm, dry_run, progress=None):
            raise ImportError("No module named 'labctl.router.missing'")

    with pytest.raises(ImportError):
        st.up_stages(_ctx(host), only="router", confirm=lambda p: True, stages=(Broken(),))
