"""History in SQLite, diff between scans and baseline deviations (no nmap needed).

Scan results are built from the real XML fixtures, then altered the way a network drifts.
"""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import pytest

from labctl.app import scan as app
from labctl.core.errors import ConfigError, LabctlError, UsageError
from labctl.scans import history
from labctl.scans.diff import baseline_deviations, diff_scans, load_baseline
from labctl.scans.result import NmapRun, PortResult, ScanResult, parse_nmap_xml

FIX = Path(__file__).parent / "fixtures" / "nmap"


def result_from(name: str, targets: list[str], lab: str = "homelab") -> ScanResult:
    xml = (FIX / name).read_text()
    info, hosts = parse_nmap_xml(xml)
    argv = info["command_line"].split()
    return ScanResult(lab=lab, scanner="netns:scfix-k", profile="service", targets=targets,
                      excludes=[], started=1000.0, ended=1013.0, hosts=hosts,
                      runs=[NmapRun(argv=argv, started=1000.0, ended=1013.0, xml=xml)])


def test_save_load_roundtrip_and_schema(_isolated_state):
    r = result_from("service-scripts.xml", ["10.213.0.11"])
    r.xml_paths = history.save_xml(r.runs, r.started)
    sid = history.save(r)
    assert sid == r.id == 1
    assert Path(r.xml_paths[0]).read_text().startswith("<?xml")
    assert str(_isolated_state) in r.xml_paths[0]
    back = history.load(sid)
    assert back.to_dict()["hosts"] == r.to_dict()["hosts"]
    assert back.argv == [r.runs[0].argv] and back.argv[0][:3] == ["nmap", "-sV", "-sC"]
    con = sqlite3.connect(history.db_path())
    tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"scans", "hosts", "ports"} <= tables
    row = con.execute("SELECT addr, port, proto, state, service, product, version, scripts "
                      "FROM ports WHERE port=80").fetchone()
    assert row[:7] == ("10.213.0.11", 80, "tcp", "open", "http", "lighttpd", "1.4.59")
    assert "PetFeeder" in row[7]
    svc = con.execute("SELECT addr, port, service, product, version FROM services "
                      "ORDER BY port").fetchall()
    assert svc == [("10.213.0.11", 22, "ssh", "OpenSSH", "9.2p1 Debian 2+deb12u3"),
                   ("10.213.0.11", 80, "http", "lighttpd", "1.4.59"),
                   ("10.213.0.11", 6668, "tcpwrapped", "", "")]
    rows = app.history()
    assert rows[0]["id"] == 1 and rows[0]["open_ports"] == 3 and rows[0]["hosts_up"] == 1
    assert rows[0]["scanner"] == "netns:scfix-k" and rows[0]["targets"] == ["10.213.0.11"]


def test_diff_detects_every_kind_of_change():
    old = result_from("filtered.xml", ["10.213.0.10-12"])
    new = copy.deepcopy(old)
    h11 = new.host("10.213.0.11")
    h11.ports = [p for p in h11.ports if p.port != 22]  # 22 closed
    h11.ports.append(PortResult(6668, "tcp", "open"))  # 6668 opened
    h11.port(80).product, h11.port(80).version = "lighttpd", "1.4.59"
    old.host("10.213.0.11").port(80).product = "lighttpd"
    old.host("10.213.0.11").port(80).version = "1.4.45"
    new.hosts = [h for h in new.hosts if h.addr != "10.213.0.12"]  # gone
    new.hosts.append(copy.deepcopy(old.host("10.213.0.12")))
    new.hosts[-1].addr = "10.213.0.24"  # new host with 502 open
    texts = [c["text"] for c in diff_scans(old, new)]
    assert texts == [
        "10.213.0.11 22/tcp closed",
        "10.213.0.11 80/tcp version lighttpd 1.4.45 -> lighttpd 1.4.59",
        "10.213.0.11 6668/tcp opened",
        "10.213.0.12 gone",
        "10.213.0.24 new",
        "10.213.0.24 502/tcp opened",
    ]
    assert diff_scans(old, copy.deepcopy(old)) == []


