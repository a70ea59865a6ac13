"""A throwaway OpenSSH server on 127.0.0.1 for tests (real sshd, real keys, real shell).

Usage::

    from tests.helpers.sshd import sshd_server          # or the `sshd` fixture below

    with sshd_server(tmp_path / "sshd") as srv:
        target = srv.target()                     # labctl.transport.sshexec.SshTarget
        rc, out, err = ssh_exec(target, ["echo", "hi"])
        srv.commands()                            # every command line the server was asked to run

What it does, and why:

* generates an ed25519 host key and an ed25519 client key in a temp dir, writes
  ``authorized_keys`` (the client key plus any extra public keys you pass) and a
  ``known_hosts`` line ``[127.0.0.1]:<port> ...`` for the host key, so host-key checking stays on
  in tests exactly as in production;
* runs ``/usr/sbin/sshd -D -e -f <tmp config>`` on a free high port, as the current user by
  default (root on CI): no PAM, ``StrictModes no``, only this user allowed;
* every session goes through a small dispatcher (``ForceCommand``) that records the exact
  command line (``SSH_ORIGINAL_COMMAND``) as a JSON line in ``commands.jsonl`` and then runs it
  with the real ``/bin/sh -c`` -- except, when ``powershell_standin`` is given, a command whose
  first word is ``powershell.exe`` runs that stand-in program instead (Windows OpenSSH is
  emulated that way; the stand-in sees the original command in ``SSH_ORIGINAL_COMMAND``);
* ``stop()`` (or leaving the context) ends sshd and every process it started (sessions and
  the commands they run, found through /proc parent links, since sessions call setsid()).

Only loopback is used; nothing leaves the machine.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SSHD = "/usr/sbin/sshd"

_DISPATCH = r'''
import json, os, sys
HERE = {here!r}
STANDIN = {standin!r}
PY = {py!r}
os.environ["LABCTL_SSHD_TOKEN"] = {token!r}  # lets stop() find orphaned commands
cmd = os.environ.get("SSH_ORIGINAL_COMMAND")
with open(os.path.join(HERE, "commands.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({{"command": cmd, "user": os.environ.get("USER")}}) + "\n")
if cmd is None:
    sys.stderr.write("interactive shells are not supported by the test sshd\n")
    sys.exit(1)
first = cmd.split(None, 1)[0] if cmd.strip() else ""
if STANDIN and first.lower() in ("powershell.exe", "powershell"):
    os.environ["LABCTL_SSHD_DIR"] = HERE
    os.execv(PY, [PY, STANDIN])
os.execv("/bin/sh", ["/bin/sh", "-c", cmd])
'''


@dataclass
class SshdServer:
    """A running throwaway sshd. Paths are absolute; ``port`` is the real listening port."""

    host: str
    port: int
    user: str
    key_path: Path  # the client's private key (authorized on the server)
    known_hosts: Path  # contains the server's host key for [host]:port
    host_key_pub: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    token: str = field(default="", repr=False)  # in the environment of every session command

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def standin_calls(self) -> list[dict[str, Any]]:
        """What the powershell.exe stand-in received (argv, stdin, decoded body/params)."""
        p = self.directory / "standin.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line]

    def commands(self) -> list[str]:
        """Every command line sessions asked for, in order."""
        p = self.directory / "commands.jsonl"
        if not p.exists():
            return []
        return [json.loads(line)["command"] for line in p.read_text().splitlines() if line]

    def target(self, **overrides: Any):
        """An :class:`labctl.transport.sshexec.SshTarget` that logs in with the client key."""
        from labctl.transport.sshexec import SshTarget

        kw: dict[str, Any] = dict(user=self.user, host=self.host, port=self.port,
                                  key_filename=str(self.key_path),
                                  known_hosts=str(self.known_hosts), timeout=10.0)
        kw.update(overrides)
        return SshTarget(**kw)

    @property
    def spec(self) -> str:
        """``ssh://user@127.0.0.1:port`` (the scanner's spec form)."""
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop sshd and every process it started (connections, sessions, their commands).

        sshd's session children call setsid(), so a process group would not reach them; they
        are found by walking the parent links in /proc from sshd's pid, and -- for commands
        orphaned when their connection closed -- by this server's token in their environment."""
        if self.proc is None:
            return
        for pid in _descendants(self.proc.pid) + _with_token(self.token):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


