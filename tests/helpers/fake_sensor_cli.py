"""A stateful stand-in for a D4IoT OT sensor's admin CLI over SSH, on 127.0.0.1.

A paramiko ``ServerInterface`` that accepts the admin password, refuses ``exec`` requests
(the admin CLI is an interactive program, not a POSIX shell) and, on an interactive shell
with a PTY, prints a prompt ``shell> ``, echoes what it is sent as a terminal would, and
answers the documented commands with the outputs Microsoft documents ("CLI command reference
from OT network sensors", cli-ot-sensor.md, ms.date 12/19/2023):

- ``system version``: ``Version: 22.2.5.9-r-2121448``;
- ``system sanity``: the thirteen ``[+] <service> | Running for <uptime>`` lines and
  ``System is UP! (medium)``;
- ``network list``: the documented ``ifconfig`` blocks (``adiot0`` with PROMISC, ``eth0``,
  ``lo``), whose RX counters move as this fake's state says: the monitor interface gains
  ``mirror_rate`` packets per listing (0: a dead mirror).

ASSUMPTIONS, not documented by Microsoft (marked where they are used):

- the text before the first prompt: Debian's default motd ``uname -snrvm`` line (Debian's
  ``/etc/update-motd.d/10-uname``); whether the sensor's sshd prints it is not documented;
- the answer to an unknown command.

Faults: ``services_down`` (names shown as ``[-] <name> | Stopped``, plus no ``System is
UP!``), ``promisc`` False (no PROMISC flag), ``hang_on`` (a command that never returns its
prompt), ``drop_on`` (a command after which the session closes), ``motd`` False.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

PROMPT = "shell> "

DOCUMENTED_VERSION = "Version: 22.2.5.9-r-2121448"
SERVICES = [
    ("C-Cabra Engine", "17:26:30.191945"), ("Cache Layer", "17:26:32.352745"),
    ("Core API", "17:26:28"), ("Health Monitor", "17:26:28"),
    ("Horizon Agent 1", "17:26:27"), ("Horizon Parser", "17:26:30.183145"),
    ("Network Processor", "17:26:27"), ("Persistence Layer", "17:26:33.577045"),
    ("Profiling Service", "17:26:34.105745"), ("Traffic Monitor", "17:26:30.345145"),
    ("Upload Manager Service", "17:26:31.514645"), ("Watch Dog", "17:26:30"),
    ("Web Apps", "17:26:30"),
]


@dataclass
class FakeSensorCli:
    password: str = "Sens0r!Passw0rd"
    user: str = "admin"
    version_line: str = DOCUMENTED_VERSION
    profile: str = "medium"
    services_down: tuple[str, ...] = ()
    promisc: bool = True
    mirror_rate: int = 1500
    #: ASSUMPTION: the Debian motd line; release and package version of a Bullseye kernel
    motd: bool = True
    kernel_release: str = "5.10.0-20-amd64"
    kernel_package: str = "5.10.158-2"
    hang_on: str | None = None
    drop_on: str | None = None
    # state
    rx_packets: int = 2589575
    commands: list[str] = field(default_factory=list)
    exec_requests: list[str] = field(default_factory=list)
    logins: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    _key: Any = None
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _transports: list[Any] = field(default_factory=list)

    # -- the documented outputs -----------------------------------------------------------
    def banner(self) -> str:
        if not self.motd:
            return ""
        # ASSUMPTION: Debian's default motd (uname -snrvm), not documented for the sensor.
        return (f"Linux D4Iot {self.kernel_release} #1 SMP Debian {self.kernel_package} "
                "(2022-12-13) x86_64\r\n\r\n")

    def sanity(self) -> str:
        lines = []
        for name, up in SERVICES:
            if name in self.services_down:
                lines.append(f"[-] {name} | Stopped")
            else:
                lines.append(f"[+] {name} | Running for {up}")
        if not self.services_down:
            lines += ["", f"System is UP! ({self.profile})"]
        return "\r\n".join(lines)

    def network_list(self) -> str:
        self.rx_packets += self.mirror_rate
        flags = ("4419<UP,BROADCAST,RUNNING,PROMISC,MULTICAST>" if self.promisc
                 else "4163<UP,BROADCAST,RUNNING,MULTICAST>")
        rx_bytes = self.rx_packets * 285
        return "\r\n".join([
            f"adiot0: flags={flags}  mtu 4096",
            "        ether be:b1:01:1f:91:88  txqueuelen 1000  (Ethernet)",
            f"        RX packets {self.rx_packets}  bytes {rx_bytes} ({rx_bytes / 1e6:.1f} MB)",
            "        RX errors 0  dropped 0  overruns 0  frame 0",
            "        TX packets 1  bytes 90 (90.0 B)",
            "        TX errors 0  dropped 0 overruns 0  carrier 0  collisions 0",
            "",
            "eth0: flags=4163<UP,BROADCAST,RUNNING,MULTICAST>  mtu 1500",
            "        inet 172.18.0.2  netmask 255.255.0.0  broadcast 172.18.255.255",
            "        ether 02:42:ac:12:00:02  txqueuelen 0  (Ethernet)",
            "        RX packets 22419372  bytes 5757035946 (5.7 GB)",
            "        RX errors 0  dropped 0  overruns 0  frame 0",
            "        TX packets 23078301  bytes 2544599581 (2.5 GB)",
            "        TX errors 0  dropped 0 overruns 0  carrier 0  collisions 0",
            "",
            "lo: flags=73<UP,LOOPBACK,RUNNING>  mtu 65536",
            "        inet 127.0.0.1  netmask 255.0.0.0",
            "        loop  txqueuelen 1000  (Local Loopback)",
            "        RX packets 837196  bytes 259542408 (259.5 MB)",
            "        RX errors 0  dropped 0  overruns 0  frame 0",
            "        TX packets 837196  bytes 259542408 (259.5 MB)",
            "        TX errors 0  dropped 0 overruns 0  carrier 0  collisions 0",
            "",
        ])

    def answer(self, command: str) -> str:
        if command == "system version":
            return self.version_line
        if command == "system sanity":
            return self.sanity()
        if command == "network list":
            return self.network_list()
        if not command:
            return ""
        # ASSUMPTION: the admin CLI's answer to an unknown command is not documented.
        return f"Unknown command: {command}"

    # -- server ----------------------------------------------------------------------------
    def start(self) -> FakeSensorCli:
        self._key = paramiko.RSAKey.generate(2048)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, 0))
        s.listen(8)
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept, daemon=True)
        self._threads.append(t)
        t.start()
        return self

    def write_known_hosts(self, path: Path) -> Path:
        path.write_text(f"[{self.host}]:{self.port} {self._key.get_name()} "
                        f"{self._key.get_base64()}\n")
        return path

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for tr in self._transports:
            tr.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FakeSensorCli:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(1000):  # bounded: a test opens a handful of sessions
            if self._stop.is_set():
                return
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._session, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _session(self, conn: socket.socket) -> None:
        tr = paramiko.Transport(conn)
        self._transports.append(tr)
        tr.add_server_key(self._key)
        iface = _Iface(self)
        try:
            tr.start_server(server=iface)
        except (paramiko.SSHException, EOFError, OSError):
            return
        chan = tr.accept(10)
        if chan is None:
            tr.close()
            return
        if not iface.shell.wait(10):
            chan.close()
            tr.close()
            return
        try:
            self._repl(chan)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            with contextlib.suppress(Exception):  # the client may be gone already
                chan.close()
            tr.close()

    def _repl(self, chan: Any) -> None:
        self.logins += 1
        chan.sendall((self.banner() + PROMPT).encode())
        line = b""
        while not self._stop.is_set():
            data = chan.recv(1024)
            if not data:
                return
            for ch in data:
                b = bytes([ch])
                if b in (b"\r", b"\n"):
                    command = line.decode(errors="replace").strip()
                    line = b""
                    chan.sendall(b"\r\n")  # the terminal's echo of Enter
                    self.commands.append(command)
                    if command == self.hang_on:
                        continue  # never answers, never prompts
                    out = self.answer(command)
                    chan.sendall(((out + "\r\n") if out else "").encode())
                    if command == self.drop_on:
                        return
                    chan.sendall(PROMPT.encode())
                else:
                    line += b
                    chan.sendall(b)  # echo, as a PTY does


class _Iface(paramiko.ServerInterface):
    def __init__(self, fake: FakeSensorCli) -> None:
        self.fake = fake
        self.shell = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_auth_password(self, username: str, password: str) -> int:
        if username == self.fake.user and password == self.fake.password:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(self, *args: Any) -> bool:
        return True

    def check_channel_shell_request(self, channel: Any) -> bool:
        self.shell.set()
        return True

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        self.fake.exec_requests.append(command.decode(errors="replace"))
        return False  # the admin CLI is not a POSIX shell
