"""PowerShell over WinRM with pypsrp: the ``winrm`` transport (the default).

Why these choices:

* ``PowerShell(pool).add_script(body).add_parameters(params)``: values are bound as typed
  parameters by the remote runspace, never spliced into the script text (pypsrp's
  ``Client.execute_ps`` would wrap text in ``Invoke-Expression`` and log the whole script).
* Top-level parameters whose value is ``None`` are not sent (pypsrp would turn them into a
  bare switch); the script's default applies. The SSH/local wrapper does the same.
* One ``RunspacePool`` per runner, opened on the first script and reused for every script of
  a run (a converged ``labctl up`` is one round trip of one script), closed by ``close()``.
* HTTPS on 5986 with the certificate verified by default (``cert_validation=True``, or the CA
  bundle in ``ca_trust_path``). Turning validation off is the playbook author's explicit
  ``cert_validation: false``; labctl never does it on its own.
* Errors are translated at this boundary and name the script and the host:
  pypsrp ``AuthenticationError`` / HTTP 401 / WSMan "access denied" -> :class:`AuthError`;
  requests timeouts -> :class:`ConnectTimeout`; refused, no route, DNS -> :class:`HostUnreachable`;
  TLS verification failures -> :class:`TransportError` with a hint about ``ca_trust_path``;
  PowerShell error records (``had_errors`` / ``streams.error``) -> :class:`RemoteCommandError`
  quoting the remote messages. All text passes through ``REDACTOR``.
* pypsrp logs whole WSMan messages at DEBUG; its loggers are held at INFO (and given the
  redacting filter) so a debug run cannot write serialized parameters to a log.
* ``hyperv.timeout`` bounds each script as a whole (as over SSH): the pipeline is polled with
  a deadline and stopped when it runs out (ConnectTimeout).
* The password reference is resolved on the first ``run()``, not when the runner is built.

pypsrp and requests are imported lazily, inside the methods.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from enum import Enum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from labctl.core.errors import (
    AuthError,
    ConnectTimeout,
    HostUnreachable,
    LabctlError,
    ToolMissingError,
    TransportError,
    UsageError,
)
from labctl.core.secrets import REDACTOR, PromptFn, RedactingFilter
from labctl.transport import pswrap
from labctl.transport.powershell import RenderedScript

if TYPE_CHECKING:  # pragma: no cover
    from labctl.core.playbook.hyperv import HyperVHost

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30
OPERATION_TIMEOUT = 20
_PYPSRP_LOGGERS = ("pypsrp", "pypsrp.wsman", "pypsrp.powershell", "pypsrp.messages",
                   "pypsrp.serializer", "pypsrp.shell", "pypsrp.client", "spnego")


def _quiet_pypsrp_logs() -> None:
    for name in _PYPSRP_LOGGERS:
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level < logging.INFO:
            lg.setLevel(logging.INFO)
        if not any(isinstance(f, RedactingFilter) for f in lg.filters):
            lg.addFilter(RedactingFilter())


def _psrp_value(v: Any) -> Any:
    """Parameters pypsrp can serialize: primitives, lists, dicts; others as their text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, dict):
        return {str(k): _psrp_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_psrp_value(x) for x in v]
    if isinstance(v, Enum):
        return _psrp_value(v.value)
    if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv4Network, ipaddress.IPv4Interface,
                      ipaddress.IPv6Address, ipaddress.IPv6Network, PurePath)):
        return str(v)
    return str(v)


def _bound_params(script: RenderedScript) -> dict[str, Any]:
    """Top-level parameters for ``add_parameters``. A ``None`` value is left out: pypsrp would
    send it as a bare switch (``-Name`` with no value), so the script's default applies instead,
    exactly as over SSH (see :func:`labctl.transport.pswrap.bound_params`)."""
    return {k: _psrp_value(v) for k, v in script.plain_params().items() if v is not None}


def error_record_text(rec: Any) -> str:
    """The human message of a pypsrp ErrorRecord (ErrorDetails first, then ToString)."""
    for attr in ("details_message",):
        val = getattr(rec, attr, None)
        if val:
            return str(val)
    text = str(rec) if rec is not None else ""
    if text and text != "None":
        return text
    exc = getattr(rec, "exception", None)
    props = getattr(exc, "adapted_properties", None) or {}
    if props.get("Message"):
        return str(props["Message"])
    for attr in ("message", "reason", "fq_error"):
        val = getattr(rec, attr, None)
        if val:
            return str(val)
    return "unknown PowerShell error"


