"""PowerShell on this machine: the ``local`` transport (labctl runs on the Hyper-V host).

The same stdin protocol as SSH (:mod:`labctl.transport.pswrap`): ``powershell.exe
-NoProfile -NonInteractive -Command -`` started with a list argv (no shell), the wrapper line
on stdin, the JSON envelope on stdout. On Windows the program is ``powershell.exe`` from PATH.
Elsewhere there is no Windows PowerShell, so the runner refuses with a PreflightError unless
``LABCTL_POWERSHELL`` names a program to use instead (tests point it at a stand-in; it could
also be a PowerShell 7 ``pwsh``, which speaks the same protocol).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from labctl.core.errors import ConnectTimeout, PreflightError, ToolMissingError
from labctl.transport import pswrap
from labctl.transport.powershell import RenderedScript

if TYPE_CHECKING:  # pragma: no cover
    from labctl.core.playbook.hyperv import HyperVHost

log = logging.getLogger(__name__)

ENV_PROGRAM = "LABCTL_POWERSHELL"


def powershell_program() -> str:
    """The program to start: ``$LABCTL_POWERSHELL``, else powershell.exe on Windows."""
    override = os.environ.get(ENV_PROGRAM)
    if override:
        found = shutil.which(override) or (override if os.path.isfile(override) else None)
        if not found:
            raise ToolMissingError(f"{ENV_PROGRAM}={override!r} is not an executable program",
                                   hint=f"point {ENV_PROGRAM} at powershell.exe or pwsh")
        return found
    if sys.platform != "win32":
        raise PreflightError(
            "the local transport runs Windows PowerShell, and this is not Windows",
            hint="run labctl on the Hyper-V host, use transport: winrm or ssh, or set "
                 f"{ENV_PROGRAM} to a PowerShell program")
    found = shutil.which("powershell.exe") or shutil.which("powershell")
    if not found:
        raise ToolMissingError("powershell.exe was not found on PATH",
                               hint="Windows PowerShell 5.1 ships with Windows Server; check PATH")
    return found


class LocalRunner:
    """Runs rendered scripts with a local PowerShell process per script."""

    def __init__(self, cfg: HyperVHost | None = None, timeout: float | None = None) -> None:
        self.cfg = cfg
        self.host = cfg.host if cfg is not None else "localhost"
        self.timeout = float(timeout if timeout is not None else (cfg.timeout if cfg else 120))

    def run(self, script: RenderedScript) -> Any:
        """Run one script; return its single JSON document (parsed)."""
        program = powershell_program()
        log.info("run %s on %s (local)", script.name, self.host)
        argv = [program, *pswrap.POWERSHELL_ARGS]
        try:
            proc = subprocess.run(argv, input=pswrap.stdin_for(script), capture_output=True,
                                  timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ConnectTimeout(f"{script.name}: local PowerShell did not finish within "
                                 f"{self.timeout:g} s",
                                 hint="raise hyperv.timeout if the step is expected to be slow") \
                from None
        except OSError as e:
            raise ToolMissingError(f"{script.name}: cannot start {program}: {e.strerror or e}",
                                   hint=f"check {ENV_PROGRAM} or PATH") from None
        return pswrap.parse_result(script.name, self.host, proc.returncode, proc.stdout,
                                   proc.stderr)

    def close(self) -> None:
        """Nothing to release: each script is its own process."""

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
