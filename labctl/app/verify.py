"""`labctl verify-alerts`: send each case's stimulus, read the alerts back, explain misses.

The order is the safety and honesty argument:

1. load the expectation file and resolve every placeholder and stimulus; every address a
   stimulus would touch passes the scan scope guard. A bad file, an unknown device or an
   out-of-scope target stops here (exit 2) and nothing is sent or contacted;
2. reach the alert sources (the sensor's API, Microsoft Sentinel, or both);
3. send a **canary** (one UDP datagram with a unique payload from the scanner to the
   gateway) and wait until the sensor shows the scanner talking to the gateway on that
   port. A sensor that never does is **blind**: every case is ERROR with one diagnosis;
4. pre-checks from what the sensor reports: learning mode, the scanner's device record
   (``scanner``/``authorized``), the playbook's ``sensor.authorized_scanners``;
5. the cases in file order (negatives first in the shipped files: a window of a detection
   that already fired would hide them), each with its deadline, polling with backoff;
6. verdicts (:mod:`labctl.app.verify_core`), and the alerts nobody expected.

No printing: progress goes to a callback as :class:`VerifyEvent`.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

from labctl.app.verify_core import (
    CaseResult,
    Detection,
    ResolvedMatch,
    ScannerView,
    SeenAlert,
    Touched,
    Verdict,
    evaluate,
    skip_reason,
    unexpected,
)
from labctl.core.context import LabContext
from labctl.core.errors import AuthError, LabctlError, TransportError, UsageError
from labctl.core.expectations import PLACEHOLDER_RE, Case, ExpectationsFile, load_expectations

SourceName = Literal["sensor", "sentinel", "both"]
SENSOR_DEADLINE = 15.0
SENTINEL_DEADLINE = 1800.0
CANARY_DEADLINE = 20.0


@dataclass(frozen=True)
class VerifyOptions:
    expectations: str | None = None
    source: SourceName = "sensor"
    only: tuple[str, ...] = ()
    #: overrides every case's deadline (seconds after its stimulus ends)
    timeout: float | None = None
    no_stimulus: bool = False
    #: --no-stimulus: match alerts since this epoch time
    since: float | None = None
    canary_timeout: float = CANARY_DEADLINE
    poll_interval: float = 0.2
    max_poll_interval: float = 1.0


@dataclass(frozen=True)
class VerifyEvent:
    """Progress: ``kind`` is phase | case-start | case-done | note."""

    kind: str
    text: str
    case: str | None = None
    result: CaseResult | None = None


ProgressFn = Callable[[VerifyEvent], None]


@dataclass
class VerifyReport:
    expectations: str
    source: str
    scanner: str | None
    started: float
    ended: float = 0.0
    blind: bool = False
    canary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    results: list[CaseResult] = field(default_factory=list)
    unexpected: list[SeenAlert] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {v.value: sum(1 for r in self.results if r.verdict == v) for v in Verdict}

    @property
    def ok(self) -> bool:
        return all(r.verdict in (Verdict.PASS, Verdict.SKIP) for r in self.results)

    def latencies(self) -> list[float]:
        """Stimulus end -> the matching alert's own time, per passed case, sorted."""
        return sorted(r.latency for r in self.results if r.latency is not None)

    def seen_latencies(self) -> list[float]:
        """Stimulus end -> labctl saw the alert through the API, per passed case, sorted."""
        return sorted(r.seen_latency for r in self.results if r.seen_latency is not None)

    def to_dict(self) -> dict[str, Any]:
        lat = self.latencies()
        seen = self.seen_latencies()
        return {
            "expectations": self.expectations, "source": self.source,
            "scanner": self.scanner, "ok": self.ok, "blind": self.blind,
            "counts": self.counts, "canary": self.canary, "notes": self.notes,
            "seconds": round(self.ended - self.started, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "latency": {"median": round(lat[len(lat) // 2], 3) if lat else None,
                        "worst": round(lat[-1], 3) if lat else None,
                        "seen_median": round(seen[len(seen) // 2], 3) if seen else None,
                        "seen_worst": round(seen[-1], 3) if seen else None},
            "cases": [r.to_dict() for r in self.results],
            "unexpected": [a.to_dict() for a in self.unexpected],
        }


# ---------------------------------------------------------------------------- placeholders

@dataclass(frozen=True)
class Resolver:
    """Placeholder values from the playbook; a missing one is a UsageError naming it."""

    values: dict[str, str]
    where: str = ""

    def __call__(self, text: str) -> str:
        def one(m: Any) -> str:
            key = m.group(1)
            if key not in self.values:
                raise UsageError(f"{self.where}{{{key}}} has no value in this playbook",
                                 hint=_placeholder_hint(key))
            return self.values[key]

        return str(PLACEHOLDER_RE.sub(one, text))

    def at(self, where: str) -> Resolver:
        return Resolver(self.values, where)


def _placeholder_hint(key: str) -> str:
    if key == "scanner":
        return "set scanner.ip (the scanner's own address in the lab)"
    if key == "gateway" or key == "iot_subnet":
        return "the playbook needs router.iot_network (subnet, gateway)"
    if key.startswith("device:"):
        return ("name a device of the playbook's devices: (or twin.devices), or give its "
                "position, {device:1} for the first")
    if key.startswith("wan:"):
        return "{wan:N} exists only on the twin (twin.wan_services)"
    return ""


def placeholders(pb: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    scanner = scanner_ip(pb)
    if scanner:
        out["scanner"] = scanner
    iot = pb.router.iot_network if pb.router is not None else None
    if iot is not None:
        out["gateway"] = str(iot.gateway_ip)
        out["iot_subnet"] = str(iot.subnet)
    devices = [(d.name, str(d.ip)) for d in pb.devices]
    if pb.twin is not None:
        devices += [(d.name, str(d.ip.ip)) for d in pb.twin.devices]
    for i, (name, ip) in enumerate(devices, start=1):
        out[f"device:{name}"] = ip
        out.setdefault(f"device:{i}", ip)  # {device:N}: the Nth device of the lab
    if pb.twin is not None:
        if pb.provider == "netns":
            for i, w in enumerate(pb.twin.wan_services):
                out[f"wan:{i}"] = str(w.ip)
    return out


def scanner_ip(pb: Any) -> str | None:
    if pb.scanner is not None and pb.scanner.ip is not None:
        return str(pb.scanner.ip)
    if pb.twin is not None and pb.twin.scanner is not None:
        return str(pb.twin.scanner.ip.ip)
    return None


# ---------------------------------------------------------------------------- stimuli

@dataclass(frozen=True)
class PreparedCase:
    case: Case
    matches: tuple[ResolvedMatch, ...]
    kind: str  # scan | recipe
    description: str
    recipe: Any = None  # labctl.traffic.recipes.RecipeRun
    scan_profile: str | None = None
    scan_targets: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()


def prepare_cases(ctx: LabContext, exp: ExpectationsFile, *, only: Sequence[str] = (),
                  scanner: str, guard: bool = True) -> list[PreparedCase]:
    """Resolve and guard every case before anything is sent."""
    from labctl.app import scan as scan_app
    from labctl.traffic import recipes

    ids = [c.id for c in exp.cases]
    unknown = [i for i in only if i not in ids]
    if unknown:
        raise UsageError(f"no such case: {', '.join(unknown)}",
                         hint=f"cases in this file: {', '.join(ids)}")
    values = placeholders(ctx.playbook)
    out: list[PreparedCase] = []
    for i, case in enumerate(exp.cases):
        if only and case.id not in only:
            continue
        res = Resolver(values, f"case {case.id} (cases[{i}]): ")
        matches = tuple(ResolvedMatch.of(m, res) for m in case.expect)
        st = case.stimulus
        if st.scan is not None:
            targets = tuple(res(t) for t in st.scan.targets)
            if guard:
                scan_app.plan_scan(ctx.loaded, targets, profile=st.scan.profile,
                                   scanner=scanner)
            out.append(PreparedCase(case, matches, "scan",
                                    f"scan {st.scan.profile} of {', '.join(targets)}",
                                    scan_profile=st.scan.profile, scan_targets=targets,
                                    addresses=targets))
            continue
        assert st.recipe is not None
        try:
            run = recipes.build(st.recipe, host=res(st.host) if st.host else None,
                                port=st.port, ports=st.ports, count=st.count,
                                targets=[res(t) for t in st.targets] if st.targets else None,
                                rate=st.rate,
                                source_ip=res(st.source_ip) if st.source_ip else None)
        except ValueError as e:
            raise UsageError(f"case {case.id} (cases[{i}].stimulus): {e}") from None
        if guard:
            scan_app.guard_addresses(ctx.loaded, list(run.addresses), scanner)
        out.append(PreparedCase(case, matches, "recipe", run.describe(), recipe=run,
                                addresses=run.addresses))
    return out


# ---------------------------------------------------------------------------- detections

def effective_detections(ctx: LabContext) -> dict[str, Detection]:
    """sensor/engines.yaml's detections with the playbook's ``sensor.engines`` applied."""
    from labctl.sensor.config import load_config

    cfg = load_config()
    overrides = dict(getattr(ctx.playbook.sensor, "engines", None) or {})
    out: dict[str, Detection] = {}
    for key, d in cfg.detections:
        o = overrides.get(key)
        enabled = d.enabled
        threshold, window = d.threshold, d.window_seconds
        if o is not None:
            enabled = o.enabled if o.enabled is not None else enabled
            threshold = o.threshold if o.threshold is not None else threshold
            window = o.window_seconds if o.window_seconds is not None else window
        out[key] = Detection(key, d.title, d.engine, enabled, d.enabled, threshold, window)
    return out


# ---------------------------------------------------------------------------- sources

class AlertPoller:
    """Reads alerts from one or more AlertSources, remembering when each was first seen."""

    #: consecutive failed reads of one source before verify-alerts gives up (exit 5)
    MAX_FAILURES = 5

    def __init__(self, sources: Sequence[Any], clock: Callable[[], float] = time.time
                 ) -> None:
        self.sources = list(sources)
        self.clock = clock
        self.seen: dict[tuple[str, str], SeenAlert] = {}
        self.errors: list[str] = []
        self.failures: dict[str, int] = {}

    def poll(self, since_ms: int) -> list[SeenAlert]:
        now = self.clock()
        for src in self.sources:
            origin = "sentinel" if "sentinel" in src.name.lower() else "sensor"
            try:
                got = src.alerts(since=since_ms)
            except AuthError:
                raise
            except LabctlError as e:
                # a flaky answer (5xx, a timeout, a dropped connection): keep polling and
                # remember why; only a source that keeps failing ends the run
                n = self.failures.get(src.name, 0) + 1
                self.failures[src.name] = n
                self.errors.append(f"{src.name}: {e.message}")
                if n >= self.MAX_FAILURES and isinstance(e, TransportError):
                    raise
                continue
            self.failures[src.name] = 0
            for a in got:
                k = (origin, str(a.id))
                if k not in self.seen:
                    self.seen[k] = SeenAlert(
                        id=str(a.id), title=a.title, engine=a.engine, severity=a.severity,
                        time=a.time / 1000.0, seen_at=now, source=a.source_address,
                        destination=a.destination_address, message=a.message, origin=origin)
        return list(self.seen.values())


def _sleep_until(deadline: float, delay: float, ctx: LabContext) -> None:
    left = deadline - time.time()
    if left > 0:
        ctx.sleep(min(delay, left))


# ---------------------------------------------------------------------------- the flow

def sensor_session(ctx: LabContext) -> Any:
    """The playbook's sensor driver, token and pin, reached through ``sensor.access`` for
    the body of a ``with``: :func:`labctl.app.sensor.sensor_session`."""
    from labctl.app.sensor import sensor_session as _session

    return _session(ctx)


def open_sentinel(ctx: LabContext) -> Any:
    from labctl.sensor.sentinel import SentinelSource

    pb = ctx.playbook
    if getattr(pb, "sentinel", None) is None or not pb.sentinel.workspace_id:
        raise UsageError("--source sentinel needs sentinel.workspace_id in the playbook",
                         hint="add sentinel: {workspace_id: <Log Analytics workspace id>}")
    return SentinelSource.from_playbook(pb.sentinel, environ=ctx.environ)


def verify_alerts(ctx: LabContext, opts: VerifyOptions, *,
                  progress: ProgressFn | None = None, sensor: Any = None,
                  sentinel: Any = None, send: Callable[..., Any] | None = None,
                  run_scan: Callable[..., Any] | None = None) -> VerifyReport:
    """Run the expectation file's cases against the lab; see the module doc for the order.

    ``sensor``/``sentinel`` (alert sources), ``send`` (recipes) and ``run_scan`` replace the
    real ones in tests; by default they are built from the playbook. The playbook's sensor
    is reached through ``sensor.access`` (:func:`sensor_session`: an SSH tunnel stays open
    for the whole run and is closed when it ends, also on failure).
    """
    if ctx.playbook.sensor is None:
        raise UsageError("the playbook has no sensor: section", hint="add sensor: {kind: ...}")
    with ExitStack() as stack:  # the sensor session, opened after the input is checked
        return _verify_alerts(ctx, opts, stack, progress=progress, sensor=sensor,
                              sentinel=sentinel, send=send, run_scan=run_scan)


def _verify_alerts(ctx: LabContext, opts: VerifyOptions, stack: ExitStack, *,
                   progress: ProgressFn | None,
                   sensor: Any, sentinel: Any, send: Callable[..., Any] | None,
                   run_scan: Callable[..., Any] | None) -> VerifyReport:
    from labctl.app import scan as scan_app
    from labctl.traffic import recipes

    say: ProgressFn = progress or (lambda ev: None)
    pb = ctx.playbook
    if pb.sensor is None:
        raise UsageError("the playbook has no sensor: section", hint="add sensor: {kind: ...}")
    name = opts.expectations or pb.sensor.expectations
    exp = load_expectations(name)
    spec = scan_app.default_scanner_spec(ctx.loaded)
    t_prep = time.time()
    cases = prepare_cases(ctx, exp, only=opts.only, scanner=spec,
                          guard=not opts.no_stimulus)
    detections = effective_detections(ctx)
    report = VerifyReport(expectations=name, source=opts.source, scanner=scanner_ip(pb),
                          started=time.time())
    report.phases["prepare"] = time.time() - t_prep

    # -- sources
    t_src = time.time()
    sources: list[Any] = []
    drv = None
    if opts.source in ("sensor", "both"):
        drv = sensor if sensor is not None else stack.enter_context(sensor_session(ctx))
        sources.append(drv)
    elif sensor is not None:
        drv = sensor  # the sensor still answers the canary and the pre-checks
    if opts.source in ("sentinel", "both"):
        sources.append(sentinel if sentinel is not None else open_sentinel(ctx))
    poller = AlertPoller(sources)
    for src in sources:  # reachable, and the credentials work: else exit 5 before sending
        _probe(ctx, src)
    default_deadline = SENTINEL_DEADLINE if opts.source == "sentinel" else SENSOR_DEADLINE
    report.phases["sources"] = time.time() - t_src

    sender = send or (lambda run: recipes.send(
        run, spec, ssh_key=pb.scanner.ssh_key if pb.scanner else None))
    scanner_addr = scanner_ip(pb)

    # -- canary
    if not opts.no_stimulus and drv is not None:
        t_c = time.time()
        say(VerifyEvent("phase", "canary: checking that the sensor sees the scanner"))
        report.canary = _canary(ctx, drv, sender, scanner_addr, opts)
        report.phases["canary"] = time.time() - t_c
        if not report.canary.get("seen"):
            report.blind = True
            why = report.canary.get("reason", "the sensor never saw the canary")
            for pc in cases:
                report.results.append(CaseResult(
                    pc.case.id, pc.case.description, Verdict.ERROR,
                    reason=f"the sensor is blind: {why}",
                    hint="check the mirror: `labctl status`, the SPAN source and destination "
                         "ports, VMQ off on the monitor NIC, the VLAN trunk (allowed VLANs) of "
                         "the monitor NIC", stimulus=pc.description))
            report.ended = time.time()
            return report

    # -- pre-checks
    t_pre = time.time()
    view, learning = _prechecks(ctx, drv, scanner_addr, report)
    report.phases["prechecks"] = time.time() - t_pre

    # -- cases
    run_start = opts.since if opts.no_stimulus and opts.since else time.time()
    since_ms = int((run_start - 2.0) * 1000)
    t_cases = time.time()
    scanner = run_scan or (lambda profile, targets: scan_app.run_scan(
        ctx.loaded, list(targets), profile=profile))
    for pc in cases:
        case = pc.case
        say(VerifyEvent("case-start", pc.description, case=case.id))
        skip = skip_reason(case, detections)
        if skip is None and opts.no_stimulus and case.expect_none:
            skip = ("a negative case proves nothing without its own stimulus "
                    "(--no-stimulus reads every alert since --since)",
                    "run it without --no-stimulus")
        if skip is not None:
            r = CaseResult(case.id, case.description, Verdict.SKIP, reason=skip[0],
                           hint=skip[1], stimulus=pc.description)
            report.results.append(r)
            say(VerifyEvent("case-done", r.reason, case=case.id, result=r))
            continue
        t0 = run_start if opts.no_stimulus else time.time()
        touched: Touched | None = None  # unknown without a stimulus
        if not opts.no_stimulus:
            try:
                touched = _stimulate(pc, sender, scanner)
            except LabctlError as e:
                r = CaseResult(case.id, case.description, Verdict.ERROR,
                               reason=f"the stimulus failed: {e.message}", hint=e.hint or "",
                               stimulus=pc.description)
                report.results.append(r)
                say(VerifyEvent("case-done", r.reason, case=case.id, result=r))
                continue
        t_end = time.time()
        within = opts.timeout or (case.deadline if opts.source == "sensor"
                                  else max(case.deadline, default_deadline))
        if opts.no_stimulus and opts.timeout is None:
            within = 0.0  # the alerts are there already or not: read once
        r = _await_case(ctx, pc, poller, since_ms=since_ms if opts.no_stimulus
                        else int((t0 - 1.0) * 1000), stimulus_start=t0, stimulus_end=t_end,
                        within=within, detections=detections, view=view, learning=learning,
                        touched=touched, drv=drv, opts=opts)
        report.results.append(r)
        say(VerifyEvent("case-done", r.reason or r.verdict.value, case=case.id, result=r))
    report.phases["cases"] = time.time() - t_cases
    report.unexpected = unexpected(
        [a for a in poller.seen.values() if a.seen_at >= run_start - 2.0],
        report.results)
    report.notes += poller.errors[:5]
    report.ended = time.time()
    return report


def _probe(ctx: LabContext, src: Any, tries: int = AlertPoller.MAX_FAILURES) -> None:
    """Read the source once; retry a transient failure, raise the last one."""
    for i in range(tries):
        try:
            src.alerts(since=int(time.time() * 1000))
            return
        except AuthError:
            raise
        except LabctlError:
            if i == tries - 1:
                raise
            ctx.sleep(0.5)


def _stimulate(pc: PreparedCase, sender: Callable[..., Any],
               scanner: Callable[..., Any]) -> Touched:
    if pc.kind == "recipe":
        run = pc.recipe
        sender(run)
        return Touched(addresses=len(run.addresses), ports=len(run.ports),
                       packets=run.packets, description=run.describe())
    result = scanner(pc.scan_profile, pc.scan_targets)
    hosts = list(getattr(result, "hosts", []) or [])
    ports = max((len(getattr(h, "ports", []) or []) for h in hosts), default=0)
    size = 0
    for t in pc.scan_targets:
        try:
            size += ipaddress.IPv4Network(t, strict=False).num_addresses
        except ValueError:
            size += 1
    return Touched(addresses=size, ports=ports, packets=0,
                   description=f"scan of {', '.join(pc.scan_targets)}")


def _await_case(ctx: LabContext, pc: PreparedCase, poller: AlertPoller, *, since_ms: int,
                stimulus_start: float, stimulus_end: float, within: float,
                detections: dict[str, Detection], view: ScannerView, learning: bool | None,
                touched: Touched | None, drv: Any, opts: VerifyOptions) -> CaseResult:
    case = pc.case
    deadline = stimulus_end + within
    delay = opts.poll_interval
    while True:
        alerts = poller.poll(since_ms)
        r = evaluate(case, pc.matches, alerts, stimulus_end=stimulus_end,
                     detections=detections, scanner=view, learning_mode=learning,
                     touched=touched, source_seen=None, stimulus=pc.description,
                     stimulus_seconds=stimulus_end - stimulus_start)
        done_early = (r.verdict == Verdict.PASS and not case.expect_none) or \
            (r.verdict == Verdict.FAIL and case.expect_none)
        if done_early or time.time() >= deadline:
            break
        _sleep_until(deadline, delay, ctx)
        delay = min(delay * 1.5, opts.max_poll_interval)
    if r.verdict == Verdict.FAIL and not case.expect_none and drv is not None \
            and touched is not None:
        seen = _source_seen(drv, view.address, stimulus_start)
        touched = _touched_from_sensor(drv, view.address, pc, touched)
        r = evaluate(case, pc.matches, alerts, stimulus_end=stimulus_end,
                     detections=detections, scanner=view, learning_mode=learning,
                     touched=touched, source_seen=seen, stimulus=pc.description,
                     stimulus_seconds=stimulus_end - stimulus_start)
    return r


def _devices_by_id(drv: Any) -> dict[int, Any]:
    try:
        return {d.id: d for d in drv.devices()}
    except LabctlError:
        return {}


def _connections_of(drv: Any, address: str) -> tuple[set[int], list[Any]] | None:
    """The sensor's device ids of ``address`` and all its connections (None: unreadable)."""
    try:
        devices = _devices_by_id(drv)
        conns = list(drv.connections())
    except LabctlError:
        return None
    return {i for i, d in devices.items() if address in d.ip_addresses}, conns


def _source_seen(drv: Any, address: str | None, since: float) -> bool | None:
    """Whether the sensor shows a connection of ``address`` active since ``since``."""
    if address is None:
        return None
    view = _connections_of(drv, address)
    if view is None:
        return None
    mine, conns = view
    if not mine:
        return False
    since_ms = int((since - 1.0) * 1000)
    return any((c.first_device_id in mine or c.second_device_id in mine)
               and (c.last_seen or 0) >= since_ms for c in conns)


def _touched_from_sensor(drv: Any, address: str | None, pc: PreparedCase,
                         touched: Touched) -> Touched:
    """For a scan, what the sensor's connections say it touched (ports per host, peers)."""
    if pc.kind != "scan" or address is None:
        return touched
    view = _connections_of(drv, address)
    if view is None:
        return touched
    mine, conns = view
    peers = 0
    ports = 0
    for c in conns:
        if c.first_device_id in mine or c.second_device_id in mine:
            peers += 1
            ports = max(ports, len(c.ports))
    return Touched(addresses=max(peers, 0), ports=max(ports, touched.ports),
                   packets=touched.packets,
                   description=f"{touched.description or 'the stimulus'}, as the sensor "
                               "counted it")


def _canary(ctx: LabContext, drv: Any, sender: Callable[..., Any], scanner: str | None,
            opts: VerifyOptions) -> dict[str, Any]:
    from labctl.traffic import recipes

    gateway = placeholders(ctx.playbook).get("gateway")
    if scanner is None or gateway is None:
        return {"seen": True, "skipped": True,
                "reason": "no scanner address or gateway in the playbook: canary skipped"}
    run = recipes.build("udp-canary", host=gateway)
    port = run.ports[0]
    sent = time.time()
    try:
        sender(run)
    except LabctlError as e:
        return {"seen": False, "reason": f"the canary could not be sent: {e.message}",
                "port": port}
    deadline = sent + opts.canary_timeout
    delay = opts.poll_interval
    since_ms = int((sent - 1.0) * 1000)
    failures = 0
    while True:
        try:
            devices = _devices_by_id(drv)
            conns = drv.connections()
            failures = 0
        except AuthError:
            raise
        except LabctlError:  # a flaky answer: try again, give up after a few in a row
            failures += 1
            if failures >= AlertPoller.MAX_FAILURES:
                raise
            devices, conns = {}, []
        ids = {i for i, d in devices.items() if scanner in d.ip_addresses}
        gw = {i for i, d in devices.items() if gateway in d.ip_addresses}
        for c in conns:
            pair = {c.first_device_id, c.second_device_id}
            if pair & ids and pair & gw and port in c.ports and \
                    (c.last_seen or 0) >= since_ms:
                return {"seen": True, "port": port, "payload": run.payload,
                        "seconds": round(time.time() - sent, 3)}
        if time.time() >= deadline:
            why = (f"no connection {scanner} -> {gateway} udp/{port} within "
                   f"{opts.canary_timeout:g} s")
            if not ids:
                why += f" (the sensor has no device {scanner} at all)"
            return {"seen": False, "port": port, "reason": why}
        _sleep_until(deadline, delay, ctx)
        delay = min(delay * 1.5, opts.max_poll_interval)


def _prechecks(ctx: LabContext, drv: Any, scanner: str | None, report: VerifyReport
               ) -> tuple[ScannerView, bool | None]:
    pb = ctx.playbook
    playbook_auth = scanner is not None and scanner in \
        {str(a) for a in pb.sensor.authorized_scanners}
    sensor_scanner = False
    learning: bool | None = None
    if drv is not None:
        try:
            learning = drv.status().learning_mode
        except LabctlError as e:
            report.notes.append(f"could not read the sensor's status: {e.message}")
        if learning is None:
            learning = pb.sensor.learning_mode
            report.notes.append(f"the sensor does not report learning mode; the playbook "
                                f"says learning_mode: {str(learning).lower()}")
        if scanner is not None:
            for d in _devices_by_id(drv).values():
                if scanner in d.ip_addresses:
                    sensor_scanner = bool(d.scanner)
                    if d.authorized and not d.scanner:
                        # authorized = a known device (learned), not an authorized scanner:
                        # the reference names the scanner flag as the scan-alert suppressor
                        report.notes.append(
                            f"the sensor lists {scanner} as an authorized device (not as a "
                            "scanner); scan alerts still fire for it")
    else:
        learning = pb.sensor.learning_mode
    if learning:
        report.notes.append("the sensor is in learning mode: Policy Violation alerts are "
                            "withheld")
    view = ScannerView(scanner, sensor_scanner=sensor_scanner,
                       playbook_authorized=playbook_auth)
    if view.authorized:
        report.notes.append(f"the scanner {scanner} is authorized: {view.why_authorized()}; "
                            "scan alerts will not fire")
    return view, learning
