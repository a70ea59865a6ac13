"""A local TCP port forwarded through an SSH host (paramiko ``direct-tcpip``).

``ssh -L 127.0.0.1:<local>:<dest host>:<dest port> user@host``, in process and for one command:
:func:`open_tunnel` logs in to the SSH host (host keys checked, as everywhere in
:mod:`labctl.transport.sshexec`), listens on 127.0.0.1 only, and for each accepted connection
opens one ``direct-tcpip`` channel to the destination *as the SSH host sees it* (the sensor's
management address is reachable from the Hyper-V host, not from the laptop). Bytes are copied
both ways until either side closes.

Bounded on purpose: at most ``max_connections`` forwarded connections at a time (more are
accepted and closed at once), each channel open has the target's timeout, and leaving the
context closes the listener, every channel, every local socket and the SSH login, then joins
the worker threads with a deadline. The listener is never bound to anything but loopback.

paramiko is imported lazily (through :mod:`labctl.transport.sshexec`), so importing this
module is cheap.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labctl.core.errors import TransportError, UsageError
from labctl.core.secrets import REDACTOR, PromptFn
from labctl.transport.sshexec import SshTarget, connect_client

if TYPE_CHECKING:  # pragma: no cover
    import paramiko

    from labctl.core.playbook.hyperv import HyperVHost

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT = 30.0
MAX_CONNECTIONS = 32
_BUF = 65536
_TICK = 0.2  # how often idle loops look at the stop flag
_JOIN = 5.0  # how long close() waits for each worker thread


def host_ssh_target(cfg: HyperVHost, prompt_fn: PromptFn | None = None, *,
                    purpose: str = "to reach the sensor through the host over SSH"
                    ) -> SshTarget:
    """The SSH login to the Hyper-V host from its playbook settings (``hyperv.user``,
    ``ssh_key``, ``ssh_known_hosts``, ``password`` when no key file is set, ``timeout``): the
    one place that builds it, for the ``ssh`` PowerShell transport
    (:class:`labctl.transport.ssh.SshRunner`) and the sensor's tunnel alike. The port is
    ``hyperv.port`` when the transport is ssh, else 22 (a WinRM port is not an SSH port).
    ``purpose`` completes the error when ``hyperv.user`` is missing."""
    if not cfg.user:
        raise UsageError(f"hyperv.user is required {purpose}",
                         hint="set hyperv.user to the Windows account (e.g. LAB\\labadmin)")
    password = None
    if cfg.password is not None and not cfg.ssh_key:
        password = cfg.password.resolve(f"password for {cfg.user}@{cfg.host}", prompt_fn)
    port = (cfg.port or 22) if cfg.transport == "ssh" else 22
    return SshTarget(user=cfg.user, host=cfg.host, port=port, key_filename=cfg.ssh_key,
                     known_hosts=cfg.ssh_known_hosts, password=password,
                     timeout=min(float(cfg.timeout), CONNECT_TIMEOUT))


@dataclass(frozen=True)
class TunnelStats:
    """What the tunnel did, for tests and logs."""

    accepted: int
    forwarded: int
    refused: int


class SshTunnel:
    """One SSH login, one loopback listener, a bounded set of forwarded connections."""

    def __init__(self, target: SshTarget, dest_host: str, dest_port: int, *,
                 local_port: int = 0, max_connections: int = MAX_CONNECTIONS) -> None:
        if not 1 <= dest_port <= 65535 or not 0 <= local_port <= 65535:
            raise UsageError(f"port out of range: {dest_host}:{dest_port} / local {local_port}")
        self.target = target
        self.dest = (dest_host, dest_port)
        self.local_port = local_port
        self.max_connections = max(1, max_connections)
        self._client: paramiko.SSHClient | None = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._open: set[Any] = set()  # live sockets and channels, closed by close()
        self._active = 0
        self._accepted = self._forwarded = self._refused = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Log in, listen on 127.0.0.1, start accepting; returns the local address."""
        self._client = connect_client(self.target)
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind((LOOPBACK, self.local_port))
            lst.listen(self.max_connections)
            lst.settimeout(_TICK)
        except OSError as e:
            lst.close()
            self.close()
            raise TransportError(f"cannot listen on {LOOPBACK}:{self.local_port} for the SSH "
                                 f"tunnel: {e.strerror or e}",
                                 hint="pick another sensor.access.local_port, or 0 for any "
                                      "free port") from None
        self._listener = lst
        t = threading.Thread(target=self._accept_loop, name="labctl-tunnel-accept",
                             daemon=True)
        self._threads.append(t)
        t.start()
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise TransportError("the SSH tunnel is not open")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def probe(self) -> tuple[bool, str]:
        """Whether the destination accepts a TCP connection from the SSH host: one
        ``direct-tcpip`` channel opened and closed at once (nothing is sent on it)."""
        client = self._client
        transport = client.get_transport() if client is not None else None
        where = f"{self.dest[0]}:{self.dest[1]} from {self.target.host}"
        if transport is None or not transport.is_active():
            return False, f"TCP {where}: the SSH login is gone"
        try:
            chan = transport.open_channel("direct-tcpip", self.dest, (LOOPBACK, 0),
                                          timeout=self.target.timeout)
        except Exception as e:  # paramiko's ChannelException (connect refused), SSHException
            return False, REDACTOR.scrub(f"TCP {where}: {e}")
        with suppress(Exception):
            chan.close()
        return True, f"TCP {where}: open"

    @property
    def stats(self) -> TunnelStats:
        with self._lock:
            return TunnelStats(self._accepted, self._forwarded, self._refused)

    def close(self) -> None:
        """Stop accepting, close every channel and socket and the SSH login, join threads.

        Workers close their own channel and socket: a paramiko channel that a worker selects
        on owns a pipe, and closing it from this thread frees the pipe's descriptor numbers
        while the worker may still read them, which can hit whatever socket reuses the
        number next (seen as "Bad file descriptor" in the next SSH login). So this sets the
        stop flag, wakes the workers by shutting their local sockets down (the descriptor
        stays allocated), joins them, and only then closes what is left and the listener."""
        self._stop.set()
        with self._lock:
            live = list(self._open)
        for obj in live:
            if isinstance(obj, socket.socket):
                with suppress(OSError):
                    obj.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(_JOIN)
        self._threads.clear()
        if self._listener is not None:
            with suppress(OSError):
                self._listener.close()
        with self._lock:
            left = list(self._open)
            self._open.clear()
        for obj in left:
            with suppress(Exception):
                obj.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- workers -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        lst = self._listener
        assert lst is not None
        while not self._stop.is_set():
            try:
                conn, peer = lst.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            with self._lock:
                self._accepted += 1
                full = self._active >= self.max_connections
                if not full:
                    self._active += 1
                    self._open.add(conn)
                else:
                    self._refused += 1
                # finished workers leave the list, so it stays bounded too
                self._threads = [t for t in self._threads if t.is_alive()]
            if full:
                log.warning("SSH tunnel: %d connections already open, refusing one more",
                            self.max_connections)
                conn.close()
                continue
            t = threading.Thread(target=self._forward, args=(conn, peer),
                                 name="labctl-tunnel-conn", daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _forward(self, conn: socket.socket, peer: Any) -> None:
        chan: Any = None
        try:
            client = self._client
            transport = client.get_transport() if client is not None else None
            if transport is None or not transport.is_active():
                log.warning("SSH tunnel: the login to %s is gone", self.target.where)
                return
            try:
                chan = transport.open_channel("direct-tcpip", self.dest, peer[:2],
                                              timeout=self.target.timeout)
            except Exception as e:  # paramiko's ChannelException, SSHException, EOFError
                log.warning("SSH tunnel: %s could not open %s:%d: %s", self.target.where,
                            self.dest[0], self.dest[1], REDACTOR.scrub(str(e)))
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self._open.add(chan)
                self._forwarded += 1
            _pump(conn, chan, self._stop)
        finally:
            with self._lock:
                self._active -= 1
                self._open.discard(conn)
                if chan is not None:
                    self._open.discard(chan)
            for obj in (chan, conn):
                if obj is not None:
                    with suppress(Exception):
                        obj.close()


def _pump(conn: socket.socket, chan: Any, stop: threading.Event) -> None:
    """Copy bytes both ways until one side closes or the tunnel stops.

    One thread a direction, each blocking with a short timeout, never ``select`` on the
    channel: ``Channel.fileno()`` makes paramiko create a pipe whose descriptors its
    transport thread may still write to while the channel is being closed, and a freed
    descriptor number is soon another socket's (it broke the next SSH login)."""
    done = threading.Event()

    def down() -> None:  # sensor -> local client
        try:
            chan.settimeout(_TICK)
            while not stop.is_set() and not done.is_set():
                try:
                    data = chan.recv(_BUF)
                except TimeoutError:
                    continue
                except Exception:  # paramiko's socket errors, EOFError
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:
                    return
        finally:
            done.set()
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the other direction

    t = threading.Thread(target=down, name="labctl-tunnel-down", daemon=True)
    t.start()
    try:
        conn.settimeout(_TICK)
        while not stop.is_set() and not done.is_set():
            try:
                data = conn.recv(_BUF)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                chan.sendall(data)
            except Exception:  # paramiko's socket errors
                return
    finally:
        done.set()
        t.join(_JOIN)


@contextmanager
def ssh_through(jump: SshTarget, target: SshTarget) -> Iterator[paramiko.SSHClient]:
    """An SSH login to ``target`` as the ``jump`` host reaches it (``ssh -J``): one
    ``direct-tcpip`` channel from the jump host to ``target.host:target.port`` carries the
    second SSH session. The target's host key is checked under its own name and port (its
    known_hosts entry), never under a local address; both logins close in ``finally``."""
    jump_client = connect_client(jump)
    client: paramiko.SSHClient | None = None
    try:
        transport = jump_client.get_transport()
        if transport is None:  # pragma: no cover - connect_client returns a live client
            raise TransportError(f"the SSH login to {jump.where} is gone")
        try:
            chan = transport.open_channel("direct-tcpip", (target.host, target.port),
                                          (LOOPBACK, 0), timeout=jump.timeout)
        except Exception as e:  # paramiko's ChannelException, SSHException, EOFError
            raise TransportError(
                REDACTOR.scrub(f"{jump.where} could not open a channel to {target.host}:"
                               f"{target.port}: {e}"),
                hint="is the sensor up, and its SSH port reachable from the host?") from None
        client = connect_client(target, sock=chan, look_for_keys=False)
        yield client
    finally:
        if client is not None:
            client.close()
        jump_client.close()


@contextmanager
def open_tunnel(target: SshTarget, dest_host: str, dest_port: int, *, local_port: int = 0,
                max_connections: int = MAX_CONNECTIONS) -> Iterator[SshTunnel]:
    """Forward ``127.0.0.1:<local_port>`` to ``dest_host:dest_port`` through ``target`` for
    the body of the ``with``; everything is closed in ``finally``."""
    tunnel = SshTunnel(target, dest_host, dest_port, local_port=local_port,
                       max_connections=max_connections)
    try:
        tunnel.start()
        log.info("SSH tunnel %s:%d -> %s -> %s:%d open", *tunnel.address, target.where,
                 dest_host, dest_port)
        yield tunnel
    finally:
        tunnel.close()
