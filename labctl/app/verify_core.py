"""The reasoning of `labctl verify-alerts`, as pure functions over plain records.

Why apart from the flow (:mod:`labctl.app.verify`): deciding PASS, FAIL, SKIP or ERROR and
*why* is the part users rely on, so it takes plain data (the alerts seen, what the stimulus
touched, the sensor's view of the scanner, the effective detection settings) and is tested
case by case without a sensor.

FAIL reasons are checked in this order, first match wins:

1. the source is an authorized scanner (the sensor's device record says ``scanner`` or
   ``authorized``, or the playbook lists it in ``sensor.authorized_scanners``) and the
   detection is a scan detection;
2. the detection is disabled (by the playbook's ``sensor.engines``);
3. the sensor is in learning mode and the expected alert is a Policy Violation;
4. the threshold was not reached (what the stimulus touched on the wire against the
   detection's threshold);
5. the sensor did not see the traffic (no connection from the source after the stimulus);
6. otherwise: no matching alert within N s, with the closest alerts that did arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from labctl.core.expectations import AlertMatch, Case

SCAN_DETECTIONS = frozenset({"port_scan", "address_scan", "arp_scan", "long_address_scan"})


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    ERROR = "ERROR"


@dataclass(frozen=True)
class SeenAlert:
    """An alert as verify-alerts compares it (normalised from any alert source)."""

    id: str
    title: str
    engine: str
    severity: str
    time: float  # the alert's own time, epoch seconds
    seen_at: float  # when labctl first saw it, epoch seconds
    source: str | None = None
    destination: str | None = None
    message: str = ""
    origin: str = "sensor"  # sensor | sentinel

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "engine": self.engine,
                "severity": self.severity, "time": self.time, "seen_at": self.seen_at,
                "source": self.source, "destination": self.destination,
                "origin": self.origin}

    def line(self) -> str:
        where = ""
        if self.source or self.destination:
            where = f" {self.source or '?'} -> {self.destination or '?'}"
        return f"[{self.severity}] {self.title} ({self.engine}){where}"


@dataclass(frozen=True)
class Detection:
    """The effective settings of one detection (engines.yaml + the playbook's overrides)."""

    key: str
    title: str
    engine: str
    enabled: bool
    enabled_by_default: bool
    threshold: int | None = None
    window_seconds: float | None = None


@dataclass(frozen=True)
class ResolvedMatch:
    """An :class:`AlertMatch` with its placeholders resolved to addresses."""

    title: str | None
    engine: str | None
    severity: str | None
    source: str | None
    destination: str | None
    min_count: int
    within: float

    @classmethod
    def of(cls, m: AlertMatch, resolve: Any) -> ResolvedMatch:
        return cls(m.title, m.engine, m.severity,
                   resolve(m.source) if m.source else None,
                   resolve(m.destination) if m.destination else None,
                   m.min_count, m.within)

    def matches(self, a: SeenAlert) -> bool:
        if self.title is not None and a.title.casefold() != self.title.casefold():
            return False
        if self.engine is not None and a.engine.casefold() != self.engine.casefold():
            return False
        if self.severity is not None and a.severity.casefold() != self.severity.casefold():
            return False
        if self.source is not None and not _addr_matches(self.source, a.source, a.message):
            return False
        return self.destination is None or \
            _addr_matches(self.destination, a.destination, a.message)

    def closeness(self, a: SeenAlert) -> int:
        """How many of the given fields ``a`` matches (to list the closest misses)."""
        score = 0
        if self.title is not None and a.title.casefold() == self.title.casefold():
            score += 2
        if self.engine is not None and a.engine.casefold() == self.engine.casefold():
            score += 1
        if self.source is not None and _addr_matches(self.source, a.source, a.message):
            score += 1
        return score

    def describe(self) -> str:
        parts = [f"title={self.title!r}" if self.title else "",
                 f"engine={self.engine!r}" if self.engine else "",
                 f"source={self.source}" if self.source else "",
                 f"destination={self.destination}" if self.destination else ""]
        return ", ".join(p for p in parts if p) or "any alert"


def _addr_matches(want: str, have: str | None, message: str | None) -> bool:
    if have is not None and have.casefold() == want.casefold():
        return True
    # v1 alerts carry no addresses: the alert reference puts them in the message text
    if have is None and message:
        import re

        return re.search(rf"(?<![0-9.]){re.escape(want)}(?![0-9])", message) is not None
    return False


@dataclass(frozen=True)
class Touched:
    """What a stimulus touched on the wire, for the threshold reason."""

    addresses: int = 0
    ports: int = 0
    packets: int = 0
    description: str = ""


@dataclass(frozen=True)
class ScannerView:
    """What the sensor and the playbook say about the scanner. A device record's
    ``authorized: true`` alone means a learned device, not an authorized scanner, so only
    the ``scanner`` flag counts from the sensor."""

    address: str | None
    sensor_scanner: bool = False
    playbook_authorized: bool = False

    @property
    def authorized(self) -> bool:
        return self.sensor_scanner or self.playbook_authorized

    def why_authorized(self) -> str:
        why = []
        if self.sensor_scanner:
            why.append("the sensor marks it as a scanner (device record scanner: true)")
        if self.playbook_authorized:
            why.append("the playbook lists it in sensor.authorized_scanners")
        return "; ".join(why)


@dataclass
class CaseResult:
    id: str
    description: str
    verdict: Verdict
    reason: str = ""
    hint: str = ""
    latency: float | None = None  # stimulus end -> first matching alert's own time
    seen_latency: float | None = None  # stimulus end -> labctl saw it
    stimulus: str = ""
    stimulus_seconds: float = 0.0
    matched: list[SeenAlert] = field(default_factory=list)
    closest: list[SeenAlert] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description,
                "verdict": self.verdict.value, "reason": self.reason, "hint": self.hint,
                "latency_seconds": _r(self.latency),
                "seen_latency_seconds": _r(self.seen_latency),
                "stimulus": self.stimulus, "stimulus_seconds": _r(self.stimulus_seconds),
                "matched": [a.to_dict() for a in self.matched],
                "closest": [a.to_dict() for a in self.closest]}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def skip_reason(case: Case, detections: dict[str, Detection]) -> tuple[str, str] | None:
    """(reason, hint) when the case needs a detection that is off by default and the
    playbook does not turn it on; None otherwise."""
    if case.requires is None:
        return None
    d = detections.get(case.requires)
    if d is None:
        return None
    if not d.enabled and not d.enabled_by_default:
        return (f"{d.title} ({d.key}) is off by default and the playbook does not enable it",
                f"turn it on: sensor.engines.{d.key}.enabled: true in the playbook (for a "
                "Defender for IoT sensor, enable the alert on the sensor's Support page "
                "first, then declare it there)")
    return None


