"""Run code or programs inside a Linux network namespace.

``netns_context(name)`` moves the *current thread* into ``/run/netns/<name>`` with
setns(2) and moves it back afterwards. Sockets created inside the block belong to that
namespace, so an HTTP client (requests) can talk to the twin's router or sensor "as if
labctl ran on the Hyper-V host", without any route in the root namespace.

``netns_argv(name, argv)`` prefixes a command with ``ip netns exec``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from labctl.core.errors import PreflightError

if TYPE_CHECKING:
    from labctl.core.playbook import Playbook

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = None
_lock = threading.Lock()


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


@contextmanager
def netns_context(name: str | None) -> Iterator[None]:
    """Enter network namespace ``name`` for the current thread (no-op for None)."""
    if not name:
        yield
        return
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PreflightError(f"network namespace {name!r} does not exist",
                             hint="is the twin lab up? run `labctl up -f <twin playbook>`") \
            from None
    except PermissionError:
        raise PreflightError(f"cannot open network namespace {name!r}",
                             hint="run labctl as root") from None
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                   os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as e:
            raise PreflightError(f"cannot enter network namespace {name!r}: {e.strerror}",
                                 hint="run labctl as root") from None
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def netns_argv(name: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *argv] if name else list(argv)


def lab_host_netns(playbook: Playbook) -> str | None:
    """The namespace that plays the Hyper-V host for a twin lab; None for real labs."""
    return f"{playbook.lab}-host" if playbook.provider == "netns" else None
