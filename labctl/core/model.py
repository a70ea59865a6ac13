"""The plan model: plain-data steps, grouped into changes, grouped into a plan.

Providers (Hyper-V, netns twin) read facts, diff them against the playbook and return a
:class:`Plan`. A plan can be printed, serialised to JSON and tested without touching a host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from labctl.core.secrets import MASK, REDACTOR, Secret


def _mask(value: Any) -> Any:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, Mapping):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return REDACTOR.scrub(value)
    return value


@dataclass(frozen=True)
class Step:
    """One action on a host: a PowerShell script with parameters, or a command."""

    resource: str  # "hyperv.vmswitch:Core", "netns.bridge:Core"
    action: str  # create | update | delete | start | stop | ...
    script: str  # PowerShell text, or the command(s) as shell-quoted text
    params: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "powershell"  # powershell | command | http
    description: str = ""
    name: str = ""  # template or operation name, e.g. "vmswitch/create"; safe to log
    requires_vm_off: bool = False

    def masked_params(self) -> dict[str, Any]:
        return {k: _mask(v) for k, v in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "resource": self.resource,
            "action": self.action,
            "script": self.script,
            "params": self.masked_params(),
            "kind": self.kind,
            "name": self.name,
            "description": self.description,
        }
        if self.requires_vm_off:
            d["requires_vm_off"] = True
        return d


@dataclass(frozen=True)
class Change:
    """What must happen to one resource, with the reason; ``steps`` is empty for a noop."""

    resource: str
    action: str  # create | update | delete | replace | noop
    reason: str = ""
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    steps: tuple[Step, ...] = ()

    @property
    def is_noop(self) -> bool:
        return self.action == "noop" or not self.steps

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "action": self.action,
            "reason": self.reason,
            "before": _mask(dict(self.before)) if self.before is not None else None,
            "after": _mask(dict(self.after)) if self.after is not None else None,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass
class Plan:
    provider: str
    lab: str
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[Step]:
        return [s for c in self.changes for s in c.steps]

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if not c.is_noop]

    @property
    def empty(self) -> bool:
        return not self.steps

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "lab": self.lab,
            "empty": self.empty,
            "summary": self.summary(),
            "warnings": [REDACTOR.scrub(w) for w in self.warnings],
            "changes": [c.to_dict() for c in self.changes],
            "steps": [s.to_dict() for s in self.steps],
        }

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.pending:
            out[c.action] = out.get(c.action, 0) + 1
        return out


@dataclass(frozen=True)
class ResourceStatus:
    """Drift of one resource between the playbook and the host."""

    resource: str
    state: str  # ok | missing | drift | unmanaged | running | stopped | failed
    details: tuple[str, ...] = ()

    @property
    def drifted(self) -> bool:
        return self.state not in ("ok", "running")

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "state": self.state, "details": list(self.details)}


ProgressFn = Callable[[Step, int, int], None]


class Provider(Protocol):
    """What the app layer needs from a provider (hyperv, netns).

    The same playbook, the same plan model: ``plan_up`` on a converged lab is empty.
    """

    name: str

    def preflight(self, facts: Any, plan: Plan) -> None:
        """Refuse (PreflightError) before any change. Called after planning, before apply."""

    def read_facts(self) -> Any:
        """Read the host's current state in one batched round trip."""

    def empty_facts(self) -> Any:
        """Facts of an empty host, for ``plan --assume-empty`` (no connection)."""

    def plan_up(self, facts: Any) -> Plan: ...

    def plan_down(self, facts: Any) -> Plan: ...

    def apply(self, plan: Plan, progress: ProgressFn | None = None) -> None: ...

    def status(self, facts: Any) -> list[ResourceStatus]: ...

    def close(self) -> None: ...
