"""JUnit XML for verify-alerts: one testcase per case, readable by any CI system.

The shape is the common subset CI systems read (Jenkins, GitLab, GitHub annotations): a
``testsuites`` root with one ``testsuite``; each case is a ``testcase`` whose ``time`` is the
detection latency; a FAIL carries ``<failure message=REASON>``, an ERROR ``<error>``, a SKIP
``<skipped message=REASON>``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from labctl.app.verify_core import CaseResult, Verdict


def render(results: Sequence[CaseResult], *, suite: str, timestamp: str,
           hostname: str = "labctl") -> bytes:
    counts = {v: sum(1 for r in results if r.verdict == v) for v in Verdict}
    total = sum((r.latency or 0.0) for r in results)
    root = ET.Element("testsuites", name="labctl verify-alerts", tests=str(len(results)),
                      failures=str(counts[Verdict.FAIL]), errors=str(counts[Verdict.ERROR]),
                      skipped=str(counts[Verdict.SKIP]), time=f"{total:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)),
                       failures=str(counts[Verdict.FAIL]), errors=str(counts[Verdict.ERROR]),
                       skipped=str(counts[Verdict.SKIP]), time=f"{total:.3f}",
                       timestamp=timestamp, hostname=hostname)
    for r in results:
        tc = ET.SubElement(ts, "testcase", name=r.id, classname=f"verify-alerts.{suite}",
                           time=f"{(r.latency or 0.0):.3f}")
        detail = "\n".join(x for x in (r.reason, f"hint: {r.hint}" if r.hint else "",
                                       f"stimulus: {r.stimulus}" if r.stimulus else "") if x)
        if r.verdict == Verdict.FAIL:
            ET.SubElement(tc, "failure", message=r.reason, type="NoMatchingAlert").text = detail
        elif r.verdict == Verdict.ERROR:
            ET.SubElement(tc, "error", message=r.reason, type="VerifyError").text = detail
        elif r.verdict == Verdict.SKIP:
            ET.SubElement(tc, "skipped", message=r.reason)
        if r.description:
            ET.SubElement(tc, "system-out").text = r.description
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + body


def write(path: str | Path, data: bytes) -> Path:
    """Write atomically (a temporary file in the same folder, then a rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return p
