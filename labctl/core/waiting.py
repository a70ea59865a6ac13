"""One poll-until-deadline loop, with an injectable clock and sleep.

Why one: hand-written loops each get the edge cases slightly wrong (a last check after the
deadline, a sleep past it, an exception swallowed forever). This one checks at least once,
never sleeps past the deadline, and returns what the last check saw so the caller can say
what it was waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(Exception):
    """Raised by :func:`wait_until` when ``fn`` never returned a truthy value in time.

    ``last`` is the last value ``fn`` returned (or None), ``error`` the last exception it
    raised when ``ignore`` let it through; callers translate this into a LabctlError.
    """

    def __init__(self, waited: float, last: object = None,
                 error: BaseException | None = None) -> None:
        super().__init__(f"gave up after {waited:.1f} s")
        self.waited = waited
        self.last = last
        self.error = error


def wait_until(fn: Callable[[], T | None], *, timeout: float, interval: float = 0.1,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep,
               ignore: tuple[type[BaseException], ...] = (),
               backoff: float = 1.0, max_interval: float | None = None) -> T:
    """Call ``fn`` until it returns something truthy; return that value.

    ``fn`` is called at least once, even with ``timeout <= 0``. Exceptions in ``ignore``
    count as "not yet". ``backoff`` multiplies the interval after each miss, up to
    ``max_interval``. Raises :class:`WaitTimeout` when the deadline passes.
    """
    start = clock()
    deadline = start + timeout
    delay = interval
    last: T | None = None
    error: BaseException | None = None
    while True:
        try:
            last = fn()
            error = None
        except ignore as e:
            last, error = None, e
        if last:
            return last
        now = clock()
        if now >= deadline:
            raise WaitTimeout(now - start, last, error)
        sleep(max(0.0, min(delay, deadline - now)))
        delay = delay * backoff
        if max_interval is not None:
            delay = min(delay, max_interval)
