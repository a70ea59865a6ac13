"""PowerShell over SSH (paramiko) to Windows OpenSSH: the ``ssh`` transport.

Each script runs as ``powershell.exe -NoProfile -NonInteractive -Command -`` on one SSH
connection that is reused for every script of a run. The body and the parameters travel on
stdin as base64 through the fixed wrapper in :mod:`labctl.transport.pswrap`; results and
errors come back as the wrapper's JSON envelope on stdout (see that module for the protocol
and why it was chosen). Host keys are checked (``hyperv.ssh_known_hosts`` or the user's
known_hosts) with paramiko's RejectPolicy; authentication is the key in ``hyperv.ssh_key``, the
SSH agent, or the password reference (resolved only when no key file is configured, and only on
the first script).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from labctl.core.errors import AuthError, LabctlError
from labctl.core.secrets import PromptFn
from labctl.transport import pswrap
from labctl.transport.powershell import RenderedScript
from labctl.transport.sshexec import SshConnection, SshTarget

if TYPE_CHECKING:  # pragma: no cover
    from labctl.core.playbook.hyperv import HyperVHost

log = logging.getLogger(__name__)

POWERSHELL_COMMAND = "powershell.exe " + " ".join(pswrap.POWERSHELL_ARGS)
CONNECT_TIMEOUT = 30.0
WINDOWS_KEYS_HINT = ("; on Windows OpenSSH, keys of administrators are read from "
                     "C:\\ProgramData\\ssh\\administrators_authorized_keys, not the user's "
                     "profile (see docs/hyperv-host.md)")


class SshRunner:
    """Runs rendered scripts on a Windows host through OpenSSH."""

    def __init__(self, cfg: HyperVHost, prompt_fn: PromptFn | None = None) -> None:
        self.cfg = cfg
        self.host = cfg.host
        self.prompt_fn = prompt_fn
        self._conn: SshConnection | None = None

    def _target(self) -> SshTarget:
        from labctl.transport.tunnel import host_ssh_target

        return host_ssh_target(self.cfg, self.prompt_fn, purpose="for the ssh transport")

    def run(self, script: RenderedScript) -> Any:
        """Run one script; return its single JSON document (parsed)."""
        log.info("run %s on %s (ssh)", script.name, self.host)
        data = pswrap.stdin_for(script)
        try:
            if self._conn is None:
                self._conn = SshConnection(self._target())
            rc, out, err = self._conn.exec(POWERSHELL_COMMAND, stdin=data,
                                           timeout=float(self.cfg.timeout))
        except LabctlError as e:
            if isinstance(e, AuthError):
                e.hint = (e.hint or "") + WINDOWS_KEYS_HINT
            raise pswrap.name_script(e, script.name) from None
        return pswrap.parse_result(script.name, self.host, rc, out, err)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SshRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
