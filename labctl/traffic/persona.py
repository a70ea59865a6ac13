"""Device personas: what a twin IoT device listens on and what it sends (playbooks/devices/).

A persona is a small YAML file: TCP/UDP listeners with a banner (sent on connect) and a
reply (sent after the first line received), and periodic outbound conversations (connect,
send lines, read the answer, close), e.g. the pet feeders' IRC-like chatter to WAN:6667.
Rates are bounded: at least half a second between conversations, a capped number of
concurrent clients per listener.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate
from labctl.traffic.tcpserve import accept_loop

log = logging.getLogger("labctl.traffic")

MAX_CLIENTS = 32  # per listener, so a scan storm cannot exhaust the persona
IO_TIMEOUT = 3.0


class Listener(Model):
    port: int = Field(ge=1, le=65535)
    proto: Literal["tcp", "udp"] = "tcp"
    banner: str = ""
    reply: str = ""


class Outbound(Model):
    to: str = "wan"  # "wan" (the twin's first WAN service address) or an IPv4 address
    port: int | Literal["irc"] = "irc"
    proto: Literal["tcp"] = "tcp"
    every_seconds: float = Field(default=10.0, ge=0.5, le=3600)
    lines: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        if v != "wan":
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError(f"{v!r} is neither 'wan' nor an IPv4 address") from None
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError(f"port {v} is outside 1-65535")
        return v


class Persona(Model):
    name: str
    vendor: str = ""
    model: str = ""
    description: str = ""
    listeners: list[Listener] = Field(default_factory=list)
    outbound: list[Outbound] = Field(default_factory=list)


def load_persona(path: str | Path) -> Persona:
    return validate(Persona, load_yaml(str(path)))


def _enc(text: str) -> bytes:
    # banners may hold binary protocol bytes written as \xNN escapes in YAML
    return text.encode("latin-1", errors="replace")


def _serve_tcp(sock: socket.socket, lst: Listener, stop: threading.Event) -> None:
    def handle(conn: socket.socket, peer: str) -> None:
        if lst.banner:
            conn.sendall(_enc(lst.banner))
        if lst.reply:
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if data:
                conn.sendall(_enc(lst.reply))

    accept_loop(sock, handle, stop, max_clients=MAX_CLIENTS, io_timeout=IO_TIMEOUT)


def _serve_udp(sock: socket.socket, lst: Listener, stop: threading.Event) -> None:
    sock.settimeout(0.5)
    last = 0.0
    while not stop.is_set():
        try:
            _, peer = sock.recvfrom(4096)
        except TimeoutError:
            continue
        except OSError:
            return
        now = time.monotonic()
        if lst.reply and now - last >= 0.01:  # at most 100 replies a second
            last = now
            try:
                sock.sendto(_enc(lst.reply), peer)
            except OSError:
                pass


def open_listeners(persona: Persona, bind: str = "0.0.0.0") -> list[tuple[socket.socket, Listener]]:
    out = []
    for lst in persona.listeners:
        if lst.proto == "tcp":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((bind, lst.port))
            s.listen(64)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((bind, lst.port))
        out.append((s, lst))
    return out


def converse(host: str, port: int, lines: list[str], name: str) -> bytes:
    """One outbound conversation: connect, send the lines, read what comes back, close."""
    with socket.create_connection((host, port), timeout=IO_TIMEOUT) as s:
        s.settimeout(IO_TIMEOUT)
        payload = "".join(ln.format(name=name) + "\r\n" for ln in lines)
        s.sendall(_enc(payload))
        s.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while len(got) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        return got


def _talk(ob: Outbound, name: str, wan: str, irc_port: int, stop: threading.Event) -> None:
    host = wan if ob.to == "wan" else ob.to
    port = irc_port if ob.port == "irc" else int(ob.port)
    while not stop.is_set():
        try:
            got = converse(host, port, ob.lines, name)
            log.info("%s -> %s:%d: %d bytes back", name, host, port, len(got))
        except OSError as e:
            log.info("%s -> %s:%d: %s", name, host, port, e)
        stop.wait(ob.every_seconds)


def run_persona(persona: Persona, name: str, wan: str, irc_port: int = 6667,
                stop: threading.Event | None = None, bind: str = "0.0.0.0") -> None:
    """Run a persona until ``stop`` is set (forever in a supervised process)."""
    stop = stop or threading.Event()
    threads = []
    socks = open_listeners(persona, bind)
    for s, lst in socks:
        fn = _serve_tcp if lst.proto == "tcp" else _serve_udp
        threads.append(threading.Thread(target=fn, args=(s, lst, stop), daemon=True))
    for ob in persona.outbound:
        threads.append(threading.Thread(target=_talk, args=(ob, name, wan, irc_port, stop),
                                        daemon=True))
    for t in threads:
        t.start()
    log.warning("persona %s (%s) up: %s", name, persona.name,
                ", ".join(f"{lst.proto}/{lst.port}" for _, lst in socks) or "no listeners")
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for s, _ in socks:
            s.close()
