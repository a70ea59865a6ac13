"""One contract for every provider, run against the host it is built for.

Each case is a (provider, host) pair: the Hyper-V provider against the stateful fake Hyper-V
host, the netns provider against real network namespaces (a small twin with a lab name of
its own). A new provider passes this suite by adding one case. The contract:

* its methods have the signatures of :class:`labctl.core.model.Provider`;
* read facts -> ``plan_up`` is not empty -> pre-flight -> apply;
* re-read -> ``plan_up`` is empty (a second ``up`` changes nothing) and ``status`` is all ok;
* ``plan_down`` -> pre-flight -> apply -> re-read: ``plan_down`` is empty (nothing of the lab
  is left) and ``plan_up`` would build it again.
"""

from __future__ import annotations

import inspect
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from labctl.core.model import Plan, Provider, ResourceStatus, Step
from labctl.core.playbook import load_playbook
from labctl.hyperv.provider import HyperVProvider
from labctl.netns.provider import NetnsProvider
from tests.helpers import twin_lab as tl
from tests.helpers.fake_hyperv import FakeHyperVHost
from tests.helpers.hyperv_lab import loaded

PROTOCOL_METHODS = ("preflight", "read_facts", "empty_facts", "plan_up", "plan_down", "apply",
                    "status", "close")

SMALL_TWIN = """\
version: 1
lab: {lab}
provider: netns
switches:
  - name: Core
    type: internal
    host_ip: 10.97.0.1/24
    nat: {{name: Core, prefix: 10.97.0.0/24}}
twin:
  main_lan_router: 10.98.0.1/24
  main_lan_host: 10.98.0.2/24
  wan_router: 198.51.100.2/24
  wan_services: [203.0.113.77/24]
  irc_port: 6697
  devices:
    - {{name: plug, persona: pet-feeder, ip: 10.97.0.11/24, switch: Core}}
"""

Case = Callable[[Path], AbstractContextManager[Provider]]


@contextmanager
def hyperv_on_fake_host(tmp_path: Path) -> Iterator[Provider]:
    provider = HyperVProvider(loaded().model, FakeHyperVHost.reference())
    try:
        yield provider
    finally:
        provider.close()


def _remove_namespaces(lab: str) -> None:
    for ns in tl.lab_namespaces(lab):
        for pid in tl.pids_in(ns):
            subprocess.run(["kill", "-9", str(pid)], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)


@contextmanager
def netns_on_namespaces(tmp_path: Path) -> Iterator[Provider]:
    lab = tl.lab_name("ctr")
    path = tmp_path / f"{lab}.yaml"
    path.write_text(SMALL_TWIN.format(lab=lab))
    provider = NetnsProvider(load_playbook(str(path)), state_dir=tmp_path / "state")
    try:
        yield provider
    finally:
        try:
            down = provider.plan_down(provider.read_facts())
            if not down.blockers:
                provider.apply(down)
        finally:
            provider.close()
            _remove_namespaces(lab)


CASES = [
    pytest.param(hyperv_on_fake_host, id="hyperv-fake-host"),
    pytest.param(netns_on_namespaces, id="netns-namespaces", marks=pytest.mark.netns),
]


def _params(fn: Callable[..., Any]) -> list[tuple[str, Any]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind) for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("case", CASES)
def test_methods_match_the_provider_protocol(case: Case, tmp_path: Path) -> None:
    with case(tmp_path) as provider:
        assert isinstance(provider.name, str) and provider.name
        for method in PROTOCOL_METHODS:
            impl = getattr(type(provider), method, None)
            assert callable(impl), f"{type(provider).__name__} has no {method}()"
            assert _params(impl) == _params(getattr(Provider, method)), method
            want_default = {n: p.default for n, p in
                            inspect.signature(getattr(Provider, method)).parameters.items()}
            got_default = {n: p.default for n, p in inspect.signature(impl).parameters.items()}
            assert got_default == want_default, method


def _apply(provider: Provider, facts: Any, plan: Plan) -> list[Step]:
    provider.preflight(facts, plan)
    seen: list[Step] = []
    provider.apply(plan, lambda step, i, total: seen.append(step))
    return seen


@pytest.mark.parametrize("case", CASES)
def test_up_converges_a_second_up_changes_nothing_and_down_removes_it(
        case: Case, tmp_path: Path) -> None:
    with case(tmp_path) as provider:
        facts = provider.read_facts()
        up = provider.plan_up(facts)
        assert not up.empty and up.pending and not up.blockers
        assert up.to_dict()["steps"], "a plan serialises to plain data"
        applied = _apply(provider, facts, up)
        assert applied == up.steps  # progress saw every step, in order

        facts = provider.read_facts()
        again = provider.plan_up(facts)
        assert again.empty, [c.to_dict() for c in again.pending]
        status: list[ResourceStatus] = provider.status(facts)
        assert status and [s for s in status if s.drifted] == []

        down = provider.plan_down(facts)
        assert not down.empty and not down.blockers
        _apply(provider, facts, down)

        facts = provider.read_facts()
        assert provider.plan_down(facts).empty
        assert not provider.plan_up(facts).empty