class PsrpRunner:
    """Runs rendered scripts over WinRM (PSRP) with one reusable RunspacePool."""

    def __init__(self, cfg: HyperVHost, prompt_fn: PromptFn | None = None) -> None:
        self.cfg = cfg
        self.host = cfg.host
        self.prompt_fn = prompt_fn
        self._wsman: Any = None
        self._pool: Any = None
        self._operation_timeout = OPERATION_TIMEOUT

    @property
    def where(self) -> str:
        scheme = "https" if self.cfg.ssl else "http"
        return f"{scheme}://{self.cfg.host}:{self.cfg.effective_port}"

    def _open_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        try:
            from pypsrp.powershell import RunspacePool
            from pypsrp.wsman import WSMan
        except ImportError as e:  # pragma: no cover - pypsrp is a declared dependency
            raise ToolMissingError(f"pypsrp is not installed ({e})",
                                   hint="pip install 'labctl[winrm]'") from None
        _quiet_pypsrp_logs()
        cfg = self.cfg
        password = None
        if cfg.password is not None:
            password = cfg.password.resolve(f"password for {cfg.user or '?'}@{cfg.host}",
                                            self.prompt_fn)
        cert: bool | str = cfg.cert_validation
        if cfg.ca_trust_path:
            cert = os.path.expanduser(cfg.ca_trust_path)
            if not os.path.exists(cert):
                raise UsageError(f"hyperv.ca_trust_path {cfg.ca_trust_path!r} does not exist",
                                 hint="copy the host's WinRM certificate (PEM) there; "
                                      "see docs/hyperv-host.md")
        # WSMan holds a Receive for up to operation_timeout, so reads must wait longer.
        read_timeout = int(cfg.timeout)
        operation_timeout = max(1, min(OPERATION_TIMEOUT, read_timeout - 3))
        self._operation_timeout = operation_timeout
        try:
            self._wsman = WSMan(
                cfg.host, port=cfg.effective_port, username=cfg.user,
                password=password.reveal() if password is not None else None,
                ssl=cfg.ssl, auth=cfg.auth,
                # pypsrp takes True/False or the path of a CA bundle; its hint says bool only
                cert_validation=cert,  # type: ignore[arg-type]
                connection_timeout=min(int(cfg.timeout), CONNECT_TIMEOUT),
                read_timeout=read_timeout, operation_timeout=operation_timeout,
            )
            pool = RunspacePool(self._wsman)
            pool.open()
        except Exception as e:
            self._wsman = None
            raise self._translate(e) from None
        self._pool = pool
        return pool

    def run(self, script: RenderedScript) -> Any:
        """Run one script; return its single JSON document (parsed)."""
        log.info("run %s on %s (winrm)", script.name, self.host)
        try:
            pool = self._open_pool()
            from pypsrp.powershell import PowerShell

            ps = PowerShell(pool)
            ps.add_script(script.body)
            params = _bound_params(script)
            if params:
                ps.add_parameters(params)
            output = self._invoke(ps, script.name)
        except LabctlError as e:
            raise pswrap.name_script(e, script.name) from None
        except Exception as e:
            err = self._translate(e)
            if isinstance(err, TransportError):
                self._drop_pool()
            raise pswrap.name_script(err, script.name) from None
        errors = list(getattr(ps.streams, "error", None) or [])
        if ps.had_errors or errors:
            msgs = [error_record_text(r) for r in errors] or [
                "the pipeline failed without an error record"]
            raise pswrap.remote_error(script.name, self.host, msgs)
        return pswrap.single_json(script.name, self.host, output or [])

    def _invoke(self, ps: Any, name: str) -> list[Any]:
        """``invoke()`` with a deadline: hyperv.timeout bounds the whole script, as over SSH.

        pypsrp's own ``invoke()`` polls until the pipeline ends, however long that takes; here
        each poll waits at most the time left, and a script still running at the deadline is
        stopped (Ctrl+C signal) and reported as ConnectTimeout.
        """
        from pypsrp.complex_objects import PSInvocationState

        limit = float(self.cfg.timeout)
        deadline = time.monotonic() + limit
        ps.begin_invoke()
        while ps.state == PSInvocationState.RUNNING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                try:
                    ps.stop()
                except Exception as e:  # the pipeline may have ended meanwhile
                    log.debug("stopping %s on %s failed: %s", name, self.host, type(e).__name__)
                raise ConnectTimeout(
                    f"did not finish on {self.where} within {limit:g} s (stopped)",
                    hint="raise hyperv.timeout if this step is expected to be slow (a large "
                         "fixed VHDX can take minutes)")
            ps.poll_invoke(timeout=max(1, min(self._operation_timeout, int(remaining))))
        return list(ps.output)

    def _drop_pool(self) -> None:
        """Forget a pool whose connection broke; the next run() reconnects."""
        self._pool = None
        self._wsman = None

    def close(self) -> None:
        pool, self._pool = self._pool, None
        self._wsman = None
        if pool is not None:
            try:
                pool.close()
            except Exception as e:  # closing a broken pool must not mask the real error
                log.debug("closing the runspace pool on %s failed: %s", self.host,
                          REDACTOR.scrub(type(e).__name__))

    def __enter__(self) -> PsrpRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _translate(self, e: BaseException) -> LabctlError:
        """pypsrp / requests / spnego exceptions -> labctl errors (no secrets, no body)."""
        import requests
        from pypsrp import exceptions as px

        where = self.where
        scrub = REDACTOR.scrub
        if isinstance(e, LabctlError):
            return e
        if isinstance(e, px.AuthenticationError):
            return AuthError(scrub(f"WinRM authentication to {where} failed ({e})"),
                             hint=f"check hyperv.user, the password and auth: {self.cfg.auth}; "
                                  "the account needs to be in Administrators or Remote "
                                  "Management Users")
        if isinstance(e, px.WinRMTransportError):
            if e.code == 401:
                return AuthError(f"WinRM authentication to {where} failed (HTTP 401)",
                                 hint="check hyperv.user, the password and auth")
            body = scrub(str(e.response_text or ""))[:200]
            return TransportError(f"WinRM endpoint {where} answered HTTP {e.code}"
                                  + (f": {body}" if body else ""),
                                  hint="is WinRM listening there (winrm enumerate "
                                       "winrm/config/listener)?")
        if isinstance(e, px.WSManFaultError):
            reason = scrub(str(e.reason or e))
            if e.code == 5 or "access is denied" in reason.lower():
                return AuthError(f"WinRM on {where} denied access: {reason}",
                                 hint="the account needs to be in Administrators or Remote "
                                      "Management Users")
            return TransportError(f"WinRM on {where} returned a fault: {reason}")
        if isinstance(e, requests.exceptions.SSLError):
            return TransportError(
                f"the TLS certificate of {where} could not be verified",
                hint="set hyperv.ca_trust_path to the CA (or certificate) that signed the "
                     "WinRM listener's certificate; see docs/hyperv-host.md")
        if isinstance(e, requests.exceptions.Timeout):
            return ConnectTimeout(f"WinRM endpoint {where} did not answer in time",
                                  hint="check the address and the firewall (TCP "
                                       f"{self.cfg.effective_port}), or raise hyperv.timeout")
        if isinstance(e, requests.exceptions.ConnectionError):
            return HostUnreachable(f"cannot connect to WinRM endpoint {where}",
                                   hint="is the host up, WinRM over HTTPS enabled and TCP "
                                        f"{self.cfg.effective_port} open? "
                                        "See docs/hyperv-host.md")
        if isinstance(e, ImportError):
            return ToolMissingError(f"auth {self.cfg.auth!r} needs an extra package ({e})",
                                    hint="pip install pypsrp[kerberos] or pypsrp[credssp]")
        if isinstance(e, ValueError):
            return UsageError(scrub(f"WinRM settings for {where} are invalid: {e}"),
                              hint="check hyperv.auth, hyperv.ssl and hyperv.user")
        if isinstance(e, px.WinRMError):
            return TransportError(scrub(f"WinRM error talking to {where}: {e}"))
        if isinstance(e, OSError):
            return HostUnreachable(scrub(f"cannot connect to WinRM endpoint {where}: {e}"))
        return TransportError(scrub(f"WinRM error talking to {where}: "
                                    f"{type(e).__name__}: {e}"))
