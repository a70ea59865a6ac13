"""TCP listeners with known behaviour, run inside a test namespace (``ip netns exec``).

Usage: ``python3 scan_listener.py PORT:KIND ...`` with KIND one of
``ssh`` (sends an OpenSSH banner), ``http`` (a tiny HTTP server with a Server header and a
<title>), ``silent`` (accepts and says nothing, like the pet feeders' 6668/tcp; slow for -sV),
``close`` (accepts and hangs up at once: nmap reports tcpwrapped, quickly).
Prints ``ready`` once every port is bound, then serves until killed. Every address (v4 and
v6) is bound, so scans over IPv6 see the same ports.
"""

from __future__ import annotations

import socket
import sys
import threading

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"
HTTP_BODY = b"<html><head><title>PetFeeder Control</title></head><body>ok</body></html>\n"
HTTP_HEAD = (b"HTTP/1.1 200 OK\r\nServer: lighttpd/1.4.59\r\nContent-Type: text/html\r\n"
             b"Connection: close\r\nContent-Length: " + str(len(HTTP_BODY)).encode() + b"\r\n\r\n")


def handle(conn: socket.socket, kind: str) -> None:
    try:
        conn.settimeout(10)
        if kind == "ssh":
            conn.sendall(SSH_BANNER)
            try:
                conn.recv(256)
            except OSError:
                pass
        elif kind == "http":
            data = b""
            while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
            if data:
                conn.sendall(HTTP_HEAD + (b"" if data.startswith(b"HEAD") else HTTP_BODY))
        elif kind == "close":  # accept and hang up at once (nmap: tcpwrapped)
            pass
        else:  # silent: read until the client gives up
            while conn.recv(1024):
                pass
    except OSError:
        pass
    finally:
        conn.close()


def serve(sock: socket.socket, kind: str) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn, kind), daemon=True).start()


def main(argv: list[str]) -> int:
    socks = []
    for spec in argv:
        port_s, _, kind = spec.partition(":")
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", int(port_s)))
        s.listen(64)
        socks.append((s, kind or "silent"))
    for s, kind in socks:
        threading.Thread(target=serve, args=(s, kind), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
