"""Periodicity: does a device talk to one peer and port on a schedule?

Input for one (device, peer, protocol, server port) group: the start times of its flows
(each new connection is one event) and its per-minute activity. Two detectors run, in order:

1. **Fixed interval** ("every 300 s"). Events are the flow start times, or, when the group
   has fewer than :data:`MIN_EVENTS` flows (one long-lived UDP flow, say), the starts of its
   activity bursts (an active minute after an idle one). With at least ``MIN_EVENTS`` events
   the gaps between consecutive events are taken; if the median gap is at least
   ``MIN_INTERVAL`` seconds and at least 80 % of the gaps lie within 10 % (and at least
   2 s, or 60 s for minute-based events) of the median, the group is periodic with that
   median, rounded to the second.
2. **Daily schedule** ("daily at about 01:00, 09:00 and 18:00"). Needs activity on at least
   two distinct UTC days. Each hour of the day counts the days it was active; an hour active
   on at least 75 % of the days spanned (and on at least two) is a daily slot. Neighbouring
   slot hours merge into one window. If the windows cover at most 8 hours of the day, the
   group is daily; each window is named by the median, over the days, of its first active
   minute, rounded to 5 minutes.

Limits: times are UTC (the capture's clock). Activity is kept per minute, so intervals under
a minute are only found from flow starts (new connections or new source ports), not within
one long flow. Jitter over 10 % of the interval, or several schedules on the same port,
defeat the interval test; a daily schedule needs two days of capture. Nothing is inferred
from payloads.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

MIN_EVENTS = 4
MIN_INTERVAL = 5.0
DAY = 86_400


@dataclass(frozen=True)
class Periodicity:
    kind: str  # "interval" or "daily"
    interval: int | None = None  # seconds, for "interval"
    times: tuple[str, ...] = ()  # "HH:MM" UTC, for "daily"
    events: int = 0

    def describe(self) -> str:
        if self.kind == "interval":
            return f"every {self.interval} s"
        if len(self.times) == 1:
            return f"daily at about {self.times[0]}"
        return "daily at about " + ", ".join(self.times[:-1]) + " and " + self.times[-1]

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "interval": self.interval, "times": list(self.times),
                "events": self.events, "text": self.describe()}


def _interval(events: list[float], slack_floor: float) -> Periodicity | None:
    if len(events) < MIN_EVENTS:
        return None
    gaps = [b - a for a, b in zip(events, events[1:], strict=False) if b - a > 0]
    if len(gaps) < MIN_EVENTS - 1:
        return None
    med = statistics.median(gaps)
    if med < MIN_INTERVAL:
        return None
    slack = max(0.1 * med, slack_floor)
    close = sum(1 for g in gaps if abs(g - med) <= slack)
    if close < 0.8 * len(gaps):
        return None
    return Periodicity("interval", interval=round(med), events=len(events))


def _daily(minutes: Iterable[int]) -> Periodicity | None:
    days_by_hour: dict[int, dict[int, int]] = {}  # hour -> day -> first minute of day
    days: set[int] = set()
    for m in minutes:
        day, mod = divmod(m * 60, DAY)
        days.add(day)
        hour = mod // 3600
        first = days_by_hour.setdefault(hour, {})
        minute_of_day = mod // 60
        if day not in first or minute_of_day < first[day]:
            first[day] = minute_of_day
    if len(days) < 2:
        return None
    span = max(days) - min(days) + 1
    need = max(2.0, 0.75 * span)
    slots = sorted(h for h, d in days_by_hour.items() if len(d) >= need)
    if not slots:
        return None
    # merge neighbouring hours (23 and 0 too) into windows
    windows: list[list[int]] = []
    for h in slots:
        if windows and h == windows[-1][-1] + 1:
            windows[-1].append(h)
        else:
            windows.append([h])
    if len(windows) > 1 and windows[0][0] == 0 and windows[-1][-1] == 23:
        windows[0] = windows.pop() + windows[0]
    if sum(len(w) for w in windows) > 8:
        return None
    times = []
    for w in windows:
        starts = []
        for day in days:
            firsts = [days_by_hour[h][day] for h in w if day in days_by_hour.get(h, {})]
            if firsts:
                # the first hour of the window that day (order of w, so 23 before 0)
                starts.append(firsts[0])
        med = int(round(statistics.median(starts) / 5.0) * 5) % (24 * 60)
        times.append(f"{med // 60:02d}:{med % 60:02d}")
    events = sum(len(d) for h, d in days_by_hour.items() if h in slots)
    return Periodicity("daily", times=tuple(sorted(times)), events=events)


def detect(starts: Iterable[float], minutes: Iterable[int]) -> Periodicity | None:
    """The schedule of one group, or None (see the module's description)."""
    ev = sorted(set(starts))
    mins = sorted(set(minutes))
    found = _interval(ev, 2.0)
    if found is None and len(ev) < MIN_EVENTS:
        bursts = [m * 60.0 for i, m in enumerate(mins) if i == 0 or mins[i - 1] != m - 1]
        found = _interval(bursts, 60.0)
    if found is not None:
        return found
    return _daily(mins)
