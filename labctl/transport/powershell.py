"""The PowerShell contract shared by every transport (WinRM/pypsrp, SSH/paramiko, local).

A driver sends a :class:`RenderedScript`: the template's name, its body (structure only),
and the parameters as a mapping. Values never appear in the body. Each script prints exactly
one JSON document, which the runner parses and returns. Only ``name`` is ever logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from labctl.core.secrets import Secret


@dataclass(frozen=True)
class RenderedScript:
    name: str  # e.g. "facts/read", "vmswitch/create"
    body: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def plain_params(self) -> dict[str, Any]:
        """Parameters with secrets revealed: only for handing to the transport."""
        return {k: _reveal(v) for k, v in self.params.items()}


def _reveal(v: Any) -> Any:
    if isinstance(v, Secret):
        return v.reveal()
    if isinstance(v, Mapping):
        return {k: _reveal(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_reveal(x) for x in v]
    return v


class PowerShellRunner(Protocol):
    """Runs one script on a host and returns its parsed JSON output.

    Raises AuthError / ConnectTimeout / HostUnreachable (TransportError) when the host cannot
    be reached, and RemoteCommandError(script name, messages) for PowerShell error records.
    """

    host: str

    def run(self, script: RenderedScript) -> Any: ...

    def close(self) -> None: ...
