"""Helpers for the Hyper-V tests: a trimmed reference playbook and a provider factory that
puts a FakeHyperVHost behind HyperVProvider (no network, no secrets needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from labctl.core.playbook import LoadedPlaybook, parse_playbook
from labctl.core.yamlfile import parse_yaml
from tests.helpers.fake_hyperv import FakeHyperVHost

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "playbooks" / "home-lab.yaml"


def reference_data(*, keep_router: bool = False, keep_sensor: bool = False) -> dict[str, Any]:
    """The reference playbook as data. Router/sensor/scanner sections are dropped by default
    so `up` in a test never reaches for the (real) router or sensor."""
    data = yaml.safe_load(REFERENCE.read_text())
    if not keep_router:
        data.pop("router", None)
    if not keep_sensor:
        data.pop("sensor", None)
    data.pop("scanner", None)
    return data


def write_playbook(tmp_path: Path, data: dict[str, Any] | None = None,
                   name: str = "lab.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data if data is not None else reference_data(),
                                sort_keys=False))
    return p


def loaded(data: dict[str, Any] | None = None) -> LoadedPlaybook:
    text = yaml.safe_dump(data if data is not None else reference_data(), sort_keys=False)
    return parse_playbook(parse_yaml(text, "lab.yaml"))


def fake_factory(host: FakeHyperVHost, secret_env: str | None = None):
    """A LabContext.provider_factory building HyperVProvider over ``host``.

    With ``secret_env``, the factory resolves the playbook's WinRM password the way a real
    runner would (so a canary value is a registered Secret) and lets the fake echo it in
    its error messages, as a sloppy remote library might.
    """
    from labctl.hyperv.provider import HyperVProvider

    def factory(ctx):
        pb = ctx.loaded.model
        if secret_env is not None and pb.hyperv and pb.hyperv.password:
            secret = pb.hyperv.password.resolve("WinRM password", prompt_fn=ctx.prompt_fn)
            host.leak_in_errors = secret.reveal()
        return HyperVProvider(pb, host)

    return factory
