"""verify-alerts' reasoning, case by case, without a sensor: every FAIL reason in its order,
SKIP for a detection that is off by default, negatives, latency, JUnit output."""

from __future__ import annotations

import junitparser
import pytest

from labctl.app import junit
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
from labctl.core.expectations import Case

SCANNER = "172.16.1.50"
DETS = {
    "port_scan": Detection("port_scan", "Port Scan Detected", "Anomaly", True, True, 25, 120),
    "arp_scan": Detection("arp_scan", "ARP Address Scan Detected", "Anomaly", False, False,
                          40, 360),
    "new_asset": Detection("new_asset", "New Asset Detected", "Policy Violation", True, True),
}


def _case(**kw) -> Case:
    data = {"id": "c1", "stimulus": {"recipe": "syn-sweep", "host": "{device:feeder1}",
                                     "ports": 30},
            "expect": [{"title": "Port Scan Detected", "engine": "Anomaly",
                        "source": "{scanner}"}], "requires": "port_scan"}
    data.update(kw)
    return Case.model_validate(data)


def _matches(case: Case) -> list[ResolvedMatch]:
    return [ResolvedMatch.of(m, lambda s: s.replace("{scanner}", SCANNER)) for m in case.expect]


def _alert(title="Port Scan Detected", engine="Anomaly", src=SCANNER, t=100.4, seen=100.9,
           id="1", message=""):
    return SeenAlert(id=id, title=title, engine=engine, severity="Critical", time=t,
                     seen_at=seen, source=src, destination="172.16.1.21", message=message)


DEFAULT_VIEW = ScannerView(SCANNER)
DEFAULT_TOUCHED = Touched(addresses=1, ports=30, packets=30)


def _eval(case, alerts, *, dets=DETS, scanner=DEFAULT_VIEW, learning=False,
          touched=DEFAULT_TOUCHED, seen=True):
    return evaluate(case, _matches(case), alerts, stimulus_end=100.0, detections=dets,
                    scanner=scanner, learning_mode=learning, touched=touched,
                    source_seen=seen, stimulus_seconds=0.5)


def test_pass_with_latency_from_the_alert_time_and_from_when_it_was_seen():
    r = _eval(_case(), [_alert()])
    assert r.verdict == Verdict.PASS
    assert r.latency == pytest.approx(0.4) and r.seen_latency == pytest.approx(0.9)


def test_v1_alert_without_addresses_matches_on_the_ip_in_its_message():
    a = _alert(src=None, message=f"Port scan detected from {SCANNER} (30 ports)")
    assert _eval(_case(), [a]).verdict == Verdict.PASS
    other = _alert(src=None, message="Port scan detected from 172.16.1.500")
    assert _eval(_case(), [other]).verdict == Verdict.FAIL


def test_fail_reasons_in_their_documented_order():
    case = _case()
    r = _eval(case, [], scanner=ScannerView(SCANNER, sensor_scanner=True))
    assert r.verdict == Verdict.FAIL and "authorized scanner" in r.reason
    assert "scanner: true" in r.reason
    r = _eval(case, [], scanner=ScannerView(SCANNER, playbook_authorized=True))
    assert "sensor.authorized_scanners" in r.reason
    disabled = dict(DETS, port_scan=Detection("port_scan", "Port Scan Detected", "Anomaly",
                                              False, True, 25, 120))
    r = _eval(case, [], dets=disabled)
    assert "is disabled" in r.reason and "sensor.engines.port_scan.enabled" in r.hint
    raised = dict(DETS, port_scan=Detection("port_scan", "Port Scan Detected", "Anomaly",
                                            True, True, 100, 120))
    r = _eval(case, [], dets=raised)
    assert r.reason.startswith("threshold not reached: the stimulus touched 30 ports")
    assert "needs 100 in 120 s" in r.reason
    r = _eval(case, [], seen=False)
    assert "did not see the traffic" in r.reason and "mirror" in r.hint
    r = _eval(case, [_alert(title="Address Scan Detected", id="9")])
    assert r.reason.startswith("no matching alert") and "closest: [Critical] Address Scan" \
        in r.reason


