"""Run a command on a remote host over SSH (paramiko), with labctl's errors and safe defaults.

This is the generic layer under two users: the SSH PowerShell runner (Windows OpenSSH on the
Hyper-V host, :mod:`labctl.transport.ssh`) and the scanner that runs nmap on a Kali box
(``scanner.spec: ssh://user@host[:port]``).

Why it looks the way it does:

* Host keys are checked. The client uses paramiko's ``RejectPolicy``: a host that is not in
  the known_hosts file (the target's ``known_hosts``, else ``~/.ssh/known_hosts`` and
  ``/etc/ssh/ssh_known_hosts``) is refused with :class:`HostKeyError` and a hint that says
  how to add it. A changed key is refused the same way. Nothing is ever added silently.
* Authentication is key file, agent or password (a :class:`~labctl.core.secrets.Secret`).
  The password is revealed only when handed to paramiko.
* paramiko and socket errors are translated at this boundary into labctl's tree:
  bad credentials -> :class:`AuthError`; refused, no route, DNS failure ->
  :class:`HostUnreachable`; no answer in time (connect or command) -> :class:`ConnectTimeout`;
  anything else from the SSH layer -> :class:`TransportError`. Messages name the user, host and
  port, never the command line (it may carry values) or the password, and pass through the
  process-wide :data:`~labctl.core.secrets.REDACTOR`.
* A command given as a list is joined with :func:`shlex.join`, so each element reaches a POSIX
  remote shell as one word. A string is sent as-is (for Windows hosts, whose default shell is
  cmd.exe, or for callers that built a shell line on purpose).
* stdout and stderr are drained together while stdin is written from a helper thread, so a
  command that produces a lot of output before reading its input cannot deadlock.

paramiko is imported lazily, inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from labctl.core.errors import (
    AuthError,
    ConnectTimeout,
    HostUnreachable,
    TransportError,
    UsageError,
)
from labctl.core.secrets import REDACTOR, Secret
from labctl.core.waiting import WaitTimeout, wait_until

if TYPE_CHECKING:  # pragma: no cover
    import paramiko

log = logging.getLogger(__name__)

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


class HostKeyError(TransportError):
    """The server's host key is unknown or does not match known_hosts; refused on purpose."""


@dataclass(frozen=True)
class SshTarget:
    """Where and how to log in. ``password`` is a Secret so it never prints."""

    user: str
    host: str
    port: int = 22
    key_filename: str | None = None
    known_hosts: str | None = None
    password: Secret | None = field(default=None, repr=False)
    timeout: float = 30.0

    @property
    def where(self) -> str:
        """``user@host:port`` for messages (no secrets, no command)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

    def with_(self, **changes: Any) -> SshTarget:
        return replace(self, **changes)


def parse_ssh_spec(spec: str, *, key_filename: str | None = None,
                   known_hosts: str | None = None, password: Secret | None = None,
                   timeout: float = 30.0) -> SshTarget:
    """Parse ``ssh://user@host[:port]`` (IPv6 as ``ssh://user@[::1]:2222``) into a target."""
    try:
        parts = urlsplit(spec)
        port = parts.port
    except ValueError as e:
        raise UsageError(f"{spec!r} is not a valid ssh:// address ({e})",
                         hint="use ssh://user@host or ssh://user@host:port") from None
    if parts.scheme != "ssh" or not parts.hostname or not parts.username:
        raise UsageError(f"{spec!r} is not a valid ssh:// address",
                         hint="use ssh://user@host or ssh://user@host:port")
    if parts.password is not None:
        raise UsageError("an ssh:// address must not carry a password",
                         hint="use a key (ssh_key) or a password from the environment")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{spec!r} has extra parts after host[:port]",
                         hint="use ssh://user@host or ssh://user@host:port")
    return SshTarget(user=unquote(parts.username), host=parts.hostname, port=port or 22,
                     key_filename=key_filename, known_hosts=known_hosts, password=password,
                     timeout=timeout)


def _scrub(text: str) -> str:
    return REDACTOR.scrub(text)


