"""The sensor's sliding windows, alone: no packets, no engine, plain numbers."""

from __future__ import annotations

from labctl.sensor.windows import DistinctWindow, RateWindow


def test_distinct_window_fires_at_the_threshold_with_the_items_and_starts_afresh():
    w: DistinctWindow[str, int] = DistinctWindow(3, 10.0)
    assert w.add("k", 1, 0.0) is None
    assert w.add("k", 1, 1.0) is None  # a repeat is not a new item
    assert w.add("k", 2, 2.0) is None
    assert w.add("k", 3, 3.0) == {1: 1.0, 2: 2.0, 3: 3.0}
    assert w.add("k", 4, 4.0) is None  # counting starts afresh after firing
    assert w.add("other", 1, 4.0) is None  # keys are counted apart


def test_distinct_window_forgets_items_older_than_the_window():
    w: DistinctWindow[str, int] = DistinctWindow(3, 10.0)
    w.add("k", 1, 0.0)
    w.add("k", 2, 1.0)
    assert w.add("k", 3, 10.5) is None  # item 1 (t=0) fell out of the 10 s window
    assert w.add("k", 4, 11.0) == {2: 1.0, 3: 10.5, 4: 11.0}


def test_distinct_window_first_item_never_fires_even_with_threshold_one():
    w: DistinctWindow[str, int] = DistinctWindow(1, 10.0)
    assert w.add("k", 1, 0.0) is None
    assert w.add("k", 2, 1.0) == {1: 0.0, 2: 1.0}


def test_rate_window_counts_events_inside_the_window():
    r: RateWindow[str] = RateWindow(3, 5.0)
    assert r.add("k", 0.0) == 0
    assert r.add("k", 1.0) == 0
    assert r.add("k", 7.0) == 0  # two old events dropped at the threshold check
    assert r.add("k", 8.0) == 0
    assert r.add("k", 9.0) == 3
    assert r.add("k", 9.5) == 0  # afresh after firing


def test_defaults_and_prune_drop_idle_keys():
    w: DistinctWindow[str, int] = DistinctWindow(None, None)
    assert (w.threshold, w.window) == (1, 60.0)
    r: RateWindow[str] = RateWindow(5, 10.0)
    w.add("old", 1, 0.0)
    w.add("new", 1, 100.0)
    r.add("old", 0.0)
    r.add("new", 100.0)
    w.prune(100.0)
    r.prune(100.0)
    assert set(w.keys) == {"new"} and set(r.keys) == {"new"}
