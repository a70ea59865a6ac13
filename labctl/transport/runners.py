"""Pick the PowerShell transport a playbook's ``hyperv:`` section asks for.

Drivers never import pypsrp or paramiko themselves: they call :func:`make_runner` and get an
object that satisfies :class:`labctl.transport.powershell.PowerShellRunner`. Constructing a
runner neither connects nor resolves the password; both happen on the first ``run()``, so
``labctl plan --assume-empty`` and ``--help`` never touch the network or prompt, and the heavy
third-party imports stay out of the CLI's start-up path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labctl.core.errors import UsageError
from labctl.core.secrets import PromptFn

if TYPE_CHECKING:  # pragma: no cover - typing only
    from labctl.core.playbook.hyperv import HyperVHost
    from labctl.transport.powershell import PowerShellRunner


def make_runner(cfg: HyperVHost, prompt_fn: PromptFn | None = None) -> PowerShellRunner:
    """Return the runner for ``cfg.transport``: winrm -> PsrpRunner, ssh -> SshRunner,
    local -> LocalRunner. Nothing is contacted until the first ``run()``."""
    if cfg.transport == "winrm":
        from labctl.transport.psrp import PsrpRunner

        return PsrpRunner(cfg, prompt_fn=prompt_fn)
    if cfg.transport == "ssh":
        from labctl.transport.ssh import SshRunner

        return SshRunner(cfg, prompt_fn=prompt_fn)
    if cfg.transport == "local":
        from labctl.transport.local import LocalRunner

        return LocalRunner(cfg)
    raise UsageError(f"unknown hyperv.transport {cfg.transport!r}",
                     hint="use winrm, ssh or local")