def test_learning_mode_explains_a_missing_policy_violation():
    case = _case(id="new-mac", requires="new_asset",
                 stimulus={"recipe": "new-mac", "host": "{gateway}",
                           "source_ip": "172.16.1.201"},
                 expect=[{"title": "New Asset Detected", "engine": "Policy Violation"}])
    r = _eval(case, [], learning=True)
    assert "learning mode" in r.reason
    assert _eval(case, [], learning=False).reason.startswith("no matching alert")


def test_negative_case_fails_when_the_alert_fires_and_passes_otherwise():
    case = _case(id="below", expect_none=True,
                 stimulus={"recipe": "syn-sweep", "host": "{device:feeder1}", "ports": 20})
    assert _eval(case, []).verdict == Verdict.PASS
    r = _eval(case, [_alert()])
    assert r.verdict == Verdict.FAIL and "must not" in r.reason and "threshold (25" in r.hint
    # an empty expect with expect_none: nothing at all from the scanner
    quiet = _case(id="quiet", expect=[], expect_none=True)
    assert _eval(quiet, [_alert(title="Something else")]).verdict == Verdict.FAIL
    assert _eval(quiet, [_alert(src="172.16.1.21")]).verdict == Verdict.PASS


def test_min_count_and_old_alerts_outside_the_window():
    case = _case(expect=[{"title": "Port Scan Detected", "min_count": 2}])
    r = _eval(case, [_alert()])
    assert r.verdict == Verdict.FAIL and "1 of 2 matched" in r.reason
    assert _eval(case, [_alert(), _alert(id="2")]).verdict == Verdict.PASS
    stale = _alert(t=10.0, seen=10.0)
    assert _eval(_case(), [stale]).verdict == Verdict.FAIL


def test_skip_for_a_detection_off_by_default_names_where_to_turn_it_on():
    case = _case(id="arp", requires="arp_scan",
                 stimulus={"recipe": "arp-sweep", "targets": ["{iot_subnet}"], "count": 45},
                 expect=[{"title": "ARP Address Scan Detected"}])
    reason, hint = skip_reason(case, DETS)
    assert "off by default" in reason and "sensor.engines.arp_scan.enabled: true" in hint
    on = dict(DETS, arp_scan=Detection("arp_scan", "ARP Address Scan Detected", "Anomaly",
                                       True, False, 40, 360))
    assert skip_reason(case, on) is None


def test_unexpected_alerts_are_those_no_case_matched():
    a, b = _alert(id="1"), _alert(id="2", title="New Asset Detected")
    r = CaseResult("c1", "", Verdict.PASS, matched=[a])
    assert unexpected([a, b, b], [r]) == [b]


def test_junit_parses_with_the_expected_counts(tmp_path):
    results = [CaseResult("ok", "", Verdict.PASS, latency=0.5),
               CaseResult("bad", "d", Verdict.FAIL, reason="no matching alert", hint="h"),
               CaseResult("off", "", Verdict.SKIP, reason="off by default"),
               CaseResult("blind", "", Verdict.ERROR, reason="the sensor is blind")]
    path = junit.write(tmp_path / "r.xml", junit.render(results, suite="nmap-default",
                                                         timestamp="2026-12-02T04:00:00"))
    xml = junitparser.JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    s = suites[0]
    assert (s.tests, s.failures, s.errors, s.skipped) == (4, 1, 1, 1)
    cases = {c.name: c for c in s}
    assert cases["ok"].time == pytest.approx(0.5) and cases["ok"].is_passed
    assert cases["bad"].result[0].message == "no matching alert"
    assert isinstance(cases["off"].result[0], junitparser.Skipped)
    assert isinstance(cases["blind"].result[0], junitparser.Error)