def _descendants(root: int) -> list[int]:
    """Pids of every live descendant of ``root`` (deepest first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out[::-1]


def _with_token(token: str) -> list[int]:
    """Pids whose environment carries ``LABCTL_SSHD_TOKEN=<token>`` (only our sessions)."""
    if not token:
        return []
    needle = f"LABCTL_SSHD_TOKEN={token}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def keygen(path: Path, comment: str = "labctl-test") -> Path:
    """Create an unencrypted ed25519 key pair at ``path`` (and ``path.pub``)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_banner(host: str, port: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.settimeout(1.0)
                if s.recv(64).startswith(b"SSH-2.0"):
                    return True
        except OSError:
            time.sleep(0.02)
    return False


def start_sshd(directory: Path, *, user: str | None = None,
               extra_authorized_keys: list[str] | tuple[str, ...] = (),
               powershell_standin: Path | str | None = None, password_auth: bool = False,
               host: str = "127.0.0.1", client_key: Path | str | None = None,
               setenv: dict[str, str] | None = None) -> SshdServer:
    """Start sshd (see module docstring). Call ``stop()`` when done, or use :func:`sshd_server`.

    ``client_key``: use this existing private key (with ``<key>.pub`` beside it) instead of
    generating one. ``setenv``: extra environment for every session (sshd ``SetEnv``).
    """
    if not os.path.exists(SSHD):
        pytest.skip("openssh-server (/usr/sbin/sshd) is not installed")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    user = user or getpass.getuser()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    host_key = keygen(directory / "ssh_host_ed25519_key", "labctl-test-host")
    if client_key is None:
        client_key = keygen(directory / "client_ed25519", "labctl-test-client")
    client_key = Path(client_key).resolve()
    pub = Path(f"{client_key}.pub").read_text().strip()
    (directory / "authorized_keys").write_text("\n".join([pub, *extra_authorized_keys]) + "\n")
    host_key_pub = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
    standin = str(Path(powershell_standin).resolve()) if powershell_standin else ""
    dispatch = directory / "dispatch.py"
    token = secrets.token_hex(12)
    dispatch.write_text(_DISPATCH.format(here=str(directory), standin=standin,
                                         py=sys.executable, token=token))
    env_lines = "".join(f'SetEnv {k}="{v}"\n' for k, v in (setenv or {}).items())
    log_path = directory / "sshd.log"
    last_log = ""
    for _attempt in range(4):
        port = free_port()
        config = directory / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {port}
            ListenAddress {host}
            HostKey {host_key}
            PidFile none
            AuthorizedKeysFile {directory}/authorized_keys
            PubkeyAuthentication yes
            PasswordAuthentication {"yes" if password_auth else "no"}
            KbdInteractiveAuthentication no
            PermitRootLogin {"yes" if password_auth else "prohibit-password"}
            PermitEmptyPasswords no
            StrictModes no
            UsePAM no
            AllowUsers {user}
            ForceCommand {sys.executable} -S {dispatch}
            PrintMotd no
            MaxStartups 100
            MaxSessions 50
            MaxAuthTries 6
            LoginGraceTime 20
            LogLevel VERBOSE
            """) + env_lines)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if _wait_banner(host, port, proc, time.monotonic() + 10):
            known = directory / "known_hosts"
            known.write_text(f"[{host}]:{port} {host_key_pub}\n")
            return SshdServer(host=host, port=port, user=user, key_path=client_key,
                              known_hosts=known, host_key_pub=host_key_pub,
                              directory=directory, proc=proc, token=token)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        last_log = log_path.read_text(errors="replace")
    raise RuntimeError(f"sshd did not start:\n{last_log[-2000:]}")


@contextmanager
def sshd_server(directory: Path, **kwargs: Any) -> Iterator[SshdServer]:
    """Context manager around :func:`start_sshd` that always stops the server."""
    srv = start_sshd(directory, **kwargs)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshdServer]:
    """A throwaway sshd for the current user, running the real shell for commands."""
    with sshd_server(tmp_path / "sshd") as srv:
        yield srv
