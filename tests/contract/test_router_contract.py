"""The router driver contract: every (driver, emulator) pair passes this one suite.

Each pair is a router kind (its driver comes from the registry) and a context manager that
starts that kind's emulator over real HTTPS and says how to reach it, how to make its next
apply fail, and what it holds. Adding a driver is one more entry in ``PAIRS``.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labctl.core.errors import UsageError
from labctl.core.secrets import Secret
from labctl.router.base import DesiredNetwork, RouterDriver, RouterTarget, TransactionFailed
from labctl.router.registry import get_router_driver, router_kinds


@dataclass
class EmulatedRouter:
    """A running emulator, seen from the contract suite."""

    kind: str
    target: RouterTarget
    #: the next apply fails after part of it was written
    fail_next_apply: Callable[[], None]
    #: what the emulator holds now (the settings the driver backs up and restores)
    snapshot: Callable[[], dict[str, str]]
    #: open sessions (0 after the driver closed)
    sessions: Callable[[], int]


@contextmanager
def asus_emulator(tmp: Path) -> Iterator[EmulatedRouter]:
    from labctl.router.asus.emulator import EmulatorServer, RouterEmulator, ensure_certificate

    password = "Contract-Router-Pw-1"
    emulator = RouterEmulator(password=password)
    cert, key = ensure_certificate(tmp / "emulator-cert")
    with EmulatorServer(emulator, "127.0.0.1", 0, https=True, certfile=cert,
                        keyfile=key) as server:
        target = RouterTarget(url=server.url, user="admin", password=Secret(password),
                              kind="asus", pin_store=tmp / "pins.json")
        yield EmulatedRouter(
            kind="asus", target=target,
            fail_next_apply=lambda: emulator.add_fault("apply", "5xx"),
            snapshot=emulator.sdn_snapshot,
            sessions=lambda: len(emulator.sessions))


PAIRS: list[tuple[str, Callable[[Path], AbstractContextManager[EmulatedRouter]]]] = [
    ("asus", asus_emulator),
]
IDS = [kind for kind, _ in PAIRS]

DESIRED = DesiredNetwork(name="Contract", ssid="Contract", passphrase=Secret("Contract-PSK-1"),
                         subnet=ipaddress.IPv4Network("172.16.9.0/24"), vlan=59,
                         dns=(ipaddress.IPv4Address("9.9.9.9"),))


def _protocol_members() -> list[str]:
    names = ["__init__", "__enter__", "__exit__"]
    names += [n for n, v in vars(RouterDriver).items()
              if not n.startswith("_") and (callable(v) or isinstance(v, (property,
                                                                          staticmethod)))]
    return names


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_registered_kind_has_a_pair():
    assert sorted(IDS) == router_kinds()


def test_unknown_kind_is_a_usage_error_listing_the_kinds():
    with pytest.raises(UsageError) as ei:
        get_router_driver("no-such-router")
    assert all(kind in (ei.value.hint or "") for kind in router_kinds())


@pytest.mark.parametrize("kind", IDS)
def test_driver_signatures_match_the_protocol(kind):
    cls = get_router_driver(kind)
    assert cls.kind == kind
    members = _protocol_members()
    assert {"read", "plan_network", "plan_delete", "apply", "networks", "backup", "restore",
            "emulator_process", "open", "close"} <= set(members)
    for name in members:
        want = inspect.getattr_static(RouterDriver, name)
        have = inspect.getattr_static(cls, name)
        assert isinstance(have, property) == isinstance(want, property), name
        assert isinstance(have, staticmethod) == isinstance(want, staticmethod), name
        if isinstance(want, property):
            continue
        assert _params(getattr(cls, name)) == _params(getattr(RouterDriver, name)), name


@pytest.mark.parametrize("kind,emulator", PAIRS, ids=IDS)
def test_emulator_process_names_a_labctl_command(kind, emulator, tmp_path):
    from labctl.core.emulator import EmulatorRequest

    req = EmulatorRequest(listen_ip="192.168.50.1", port=8443, https=True,
                          state_path=tmp_path / "state.json", interfaces={"52": "iot0"},
                          password_env="ROUTER_PW")
    proc = get_router_driver(kind).emulator_process(req)
    assert proc.ready == ("192.168.50.1", 8443)
    assert all(isinstance(a, str) for a in proc.args) and proc.args
    assert str(tmp_path / "state.json") in proc.args


@pytest.mark.parametrize("kind,emulator", PAIRS, ids=IDS)
def test_shared_behaviour_against_the_emulator(kind, emulator, tmp_path):
    with emulator(tmp_path) as router:
        factory = get_router_driver(kind)
        initial = router.snapshot()
        driver = factory(router.target)
        assert isinstance(driver, RouterDriver)
        with driver:
            state = driver.read()
            saved = driver.backup(tmp_path / "backup.json", state=state)
            assert saved.path.exists() and saved.keys > 0
            assert saved.path.stat().st_mode & 0o077 == 0  # it holds secrets
            assert DESIRED.ssid not in [n["name"] for n in driver.networks(state)]

            # plan a new network and apply it: backed up, applied, read back
            edit = driver.plan_network(state, DESIRED)
            assert edit.action == "create" and not edit.empty and edit.diff
            report = driver.apply(edit)
            assert report.applied and report.verified
            assert report.backup_file and Path(report.backup_file).exists()
            assert driver.login_scheme is not None

            # re-read and re-plan: nothing left to do
            state = driver.read()
            again = driver.plan_network(state, DESIRED)
            assert again.empty and again.action == "noop"
            assert DESIRED.ssid in [n["name"] for n in driver.networks(state)]

            # a fault on apply: the backup is restored automatically and verified
            before = router.snapshot()
            edit = driver.plan_network(state, dataclasses.replace(DESIRED, vlan=61))
            assert not edit.empty
            router.fail_next_apply()
            with pytest.raises(TransactionFailed) as ei:
                driver.apply(edit)
            assert ei.value.report.restored and ei.value.report.restore_verified
            assert router.snapshot() == before

            # delete: verified by read-back, the router is as it started
            edit = driver.plan_delete(driver.read(), DESIRED.name)
            assert edit.action == "delete" and edit.before is not None
            report = driver.apply(edit)
            assert report.verified
            assert router.snapshot() == initial
            with pytest.raises(UsageError):
                driver.plan_delete(driver.read(), DESIRED.name)

            # restore: a backup taken before the change puts the router back
            assert driver.apply(driver.plan_network(driver.read(), DESIRED)).verified
            assert router.snapshot() != initial
            assert driver.load_backup(saved.path)
            assert driver.restore(saved.path).verified
            assert router.snapshot() == initial
        # close: logged out
        assert router.sessions() == 0
