"""The plan model: plain-data steps, grouped into changes, grouped into a plan.

Providers (Hyper-V, netns twin) read facts, diff them against the playbook and return a
:class:`Plan`. A plan can be printed, serialised to JSON and tested without touching a host.
A plan also carries its own verdict: the :class:`Blocker`s found while planning, which the
provider's ``preflight`` turns into a PreflightError before anything is changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from labctl.core.secrets import MASK, REDACTOR, Secret


@runtime_checkable
class PlainData(Protocol):
    """A typed value in step parameters (a netns operation) that serialises itself."""

    def to_dict(self) -> dict[str, Any]: ...


class Action(StrEnum):
    """What a change or a step does; the values are the strings plans serialise to."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    REPLACE = "replace"
    START = "start"
    STOP = "stop"
    NOOP = "noop"


class StepKind(StrEnum):
    """How a step runs: a PowerShell script, local commands, or an HTTP call."""

    POWERSHELL = "powershell"
    COMMAND = "command"
    HTTP = "http"


class Ownership(StrEnum):
    """Where a resource stands against the lab, independent of the reason text.

    ``owned``: it exists, carries this lab's marker and matches the playbook;
    ``foreign``: something of that name exists but this lab did not create it (left alone);
    ``drifted``: it is this lab's but differs from the playbook;
    ``absent``: it does not exist yet.
    """

    OWNED = "owned"
    FOREIGN = "foreign"
    DRIFTED = "drifted"
    ABSENT = "absent"


def _mask(value: Any) -> Any:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, PlainData):
        return _mask(value.to_dict())
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
    action: Action
    script: str  # PowerShell text, or the command(s) as shell-quoted text
    params: Mapping[str, Any] = field(default_factory=dict)
    kind: StepKind = StepKind.POWERSHELL
    description: str = ""
    name: str = ""  # template or operation name, e.g. "vmswitch/create"; safe to log
    requires_vm_off: bool = False

    def __post_init__(self) -> None:
        # plain strings are accepted ("create"), stored as the enum member
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "kind", StepKind(self.kind))

    def masked_params(self) -> dict[str, Any]:
        return {k: _mask(v) for k, v in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "resource": self.resource,
            "action": str(self.action),
            "script": self.script,
            "params": self.masked_params(),
            "kind": str(self.kind),
            "name": self.name,
            "description": self.description,
        }
        if self.requires_vm_off:
            d["requires_vm_off"] = True
        return d


def default_ownership(action: Action) -> Ownership:
    """The state a change implies when its planner did not say: a create means the resource
    is absent, a noop that it is owned and in shape, anything else that it drifted."""
    if action is Action.CREATE:
        return Ownership.ABSENT
    if action is Action.NOOP:
        return Ownership.OWNED
    return Ownership.DRIFTED


@dataclass(frozen=True)
class Change:
    """What must happen to one resource, with the reason; ``steps`` is empty for a noop.

    ``state`` is the resource's standing (:class:`Ownership`); when not given it follows
    from ``action`` (:func:`default_ownership`). Planners set ``Ownership.FOREIGN`` for a
    resource they leave alone because this lab does not own it.
    """

    resource: str
    action: Action
    reason: str = ""
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    steps: tuple[Step, ...] = ()
    state: Ownership | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        state = default_ownership(self.action) if self.state is None else Ownership(self.state)
        object.__setattr__(self, "state", state)

    @property
    def is_noop(self) -> bool:
        return self.action is Action.NOOP or not self.steps

    @property
    def foreign(self) -> bool:
        """True when the resource exists but is not this lab's (left alone)."""
        return self.state is Ownership.FOREIGN

    def to_dict(self) -> dict[str, Any]:
        return {
            "resource": self.resource,
            "action": str(self.action),
            "reason": self.reason,
            "state": str(self.state),
            "before": _mask(dict(self.before)) if self.before is not None else None,
            "after": _mask(dict(self.after)) if self.after is not None else None,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(frozen=True)
class Blocker:
    """A reason the plan must not be applied, found while planning: what, and what to do."""

    message: str
    hint: str

    def to_dict(self) -> dict[str, str]:
        return {"message": REDACTOR.scrub(self.message), "hint": REDACTOR.scrub(self.hint)}


@dataclass
class Plan:
    provider: str
    lab: str
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: checked by the provider when it planned; ``preflight`` refuses a plan that has any
    blockers: list[Blocker] = field(default_factory=list)

    @property
    def steps(self) -> list[Step]:
        return [s for c in self.changes for s in c.steps]

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if not c.is_noop]

    @property
    def empty(self) -> bool:
        return not self.steps

    def block(self, message: str, hint: str) -> None:
        self.blockers.append(Blocker(message, hint))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "provider": self.provider,
            "lab": self.lab,
            "empty": self.empty,
            "summary": self.summary(),
            "warnings": [REDACTOR.scrub(w) for w in self.warnings],
            "changes": [c.to_dict() for c in self.changes],
            "steps": [s.to_dict() for s in self.steps],
        }
        if self.blockers:
            d["blockers"] = [b.to_dict() for b in self.blockers]
        return d

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.pending:
            out[str(c.action)] = out.get(str(c.action), 0) + 1
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