def test_cli_diff_exit_codes_and_default_pair(cli_run):
    a = result_from("filtered.xml", ["10.213.0.10-12"])
    history.save(a)
    other = result_from("service-scripts.xml", ["10.213.0.11"])
    history.save(other)  # different targets: not part of the default pair
    b = copy.deepcopy(a)
    b.id = None
    b.host("10.213.0.11").ports.append(PortResult(6668, "tcp", "open"))
    history.save(b)
    r = cli_run("scan", "diff", "--json")
    assert r.exit_code == 4, r
    d = r.json()
    assert (d["old"], d["new"]) == (1, 3)
    assert [c["text"] for c in d["changes"]] == ["10.213.0.11 6668/tcp opened"]
    r = cli_run("scan", "diff")
    assert r.exit_code == 4 and "10.213.0.11 6668/tcp opened" in r.stdout
    c = copy.deepcopy(b)
    c.id = None
    history.save(c)
    r = cli_run("scan", "diff")
    assert r.exit_code == 0 and "no change" in r.stdout, r
    r = cli_run("scan", "diff", "1", "2", "--json")
    assert r.exit_code == 4 and r.json()["old_targets"] == ["10.213.0.10-12"]
    r = cli_run("scan", "history", "--json")
    assert [s["id"] for s in r.json()["scans"]] == [4, 3, 2, 1]
    r = cli_run("scan", "history")
    assert r.exit_code == 0 and "10.213.0.10-12" in r.stdout


def test_diff_needs_two_scans(cli_run):
    r = cli_run("scan", "diff")
    assert r.exit_code == 2 and "history is empty" in r.stderr
    history.save(result_from("filtered.xml", ["10.213.0.10-12"]))
    r = cli_run("scan", "diff")
    assert r.exit_code == 2 and "a diff needs two" in r.stderr
    r = cli_run("scan", "diff", "1", "99")
    assert r.exit_code == 2 and "no scan #99" in r.stderr


