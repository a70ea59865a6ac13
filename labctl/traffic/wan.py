"""The twin's internet: a few simple services in the ``<lab>-wan`` namespace.

- an IRC-like server on ``irc_port`` (6667): answers NICK/USER with a 001 welcome, PING with
  PONG, JOIN with a join echo, and closes on QUIT; this is what the pet feeders talk to;
- a minimal HTTP server on 80 (any request gets ``200 OK`` and a short body);
- a TCP echo service on 7.

All bind 0.0.0.0 inside the WAN namespace, so every WAN address (198.51.100.x, 203.0.113.x)
answers. Client counts are bounded.
"""

from __future__ import annotations

import logging
import socket
import threading

from labctl.traffic.tcpserve import Handler, accept_loop

log = logging.getLogger("labctl.traffic")

MAX_CLIENTS = 64
IO_TIMEOUT = 5.0
SERVER_NAME = "irc.twin.example"


def irc_session(conn: socket.socket, peer: str) -> None:
    nick = "*"
    f = conn.makefile("rwb", buffering=0)
    conn.sendall(f":{SERVER_NAME} NOTICE * :*** Looking up your hostname\r\n".encode())
    for _ in range(200):  # bounded number of lines per session
        raw = f.readline(1024)
        if not raw:
            break
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        out: list[str] = []
        if cmd == "NICK":
            nick = rest.split()[0] if rest.split() else nick
        elif cmd == "USER":
            out.append(f":{SERVER_NAME} 001 {nick} :Welcome to the twin IRC network {nick}")
        elif cmd == "PING":
            out.append(f":{SERVER_NAME} PONG {SERVER_NAME} {rest}")
        elif cmd == "JOIN":
            out.append(f":{nick}!{nick}@{peer} JOIN {rest}")
        elif cmd == "PRIVMSG":
            pass
        elif cmd == "QUIT":
            out.append(f"ERROR :Closing link: {peer} (Quit)")
        else:
            out.append(f":{SERVER_NAME} 421 {nick} {cmd} :Unknown command")
        if out:
            conn.sendall("".join(o + "\r\n" for o in out).encode())
        if cmd == "QUIT":
            break


def http_session(conn: socket.socket, peer: str) -> None:
    conn.recv(4096)
    body = b"twin internet ok\n"
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def echo_session(conn: socket.socket, peer: str) -> None:
    for _ in range(100):
        data = conn.recv(4096)
        if not data:
            break
        conn.sendall(data)


def serve(port: int, handler: Handler, stop: threading.Event,
          bind: str = "0.0.0.0") -> threading.Thread:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, port))
    s.listen(64)

    def loop() -> None:
        try:
            accept_loop(s, handler, stop, max_clients=MAX_CLIENTS, io_timeout=IO_TIMEOUT,
                        on_accept=lambda peer: log.info("port %d: connection from %s", port,
                                                        peer))
        finally:
            s.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def run_wan(irc_port: int = 6667, http_port: int = 80, echo_port: int = 7,
            stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    serve(irc_port, irc_session, stop)
    serve(http_port, http_session, stop)
    serve(echo_port, echo_session, stop)
    log.warning("WAN services up: irc/%d http/%d echo/%d", irc_port, http_port, echo_port)
    while not stop.wait(1.0):
        pass
