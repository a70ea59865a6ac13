"""One labctl run at a time per router: a file lock in the state directory.

Why: the router has no transaction and no compare-and-swap of its own. Two labctl runs
that read the SDN tables at the same moment would each plan from the same read and the
second write would silently drop the first run's network (a lost update). The lock
serialises labctl's own runs against one router (read, plan, apply, verify, restore all
happen under it); the compare-and-swap in the transaction (re-read the tables just before
writing, compare with the read the edit was planned from) catches writers that are not
labctl, such as the router's web page.

The lock is ``fcntl.flock`` on ``<state>/router-locks/<host>_<port>.lock``: it is released
when the process dies, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from labctl.core.errors import LabctlError
from labctl.core.state import state_home
from labctl.core.waiting import WaitTimeout, wait_until

__all__ = ["RouterBusy", "lock_path", "router_lock"]

#: how long a run waits for another run against the same router (an apply takes seconds)
DEFAULT_WAIT = 120.0


class RouterBusy(LabctlError):
    """Another labctl run holds this router's lock for longer than we wait."""


def lock_path(url: str, home: Path | None = None) -> Path:
    parts = urlsplit(url)
    host = parts.hostname or "router"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{host}_{port}")
    return (home or state_home()) / "router-locks" / f"{name}.lock"


@contextmanager
def router_lock(url: str, *, timeout: float = DEFAULT_WAIT, home: Path | None = None,
                sleep: Callable[[float], None] | None = None) -> Iterator[Path]:
    """Hold the router's lock; wait up to ``timeout`` s for another run to finish."""
    path = lock_path(url, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        try:
            wait_until(take, timeout=timeout, interval=0.05, backoff=1.5, max_interval=0.5,
                       sleep=sleep or time.sleep)
        except WaitTimeout:
            raise RouterBusy(f"another labctl run is changing this router (lock {path})",
                             hint="wait for it to finish, then run again") from None
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
