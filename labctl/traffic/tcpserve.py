"""A small bounded TCP accept loop shared by the personas and the WAN services.

At most ``max_clients`` connections are handled at once (a scan storm cannot exhaust a
persona); each gets its own thread and an I/O timeout; errors on one connection never stop
the loop. The loop polls ``stop`` twice a second.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

Handler = Callable[[socket.socket, str], None]


def accept_loop(sock: socket.socket, handler: Handler, stop: threading.Event, *,
                max_clients: int, io_timeout: float,
                on_accept: Callable[[str], None] | None = None) -> None:
    slots = threading.BoundedSemaphore(max_clients)

    def one(conn: socket.socket, peer: str) -> None:
        try:
            conn.settimeout(io_timeout)
            handler(conn, peer)
        except OSError:
            pass
        finally:
            conn.close()
            slots.release()

    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            conn, addr = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        if not slots.acquire(blocking=False):
            conn.close()
            continue
        if on_accept is not None:
            on_accept(addr[0])
        threading.Thread(target=one, args=(conn, addr[0]), daemon=True).start()