def evaluate(case: Case, matches: Sequence[ResolvedMatch], alerts: Iterable[SeenAlert], *,
             stimulus_end: float, detections: dict[str, Detection], scanner: ScannerView,
             learning_mode: bool | None, touched: Touched | None,
             source_seen: bool | None,
             stimulus: str = "", stimulus_seconds: float = 0.0,
             clock_skew: float = 2.0) -> CaseResult:
    """The verdict of one case from the alerts that arrived inside its window."""
    start = stimulus_end - stimulus_seconds
    # an alert belongs to this case when labctl first saw it after the stimulus began and
    # the sensor dates it after that too (``clock_skew`` allows for the sensor's clock);
    # an older alert that the sensor updated in place is not this case's
    pool = [a for a in alerts
            if a.seen_at >= start - 0.5 and a.time >= start - clock_skew]
    base = CaseResult(case.id, case.description, Verdict.PASS, stimulus=stimulus,
                      stimulus_seconds=stimulus_seconds)
    hits = [[a for a in pool if m.matches(a)] for m in matches]
    if case.expect_none:
        forbidden = [a for hs in hits for a in hs]
        if not matches:
            forbidden = [a for a in pool if scanner.address and
                         _addr_matches(scanner.address, a.source, a.message)]
        if forbidden:
            base.verdict = Verdict.FAIL
            base.matched = _unique(forbidden)
            base.reason = (f"{len(base.matched)} alert(s) fired that must not: "
                           + "; ".join(a.line() for a in base.matched[:3]))
            base.hint = _negative_hint(case, detections)
        return base
    missing = [m for m, hs in zip(matches, hits, strict=True) if len(hs) < m.min_count]
    if not missing:
        first = min((a for hs in hits for a in hs), key=lambda a: a.seen_at)
        base.matched = _unique(a for hs in hits for a in hs)
        base.latency = max(0.0, first.time - stimulus_end)
        base.seen_latency = max(0.0, first.seen_at - stimulus_end)
        return base
    base.verdict = Verdict.FAIL
    m = missing[0]
    got = len(hits[matches.index(m)])
    det = detections.get(case.requires) if case.requires else None
    if det is None:
        det = _detection_by_title(m.title, detections)
    expected_engine = m.engine or (det.engine if det else None)
    if scanner.authorized and det is not None and det.key in SCAN_DETECTIONS:
        base.reason = f"the source {scanner.address} is an authorized scanner: " \
                      f"{scanner.why_authorized()}"
        base.hint = ("scan alerts are not raised for authorized scanners; scan from another "
                     "address, or remove the scanner flag / authorized_scanners entry")
    elif det is not None and not det.enabled:
        base.reason = f"{det.title} ({det.key}) is disabled"
        base.hint = (f"set sensor.engines.{det.key}.enabled: true in the playbook (a Defender "
                     "for IoT sensor: enable it on the sensor's Support page)")
    elif learning_mode and expected_engine == "Policy Violation":
        base.reason = ("the sensor is in learning mode, which withholds Policy Violation "
                       "alerts")
        base.hint = ("end learning mode on the sensor (System settings > Network monitoring "
                     "> Learning), or set sensor.learning_mode: false for the embedded sensor")
    elif det is not None and det.threshold is not None and touched is not None and \
            _touched_count(det, touched) < det.threshold:
        n = _touched_count(det, touched)
        unit = "addresses" if det.key in ("address_scan", "arp_scan") else \
            "packets" if det.key == "icmp_flood" else "ports"
        base.reason = (f"threshold not reached: the stimulus touched {n} {unit} "
                       f"({touched.description or 'on the wire'}), {det.title} needs "
                       f"{det.threshold} in {det.window_seconds or 0:g} s")
        base.hint = "make the stimulus touch more, or lower the threshold in sensor.engines"
    elif source_seen is False:
        base.reason = (f"the sensor did not see the traffic: no connection from "
                       f"{scanner.address or m.source} after the stimulus")
        base.hint = ("check the mirror: `labctl status`, the SPAN source and destination "
                     "ports, VMQ off on the monitor NIC, the VLAN trunk of the monitor NIC")
    else:
        base.reason = (f"no matching alert ({m.describe()}) within {m.within:g} s"
                       + (f": {got} of {m.min_count} matched" if got else ""))
        base.closest = sorted(pool, key=lambda a: -m.closeness(a))[:3]
        if base.closest:
            base.reason += "; closest: " + "; ".join(a.line() for a in base.closest)
        base.hint = "raise `within` for a slow sensor, or check the expectation's fields"
    return base