def test_baseline_deviations(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("name: fix\nhosts:\n  10.213.0.11:\n    open: [22/tcp, 80, 443/tcp]\n"
                 "  10.213.0.12:\n    open: [502/tcp]\n  10.213.0.13:\n    open: [22]\n"
                 "  10.213.0.99:\n    open: [22]\n")
    base = load_baseline(str(p))
    res = result_from("filtered.xml", ["10.213.0.10-14"])
    texts = [c["text"] for c in baseline_deviations(res, base)]
    # .99 lies outside the scanned targets, so it is not judged
    assert texts == ["10.213.0.11 443/tcp closed", "10.213.0.13 gone"]
    p.write_text("name: fix\nunexpected_hosts: true\nhosts:\n  10.213.0.11:\n"
                 "    open: [22/tcp, 80/tcp]\n")
    texts = [c["text"] for c in baseline_deviations(res, load_baseline(str(p)))]
    assert texts == ["10.213.0.12 new", "10.213.0.12 502/tcp opened"]


def test_bad_baseline_is_a_clear_error(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text("name: fix\nhosts:\n  10.213.0.11:\n    open: [22/tcp, http]\n")
    with pytest.raises(ConfigError) as ei:
        load_baseline(str(p))
    assert ei.value.line == 4 and "'http' is not a port" in str(ei.value)
    with pytest.raises(UsageError, match="unknown baseline"):
        load_baseline("nope")


def test_bundled_baselines_load():
    from labctl.core.assets import asset_path

    names = [x.stem for x in asset_path("scans", "baselines").glob("*.yaml")]
    assert names
    for n in names:
        assert load_baseline(n).name == n


# The schema exactly as labctl wrote it before the history was versioned (user_version 0).
UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  lab TEXT NOT NULL,
  scanner TEXT NOT NULL,
  profile TEXT NOT NULL,
  targets TEXT NOT NULL,
  excludes TEXT NOT NULL,
  argv TEXT NOT NULL,
  xml_paths TEXT NOT NULL,
  started REAL NOT NULL,
  ended REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS scans_targets ON scans(lab, targets, id);
CREATE TABLE IF NOT EXISTS hosts (
  scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
  addr TEXT NOT NULL,
  state TEXT NOT NULL,
  reason TEXT, ipv4 TEXT, ipv6 TEXT, mac TEXT, vendor TEXT,
  hostnames TEXT, hostscripts TEXT,
  PRIMARY KEY (scan_id, addr)
);
CREATE TABLE IF NOT EXISTS ports (
  scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
  addr TEXT NOT NULL,
  port INTEGER NOT NULL,
  proto TEXT NOT NULL,
  state TEXT NOT NULL,
  reason TEXT, service TEXT, product TEXT, version TEXT, extrainfo TEXT, cpe TEXT,
  scripts TEXT,
  PRIMARY KEY (scan_id, addr, port, proto)
);
"""
UNVERSIONED_VIEW = """
CREATE VIEW IF NOT EXISTS services AS
  SELECT scan_id, addr, port, proto, service, product, version, extrainfo, cpe, scripts
  FROM ports WHERE state = 'open' AND service != '';
"""


def write_unversioned_history(with_view: bool = True) -> None:
    """A history file as the unversioned code left it: two scans, hosts and ports."""
    history.scans_dir().mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(history.db_path())
    con.executescript(UNVERSIONED_SCHEMA + (UNVERSIONED_VIEW if with_view else ""))
    with con:
        for sid, version in ((1, "1.4.45"), (2, "1.4.59")):
            con.execute("INSERT INTO scans VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (sid, "homelab", "netns:scfix-k", "service", '["10.213.0.11"]', "[]",
                         '[["nmap", "-sV", "10.213.0.11"]]', "[]", 1000.0 + sid, 1010.0 + sid))
            con.execute("INSERT INTO hosts VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (sid, "10.213.0.11", "up", "arp-response", "10.213.0.11", "",
                         "F2:B6:18:B9:B6:C8", "", "[]", "{}"))
            con.execute("INSERT INTO ports VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (sid, "10.213.0.11", 80, "tcp", "open", "syn-ack", "http", "lighttpd",
                         version, "", "cpe:/a:lighttpd:lighttpd", '{"http-title": "Feeder"}'))
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()


def user_version() -> int:
    con = sqlite3.connect(history.db_path())
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


@pytest.mark.parametrize("with_view", [True, False])
def test_unversioned_history_is_stamped_and_keeps_its_rows(with_view):
    write_unversioned_history(with_view)
    rows = history.list_scans()
    assert user_version() == history.SCHEMA_VERSION == 1
    assert [(r["id"], r["hosts_up"], r["open_ports"]) for r in rows] == [(2, 1, 1), (1, 1, 1)]
    old = history.load(1)
    assert old.argv == [["nmap", "-sV", "10.213.0.11"]] and old.started == 1001.0
    h = old.host("10.213.0.11")
    assert h.mac == "F2:B6:18:B9:B6:C8" and h.reason == "arp-response"
    p = h.port(80)
    assert (p.service, p.product, p.version, p.cpe) == ("http", "lighttpd", "1.4.45",
                                                       "cpe:/a:lighttpd:lighttpd")
    assert p.scripts == {"http-title": "Feeder"}
    assert history.last_two() == (1, 2)
    assert [c["text"] for c in diff_scans(old, history.load(2))] == [
        "10.213.0.11 80/tcp version lighttpd 1.4.45 -> lighttpd 1.4.59"]
    # the services view exists afterwards, also where the old file predates it
    con = sqlite3.connect(history.db_path())
    assert con.execute("SELECT scan_id, port, version FROM services ORDER BY scan_id"
                       ).fetchall() == [(1, 80, "1.4.45"), (2, 80, "1.4.59")]
    con.close()
    # new scans go on from the old ids
    assert history.save(result_from("service-scripts.xml", ["10.213.0.11"])) == 3


def test_new_history_is_created_at_the_current_version():
    assert history.list_scans() == []
    assert user_version() == history.SCHEMA_VERSION


def test_history_from_a_newer_labctl_is_refused_untouched():
    history.scans_dir().mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(history.db_path())
    con.execute("CREATE TABLE scans (id INTEGER PRIMARY KEY, future TEXT)")
    con.execute(f"PRAGMA user_version = {history.SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(LabctlError, match="reads up to version 1") as ei:
        history.list_scans()
    assert "upgrade labctl" in (ei.value.hint or "")
    assert user_version() == history.SCHEMA_VERSION + 1


def test_unversioned_file_with_other_tables_is_refused_untouched():
    history.scans_dir().mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(history.db_path())
    con.execute("CREATE TABLE scans (id INTEGER PRIMARY KEY, what TEXT)")
    con.commit()
    con.close()
    with pytest.raises(LabctlError, match="not a labctl scan history"):
        history.list_scans()
    assert user_version() == 0
    con = sqlite3.connect(history.db_path())
    tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert tables == {"scans"}


def test_a_file_that_is_not_sqlite_is_a_clear_error():
    history.scans_dir().mkdir(parents=True, exist_ok=True)
    history.db_path().write_bytes(b"not a database, just text " * 100)
    with pytest.raises(LabctlError, match="cannot open the scan history"):
        history.list_scans()
    assert history.db_path().read_bytes().startswith(b"not a database")
