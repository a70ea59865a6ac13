"""Real nmap, run only from inside test namespaces, against listeners with known ports.

Lab (tests/helpers/scan_lab.py): scanner namespace <p>-k with a bridge 10.213.0.1/24;
10.213.0.11 runs ssh/http/"tcpwrapped" listeners and drops 8080 with nft (filtered);
10.213.0.12 runs an http listener on 8008; 10.213.0.13 is up with nothing open;
10.213.0.15 listens on 50505 only (outside nmap's top 1000 ports);
10.213.0.10 and .14 do not exist. A tiny DNS server answers the scanner's PTR queries.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.scan_lab import make_lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

EXPECTED_OPEN = {
    "10.213.0.11": ["22/tcp", "80/tcp", "6668/tcp"],
    "10.213.0.12": ["8008/tcp"],
    "10.213.0.13": [],
}
QUICK = ("name: quick\nargs: [-sT, -n, -Pn, -p, '22,80,443,6668,8008']\n"
         "timeout: 120\nstats_every: 100ms\n")


@pytest.fixture(scope="module")
def lab():
    lab = make_lab({"10.213.0.11": {22: "ssh", 80: "http", 6668: "close"},
                    "10.213.0.12": {8008: "http"}, "10.213.0.13": {},
                    "10.213.0.15": {50505: "close"}},
                   macs={"10.213.0.11": "10:d5:61:a1:00:11"})
    try:
        lab.lab_dns()  # reverse DNS answered at once, as a lab router would
        lab.drop_port("10.213.0.11", 8080)
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def quick(tmp_path) -> str:
    p = tmp_path / "quick.yaml"
    p.write_text(QUICK)
    return str(p)


def scan(cli_run, lab, *args):
    return cli_run("scan", "--scanner", f"netns:{lab.scanner_ns}", "--scope", "10.213.0.0/24",
                   *args)


def test_smart_and_one_shot_service_agree_port_by_port(cli_run, lab, _isolated_state):
    r_smart = scan(cli_run, lab, "--profile", "smart", "--json", "10.213.0.10-14")
    assert r_smart.exit_code == 0, r_smart
    r_svc = scan(cli_run, lab, "--profile", "service", "--json", "10.213.0.10-14")
    assert r_svc.exit_code == 0, r_svc
    smart, svc = r_smart.json(), r_svc.json()
    for doc in (smart, svc):
        up = {h["addr"]: sorted((f"{p['port']}/{p['proto']}" for p in h["ports"]
                                 if p["state"] == "open"), key=lambda k: int(k.split("/")[0]))
              for h in doc["hosts"] if h["state"] == "up"}
        up.pop("10.213.0.1", None)  # the scanner's own bridge address
        assert up == EXPECTED_OPEN, doc["profile"]
        h11 = next(h for h in doc["hosts"] if h["addr"] == "10.213.0.11")
        ports = {f"{p['port']}/{p['proto']}": p for p in h11["ports"]}
        assert (ports["22/tcp"]["service"], ports["22/tcp"]["product"],
                ports["22/tcp"]["version"]) == ("ssh", "OpenSSH", "9.2p1 Debian 2+deb12u3")
        assert (ports["80/tcp"]["product"], ports["80/tcp"]["version"]) == ("lighttpd", "1.4.59")
        assert ports["80/tcp"]["scripts"]["http-title"] == "PetFeeder Control"
        assert ports["6668/tcp"]["service"] == "tcpwrapped"
        assert ports["8080/tcp"]["state"] == "filtered"
        assert h11["mac"] == "10:D5:61:A1:00:11" and h11["vendor"] == "Tuya Smart"
        assert h11["state"] == "up"
        h12 = next(h for h in doc["hosts"] if h["addr"] == "10.213.0.12")
        p8008 = next(p for p in h12["ports"] if p["port"] == 8008)
        assert p8008["product"] == "lighttpd" and p8008["scripts"]["http-title"]
    # exact argv recorded; nmap ran inside the scanner namespace; XML saved in the state dir
    assert len(smart["argv"]) == 2 and len(svc["argv"]) == 1
    for argv in smart["argv"] + svc["argv"]:
        assert argv[:4] == ["ip", "netns", "exec", lab.scanner_ns] and argv[4] == "nmap"
        assert argv[argv.index("-oX") + 1] == "-" and "--stats-every" in argv
    assert svc["argv"][0][5:7] == ["-sV", "-sC"] and svc["argv"][0][-1] == "10.213.0.10-14"
    pass2 = smart["argv"][1]
    assert pass2[pass2.index("-p") + 1] == "22,80,6668,8008"
    assert pass2[-2:] == ["10.213.0.11", "10.213.0.12"]  # only live hosts with open ports
    for p in smart["xml"] + svc["xml"]:
        assert Path(p).is_relative_to(_isolated_state) and "<nmaprun" in Path(p).read_text()
    # same targets, same findings: diff of the two saved scans is empty (exit 0)
    r = cli_run("scan", "diff", "--json")
    assert r.exit_code == 0, r
    assert r.json()["changes"] == [] and (r.json()["old"], r.json()["new"]) == (1, 2)
    r = cli_run("scan", "history")
    assert r.exit_code == 0 and "smart" in r.stdout and "service" in r.stdout


def test_drift_opened_port_diff_and_baseline(cli_run, lab, quick, tmp_path):
    r = cli_run("-v", "scan", "--scanner", f"netns:{lab.scanner_ns}", "--scope",
                "10.213.0.0/24", "--profile", quick, "10.213.0.11-12")
    assert r.exit_code == 0, r
    # human output: host table (MAC, vendor) then port table; -v shows the argv and XML
    head = next(ln for ln in r.stdout.splitlines() if "host" in ln and "MAC" in ln)
    assert [c.strip() for c in head.strip("┃ ").split("┃")] == \
        ["host", "MAC", "vendor", "state", "open ports"]
    assert any(ln.strip("│ ").startswith("10.213.0.11") and " up " in ln
               for ln in r.stdout.splitlines())
    assert "6668" in r.stdout and "OpenSSH" not in r.stdout  # -sT only, no -sV
    assert f"nmap argv: ip netns exec {lab.scanner_ns} nmap -sT -n -Pn" in r.stderr
    assert "raw XML: " in r.stderr
    base = tmp_path / "base.yaml"
    base.write_text("name: lab\nhosts:\n  10.213.0.11: {open: [22/tcp, 80/tcp, 6668/tcp]}\n"
                    "  10.213.0.12: {open: [8008/tcp]}\n")
    r = scan(cli_run, lab, "--profile", quick, "--baseline", str(base), "--json",
             "10.213.0.11-12")
    assert r.exit_code == 0 and r.json()["deviations"] == [], r
    lab.add_listener("10.213.0.11", 443, "close")
    r = scan(cli_run, lab, "--profile", quick, "--baseline", str(base), "10.213.0.11-12")
    assert r.exit_code == 4, r
    assert "10.213.0.11 443/tcp opened" in r.stdout
    r = cli_run("scan", "diff")
    assert r.exit_code == 4, r
    assert r.stdout.strip().splitlines()[1:] == ["  10.213.0.11 443/tcp opened"]
    r = cli_run("scan", "diff", "1", "3", "--json")
    assert [c["text"] for c in r.json()["changes"]] == ["10.213.0.11 443/tcp opened"]


def test_ipv6_scan(cli_run, lab, quick):
    r = cli_run("scan", "--scanner", f"netns:{lab.scanner_ns}", "--scope", "fd00:5c::/64",
                "--profile", quick, "--json", "--no-save", "fd00:5c::12")
    assert r.exit_code == 0, r
    doc = r.json()
    assert "-6" in doc["argv"][0]
    (h,) = doc["hosts"]
    assert h["addr"] == "fd00:5c::12" and h["ipv6"] == "fd00:5c::12"
    assert [p["port"] for p in h["ports"] if p["state"] == "open"] == [8008]
    assert {p["port"]: p["state"] for p in h["ports"]}[22] == "closed"
    r = cli_run("scan", "history", "--json")
    assert r.json()["scans"] == []  # --no-save


def test_progress_callback_and_xml_out(lab, quick, tmp_path):
    from labctl.app.scan import run_scan
    from labctl.scans.profiles import load_profile_file

    events = []
    prof = load_profile_file(quick).model_copy(update={"args": ["-sT", "-n", "-Pn", "-p",
                                                                "1-9000", "--max-rate", "4000"]})
    out = tmp_path / "copy.xml"
    res = run_scan(None, ["10.213.0.12"], profile=prof, scanner=f"netns:{lab.scanner_ns}",
                   scope=["10.213.0.0/24"], progress=events.append, xml_out=str(out),
                   save=False)
    assert res.id is None and res.xml_paths == []
    assert res.open_ports() == {"10.213.0.12": ["8008/tcp"]}
    assert events, "no progress events from --stats-every"
    assert all(e.phase == "scan" and 0 <= e.percent <= 100 for e in events)
    assert any("Connect Scan" in e.task for e in events)
    assert "<nmaprun" in out.read_text()


def test_discovery_and_full_profiles(cli_run, lab):
    r = scan(cli_run, lab, "--profile", "discovery", "--json", "--no-save", "10.213.0.10-15")
    assert r.exit_code == 0, r
    doc = r.json()
    assert [h["addr"] for h in doc["hosts"] if h["state"] == "up"] == \
        ["10.213.0.11", "10.213.0.12", "10.213.0.13", "10.213.0.15"]
    assert all(h["ports"] == [] and h["mac"] for h in doc["hosts"] if h["state"] == "up")
    assert "-sn" in doc["argv"][0]
    r = scan(cli_run, lab, "--profile", "full", "--json", "--no-save", "10.213.0.15")
    assert r.exit_code == 0, r
    (h,) = r.json()["hosts"]
    assert [p["port"] for p in h["ports"] if p["state"] == "open"] == [50505]
    r = scan(cli_run, lab, "--profile", "full", "10.213.0.0/16")
    assert r.exit_code == 2 and "outside the lab scope" in r.stderr