def _touched_count(det: Detection, t: Touched) -> int:
    if det.key in ("address_scan", "arp_scan", "long_address_scan"):
        return t.addresses
    if det.key in ("icmp_flood", "dos", "excessive_sessions"):
        return t.packets
    return t.ports


def _detection_by_title(title: str | None, detections: dict[str, Detection]
                        ) -> Detection | None:
    if title is None:
        return None
    for d in detections.values():
        if d.title.casefold() == title.casefold():
            return d
    return None


def _negative_hint(case: Case, detections: dict[str, Detection]) -> str:
    d = detections.get(case.requires) if case.requires else None
    if d is not None and d.threshold is not None:
        return (f"{d.title} fired below its documented threshold ({d.threshold} in "
                f"{d.window_seconds or 0:g} s): check sensor.engines.{d.key}.threshold")
    return "an alert fired for traffic that should raise none"


def _unique(alerts: Iterable[SeenAlert]) -> list[SeenAlert]:
    out: dict[tuple[str, str], SeenAlert] = {}
    for a in alerts:
        out.setdefault((a.origin, a.id), a)
    return list(out.values())


def unexpected(alerts: Iterable[SeenAlert], results: Iterable[CaseResult]) -> list[SeenAlert]:
    """Alerts that arrived but that no case matched (informational)."""
    used = {(a.origin, a.id) for r in results for a in r.matched}
    return [a for a in _unique(alerts) if (a.origin, a.id) not in used]