def _translate_connect_error(target: SshTarget, exc: BaseException) -> TransportError:
    """Turn a paramiko/socket error raised while connecting into a labctl error."""
    import paramiko

    where = target.where
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(
            f"the host key of {where} does not match known_hosts (possible man-in-the-middle, "
            "or the host was reinstalled)",
            hint="if the host really changed, remove the old entry with "
                 f"`ssh-keygen -R {_known_hosts_name(target)}` and re-add the verified key")
    if isinstance(exc, paramiko.AuthenticationException):
        kind = type(exc).__name__
        return AuthError(
            _scrub(f"SSH authentication to {where} failed ({kind}: {exc})"),
            hint="check the user name, the key file (ssh_key) or the password variable; the "
                 "public key must be in the account's authorized_keys")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return HostUnreachable(
            f"cannot connect to {where}: connection refused or no route",
            hint="is the SSH server running and the port open in the firewall?")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ConnectTimeout(
            f"SSH connection to {where} timed out after {target.timeout:g} s",
            hint="check the address, the firewall, or raise the timeout")
    if isinstance(exc, socket.gaierror):
        return HostUnreachable(f"cannot resolve host name {target.host!r} ({exc.strerror})",
                               hint="check the host name or use an IP address")
    if isinstance(exc, ConnectionRefusedError):
        return HostUnreachable(f"connection to {where} refused",
                               hint="is the SSH server running and listening on that port?")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                  errno.ECONNREFUSED, errno.EADDRNOTAVAIL):
        return HostUnreachable(f"cannot reach {where} ({exc.strerror})",
                               hint="check the address and the route to the host")
    if isinstance(exc, paramiko.SSHException):
        msg = str(exc)
        if "not found in known_hosts" in msg:
            return HostKeyError(
                f"the host key of {where} is not in known_hosts; refusing to connect to an "
                "unverified host",
                hint=f"verify the key and add it: `ssh-keyscan -p {target.port} {target.host} "
                     ">> ~/.ssh/known_hosts` (then compare the fingerprint out of band), or set "
                     "the known_hosts file in the playbook (ssh_known_hosts)")
        if "timed out" in msg.lower() or "timeout" in msg.lower():
            return ConnectTimeout(_scrub(f"SSH handshake with {where} timed out: {msg}"),
                                  hint="is this really an SSH server? check the port")
        if "banner" in msg.lower():
            return TransportError(_scrub(f"{where} does not speak SSH ({msg})"),
                                  hint="is this really an SSH server? check the port")
        return TransportError(_scrub(f"SSH error talking to {where}: {msg}"))
    if isinstance(exc, EOFError):
        return TransportError(f"{where} closed the connection during the SSH handshake",
                              hint="is this really an SSH server? check the port")
    if isinstance(exc, OSError):
        return HostUnreachable(_scrub(f"cannot connect to {where}: {exc.strerror or exc}"))
    return TransportError(_scrub(f"SSH connection to {where} failed: {type(exc).__name__}: {exc}"))


def _known_hosts_name(target: SshTarget) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


def _load_host_keys(client: paramiko.SSHClient, target: SshTarget) -> None:
    if target.known_hosts:
        path = os.path.expanduser(target.known_hosts)
        if not os.path.isfile(path):
            raise HostKeyError(f"known_hosts file {target.known_hosts!r} does not exist",
                               hint="create it with the host's verified public key "
                                    "(ssh-keyscan, then compare the fingerprint)")
        try:
            client.load_host_keys(path)
        except (OSError, ValueError) as e:
            raise HostKeyError(f"cannot read known_hosts file {target.known_hosts!r}: {e}") \
                from None
        return
    try:
        client.load_system_host_keys()  # ~/.ssh/known_hosts
    except (OSError, ValueError):  # pragma: no cover - unreadable user file
        log.debug("cannot read ~/.ssh/known_hosts")
    if os.path.isfile(SYSTEM_KNOWN_HOSTS):
        try:
            client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)
        except (OSError, ValueError):  # pragma: no cover
            log.debug("cannot read %s", SYSTEM_KNOWN_HOSTS)


def _quiet_paramiko() -> None:
    """paramiko's transport thread logs handshake failures with a traceback; with no handler
    configured Python would print them on stderr next to labctl's own, clearer error. A
    NullHandler keeps them out of the terminal; they still reach any handler labctl sets up."""
    lg = logging.getLogger("paramiko")
    if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
        lg.addHandler(logging.NullHandler())


