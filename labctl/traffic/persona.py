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
import string
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from labctl.core.errors import ConfigError
from labctl.core.playbook.common import (
    Model,
    Port,
    ShortText,
    Text,
    check_asset_name,
    float_in,
    int_in,
)
from labctl.core.yamlfile import load_yaml, validate
from labctl.traffic.tcpserve import accept_loop

log = logging.getLogger("labctl.traffic")

MAX_CLIENTS = 32  # per listener, so a scan storm cannot exhaust the persona
IO_TIMEOUT = 3.0


#: the longest banner or reply a listener sends (bytes, after \\xNN escapes)
MAX_PAYLOAD = 4096

_port_check = int_in(1, 65535)


def _irc_or_port(v: Any) -> Any:
    return v if v == "irc" else _port_check(v)


class Listener(Model):
    port: Port
    proto: Literal["tcp", "udp"] = "tcp"
    # banners and replies are protocol bytes (written as \xNN escapes), so control
    # characters are allowed here: they go to a scanner's socket, never to a command
    banner: str = Field(default="", max_length=MAX_PAYLOAD)
    reply: str = Field(default="", max_length=MAX_PAYLOAD)


def _wan_or_ipv4(v: Any) -> Any:
    if v != "wan":
        if not isinstance(v, str) or not all(c in "0123456789." for c in v):
            raise ValueError(f"{v!r} is neither 'wan' nor an IPv4 address")
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError(f"{v!r} is neither 'wan' nor an IPv4 address") from None
    return v


class Outbound(Model):
    #: "wan" (the twin's first WAN service address) or an IPv4 address
    to: Annotated[str, BeforeValidator(_wan_or_ipv4)] = "wan"
    port: Annotated[int | Literal["irc"], BeforeValidator(_irc_or_port)] = "irc"
    proto: Literal["tcp"] = "tcp"
    every_seconds: Annotated[float, BeforeValidator(float_in(0.5, 3600))] = 10.0
    lines: list[Text] = Field(default_factory=list, max_length=100)

    @field_validator("lines")
    @classmethod
    def _placeholders(cls, v: list[str]) -> list[str]:
        # each line goes through str.format(name=...): only {name} (and {{ }}) may appear
        for line in v:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(line) if f is not None]
            except ValueError as e:
                raise ValueError(f"line {line!r}: {e} (write {{{{ and }}}} for braces)") \
                    from None
            bad = [f for f in fields if f != "name"]
            if bad:
                raise ValueError(f"line {line!r}: only the {{name}} placeholder exists "
                                 f"(found {{{bad[0]}}})")
        return v


class Persona(Model):
    name: ShortText
    vendor: ShortText = ""
    model: ShortText = ""
    description: Text = ""
    listeners: list[Listener] = Field(default_factory=list, max_length=64)
    outbound: list[Outbound] = Field(default_factory=list, max_length=16)


def load_persona(path: str | Path) -> Persona:
    return validate(Persona, load_yaml(str(path)))


def persona_file(folder: str | Path, name: str) -> Path:
    """``folder/<name>.yaml`` for a persona name, refusing any name that is a path or that
    would resolve outside ``folder`` (``../x``, an absolute path, a symlink out)."""
    try:
        check_asset_name(name, str(folder))
    except ValueError as e:
        raise ConfigError(f"persona {e}", file=str(folder)) from None
    base = Path(folder).resolve()
    p = (base / f"{name}.yaml").resolve()
    if not p.is_relative_to(base):
        raise ConfigError(f"persona {name!r} resolves outside its folder", file=str(p))
    return p


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
