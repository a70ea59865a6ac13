"""Sliding windows for the scan and flood detections: pure, no packets, no clocks.

Why two kinds: a scan is *distinct* items per key (ports per source/destination pair,
addresses per source/subnet), a flood is a *count* of events per key. Both fire once the
threshold is reached inside the window, then start counting afresh (the engine's dedup
absorbs the repeats). To keep the per-packet cost at a dict store, old items are pruned only
when the count reaches the threshold, and idle keys only by :meth:`prune`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Hashable)


class DistinctWindow(Generic[K, V]):
    """Distinct items seen per key inside a sliding window; fires at the threshold."""

    __slots__ = ("threshold", "window", "keys")

    def __init__(self, threshold: int | None, window_seconds: float | None) -> None:
        self.threshold = threshold or 1
        self.window = window_seconds or 60.0
        self.keys: dict[K, dict[V, float]] = {}

    def add(self, key: K, item: V, ts: float) -> dict[V, float] | None:
        """Record ``item`` for ``key``; return the items if the threshold is reached."""
        d = self.keys.get(key)
        if d is None:
            # the first item of a key never fires, even with threshold 1 (as it always was)
            self.keys[key] = {item: ts}
            return None
        d[item] = ts
        if len(d) < self.threshold:
            return None
        cutoff = ts - self.window
        if min(d.values()) < cutoff:
            for k in [k for k, t in d.items() if t < cutoff]:
                del d[k]
            if len(d) < self.threshold:
                return None
        # the alert is raised; start counting afresh (dedup absorbs repeats). The items
        # are handed over, not copied: the key gets a new dict
        self.keys[key] = {}
        return d

    def prune(self, now: float) -> None:
        cutoff = now - self.window
        for key in [k for k, d in self.keys.items() if not d or max(d.values()) < cutoff]:
            del self.keys[key]


class RateWindow(Generic[K]):
    """Count of events per key inside a sliding window; fires at the threshold."""

    __slots__ = ("threshold", "window", "keys")

    def __init__(self, threshold: int | None, window_seconds: float | None) -> None:
        self.threshold = threshold or 1
        self.window = window_seconds or 60.0
        self.keys: dict[K, deque[float]] = {}

    def add(self, key: K, ts: float) -> int:
        """Count one event for ``key``; return the count if the threshold is reached, else 0."""
        q = self.keys.get(key)
        if q is None:
            q = self.keys[key] = deque()
        q.append(ts)
        if len(q) < self.threshold:
            return 0
        cutoff = ts - self.window
        while q and q[0] < cutoff:
            q.popleft()
        if len(q) < self.threshold:
            return 0
        n = len(q)
        q.clear()
        return n

    def prune(self, now: float) -> None:
        cutoff = now - self.window
        for key in [k for k, q in self.keys.items() if not q or q[-1] < cutoff]:
            del self.keys[key]