def connect_client(target: SshTarget, *, sock: Any = None,
                   look_for_keys: bool | None = None) -> paramiko.SSHClient:
    """Open an authenticated paramiko ``SSHClient`` with host-key checking on.

    ``sock``: an already open socket-like transport to ``target`` (e.g. a ``direct-tcpip``
    channel through a jump host, :func:`labctl.transport.tunnel.ssh_through`) instead of a
    new TCP connection; the host key is still checked under ``target.host:target.port``.
    ``look_for_keys``: try the user's ~/.ssh keys (default: only when neither a key file nor
    a password is given). Errors are translated (:class:`HostKeyError`, AuthError, ...)."""
    import paramiko

    _quiet_paramiko()

    if target.key_filename and not os.path.isfile(os.path.expanduser(target.key_filename)):
        raise UsageError(f"SSH key file {target.key_filename!r} does not exist",
                         hint="point ssh_key at the private key file")
    client = paramiko.SSHClient()
    _load_host_keys(client, target)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = os.path.expanduser(target.key_filename) if target.key_filename else None
    password = target.password.reveal() if target.password is not None else None
    if look_for_keys is None:
        look_for_keys = key is None and password is None
    log.debug("ssh connect %s%s", target.where, " (through a given channel)" if sock else "")
    own = sock is None
    try:
        if own:
            # Our own socket, so TCP_NODELAY is on: SSH's small request/reply packets
            # otherwise meet Nagle + delayed ACK and each handshake round trip can cost ~40 ms.
            sock = socket.create_connection((target.host, target.port),
                                            timeout=target.timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        client.connect(
            target.host, port=target.port, username=target.user, password=password,
            key_filename=key, timeout=target.timeout, banner_timeout=target.timeout,
            auth_timeout=target.timeout, channel_timeout=target.timeout,
            allow_agent=key is None, look_for_keys=look_for_keys,
            sock=sock,
        )
    except Exception as e:  # translated at the boundary
        client.close()
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()
        err = _translate_connect_error(target, e)
        raise err from None
    finally:
        password = None
    return client


class SshConnection:
    """One SSH login reused for several commands (the runner sends one per script)."""

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> paramiko.SSHClient:
        if self._client is not None:
            tr = self._client.get_transport()
            if tr is not None and tr.is_active():
                return self._client
            self._client.close()
            self._client = None
        self._client = connect_client(self.target)
        return self._client

    def exec(self, argv: list[str] | str, stdin: bytes | None = None,
             timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run one command; return ``(returncode, stdout, stderr)``.

        ``timeout`` bounds the whole command (default: the target's timeout); on expiry the
        channel is closed and :class:`ConnectTimeout` is raised. A command killed by a signal
        reports returncode -1.
        """
        import paramiko

        command = argv if isinstance(argv, str) else shlex.join([str(a) for a in argv])
        limit = self.target.timeout if timeout is None else timeout
        with self._lock:
            client = self._ensure()
            transport = client.get_transport()
            assert transport is not None
            try:
                chan = transport.open_session(timeout=self.target.timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                self.close()
                raise TransportError(_scrub(f"cannot open an SSH session on {self.target.where}:"
                                            f" {e}")) from None
            try:
                return _run_channel(chan, command, stdin, limit, self.target)
            finally:
                chan.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_channel(chan: paramiko.Channel, command: str, stdin: bytes | None, limit: float,
                 target: SshTarget) -> tuple[int, bytes, bytes]:
    import paramiko

    deadline = time.monotonic() + limit
    try:
        chan.exec_command(command)
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise TransportError(_scrub(f"{target.where} refused to run the command: {e}")) from None

    writer_error: list[BaseException] = []

    def _write() -> None:
        try:
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException) as e:  # remote closed early
            writer_error.append(e)

    writer = threading.Thread(target=_write, name="sshexec-stdin", daemon=True)
    writer.start()
    out: list[bytes] = []
    err: list[bytes] = []
    chan.fileno()  # make the channel select()-able (covers stdout, stderr and EOF)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            chan.close()
            raise ConnectTimeout(
                f"command on {target.where} did not finish within {limit:g} s",
                hint="the remote command hung or is slow; raise the timeout if it is expected")
        select.select([chan], [], [], min(remaining, 1.0))
        while chan.recv_ready():
            out.append(chan.recv(65536))
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(65536))
        if chan.eof_received and not chan.recv_ready() and not chan.recv_stderr_ready():
            break
        if chan.closed:
            break
    # data that raced with the close/EOF check above
    while chan.recv_ready():
        out.append(chan.recv(65536))
    while chan.recv_stderr_ready():
        err.append(chan.recv_stderr(65536))
    # exit status arrives with or just after EOF
    try:
        wait_until(lambda: chan.exit_status_ready() or chan.closed,
                   timeout=deadline - time.monotonic(), interval=0.005)
    except WaitTimeout:
        pass
    rc = chan.recv_exit_status() if chan.exit_status_ready() else -1
    writer.join(timeout=1.0)
    return rc, b"".join(out), b"".join(err)


def ssh_exec(target: SshTarget, argv: list[str] | str, stdin: bytes | None = None,
             timeout: float | None = None) -> tuple[int, bytes, bytes]:
    """Log in, run one command, log out. Returns ``(returncode, stdout, stderr)``."""
    with SshConnection(target) as conn:
        return conn.exec(argv, stdin=stdin, timeout=timeout)
