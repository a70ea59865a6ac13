"""traffic report --html: one self-contained file, rendered in headless Chromium.

The screenshot stays in the test's output folder (pytest's tmp_path, kept for the last
runs under /tmp/pytest-of-$USER/), printed on stdout so a person can look at it.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labctl.cli import run
from tests.helpers.traffic_pcaps import write_pcap
from tests.test_traffic_report import FEEDER, VACUUM, frames

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.sections: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "rect" and "cell" in a.get("class", "").split():
            self.cells.append(a)
        if tag == "section" and "device" in a.get("class", "").split():
            self.sections.append(a["data-ip"])
        for k in ("src", "href"):
            if k in a:
                self.external.append(a[k])


def _browser_service(url: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    return host.endswith((".google.com", ".googleapis.com", ".gstatic.com", ".gvt1.com"))


def _html(tmp_path: Path) -> Path:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    out = tmp_path / "report.html"
    assert run(["traffic", "report", "--pcap", str(pcap), "--html", str(out)]) == 0
    return out


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    text = _html(tmp_path).read_text()
    dom = _Dom()
    dom.feed(text)
    assert dom.external == [] and "<script" not in text
    assert len(dom.cells) == 3 * 24  # three devices x 24 hours
    feeder = {int(c["data-hour"]): int(c["data-packets"]) for c in dom.cells
              if c["data-device"] == FEEDER}
    assert feeder[1] == feeder[9] == feeder[18] == 36 and feeder[3] == 0
    assert "daily at about 01:00, 09:00 and 18:00" in text


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package chromium)")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = _html(tmp_path)
    profile = tmp_path / "profile"
    netlog = tmp_path / "netlog.json"
    shot = tmp_path / "report.png"
    # in a fresh network namespace holding only a down loopback: Chromium's own background
    # requests (time and component services, despite the flags) cannot leave the machine
    jail = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []
    base = [*jail, CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=1200,1600"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, env=env, check=True).stdout
    subprocess.run([*base, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, env=env, check=True)
    parsed = _Dom()
    parsed.feed(dom)  # the DOM as Chromium built it, not the file's text
    assert len(parsed.cells) == 3 * 24
    assert sorted(parsed.sections) == sorted(["172.16.1.1", FEEDER, VACUUM])
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the page made no request: the net log holds no http(s) or ws URL
    urls = []
    if netlog.exists():
        text = netlog.read_text(errors="replace")
        try:
            log = json.loads(text)
            events = log.get("events", [])
        except ValueError:  # a log cut at exit: scan the text
            events = []
            urls = [u for u in ("http://", "https://", "ws://") if u in text]
        for ev in events:
            url = str(ev.get("params", {}).get("url", ""))
            if url.startswith(("http:", "https:", "ws:", "wss:")):
                urls.append(url)
    # the page's own requests; Chromium's background services (google.com hosts) are its own
    page_urls = [u for u in urls if not _browser_service(u)]
    assert page_urls == []
    print(f"screenshot: {shot}")
