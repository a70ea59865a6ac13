"""One exception root for labctl, with a hint and an exit code.

Third-party errors (pypsrp, paramiko, requests, OSError from subprocess) are translated
into these at the boundary where they are raised, never subclassed.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (docs/exit-codes.md); each is pinned by a test."""

    OK = 0
    ERROR = 1  # a failure while doing the work (remote command failed, API error)
    USAGE = 2  # bad input: command line, playbook, profile. Nothing was contacted or changed.
    CHANGES_PENDING = 3  # `plan --exit-code` and the plan is not empty
    DRIFT = 4  # state differs from what was expected (status drift, no convergence, scan diff)
    UNREACHABLE = 5  # could not connect or authenticate (host, router, sensor)
    PRECONDITION = 6  # a pre-flight check refused the change before anything was touched
    INTERRUPTED = 130


class LabctlError(Exception):
    """Root of every error labctl raises on purpose."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
        }


class UsageError(LabctlError):
    """Bad input on the command line or in a data file."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A data file (playbook, profile, rule) is invalid. Names the file, key path and line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = str(file)
            if line:
                where += f":{line}"
        if key:
            where = f"{where}: {key}" if where else key
        full = f"{where}: {message}" if where else message
        super().__init__(full, hint)
        self.file = file
        self.key = key
        self.line = line
        self.reason = message


class ScopeError(UsageError):
    """A scan target lies outside the lab; refused before a packet is sent."""


class PreflightError(LabctlError):
    """A pre-flight check refused the change; nothing was modified."""

    exit_code = ExitCode.PRECONDITION


class ToolMissingError(PreflightError):
    """A required program is not installed."""


class TemplateError(LabctlError):
    """A template failed to render (a bug in labctl or its assets)."""


class TransportError(LabctlError):
    """Could not reach or talk to a remote endpoint."""

    exit_code = ExitCode.UNREACHABLE


class AuthError(TransportError):
    """The remote side refused our credentials."""


class ConnectTimeout(TransportError):
    """The remote side did not answer in time."""


class HostUnreachable(TransportError):
    """The remote host could not be reached."""


class LockedOutError(AuthError):
    """The device locked the account; do not retry until the lock expires."""

    def __init__(self, message: str, remaining_seconds: int | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.remaining_seconds = remaining_seconds


class RemoteCommandError(LabctlError):
    """A remote script ran and reported errors (PowerShell error records, non-zero exit)."""

    def __init__(self, script: str, errors: list[str], hint: str | None = None) -> None:
        quoted = "; ".join(e.strip() for e in errors if e and e.strip()) or "no message"
        super().__init__(f"{script} failed: {quoted}", hint)
        self.script = script
        self.errors = errors


class CommandError(LabctlError):
    """A local program exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str, hint: str | None = None):
        msg = f"{' '.join(argv)} exited {returncode}"
        if stderr.strip():
            msg += f": {stderr.strip()[-500:]}"
        super().__init__(msg, hint)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class ApiError(LabctlError):
    """An HTTP API answered with an error."""

    def __init__(self, message: str, status: int | None = None, endpoint: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        self.endpoint = endpoint


class UnsupportedError(LabctlError):
    """The device or service does not offer what was asked (for example a flow API on a
    real Defender for IoT sensor). Callers that have a fallback catch it."""

    exit_code = ExitCode.PRECONDITION


class ConvergenceError(LabctlError):
    """After applying, the re-read state still differs from the desired state."""

    exit_code = ExitCode.DRIFT


class DriftError(LabctlError):
    """Observed state differs from the expected state (status, scan diff, verify)."""

    exit_code = ExitCode.DRIFT


class Interrupted(LabctlError):
    exit_code = ExitCode.INTERRUPTED
