"""Scan history in SQLite (``<state dir>/scans/history.sqlite``), raw XML beside it.

Tables: ``scans`` (one row per ``labctl scan``: lab, scanner, profile, targets, every nmap
argv, start and end), ``hosts`` (address, MAC, vendor, state per scan) and ``ports`` (state
and the service seen on it: name, product, version, extra info, CPE, script output); the
``services`` view lists the identified services on open ports. A
scan's targets are stored normalised (sorted, JSON) so "the last two scans of the same
targets" is one query.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from labctl.core.errors import UsageError
from labctl.core.state import state_home
from labctl.scans.result import HostResult, NmapRun, PortResult, ScanResult

SCHEMA = """
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
CREATE VIEW IF NOT EXISTS services AS
  SELECT scan_id, addr, port, proto, service, product, version, extrainfo, cpe, scripts
  FROM ports WHERE state = 'open' AND service != '';
"""


def scans_dir() -> Path:
    return state_home() / "scans"


def db_path() -> Path:
    return scans_dir() / "history.sqlite"


def connect() -> sqlite3.Connection:
    scans_dir().mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(db_path()), timeout=10)
    con.execute("PRAGMA foreign_keys = ON")
    con.executescript(SCHEMA)
    return con


def targets_key(targets: list[str]) -> str:
    return json.dumps(sorted(targets))


def save_xml(runs: list[NmapRun], stamp: float | None = None) -> list[str]:
    """Write each pass's raw XML under ``<state>/scans/xml/`` and return the paths."""
    d = scans_dir() / "xml"
    d.mkdir(parents=True, exist_ok=True)
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(stamp or time.time()))
    tag = uuid.uuid4().hex[:8]
    paths = []
    for i, r in enumerate(runs):
        p = d / f"{base}-{tag}-pass{i + 1}.xml"
        p.write_text(r.xml, encoding="utf-8")
        paths.append(str(p))
    return paths


def save(result: ScanResult) -> int:
    with closing(connect()) as con, con:
        cur = con.execute(
            "INSERT INTO scans (lab, scanner, profile, targets, excludes, argv, xml_paths, "
            "started, ended) VALUES (?,?,?,?,?,?,?,?,?)",
            (result.lab, result.scanner, result.profile, targets_key(result.targets),
             json.dumps(result.excludes), json.dumps(result.argv), json.dumps(result.xml_paths),
             result.started, result.ended))
        sid = int(cur.lastrowid or 0)
        for h in result.hosts:
            con.execute(
                "INSERT INTO hosts VALUES (?,?,?,?,?,?,?,?,?,?)",
                (sid, h.addr, h.state, h.reason, h.ipv4, h.ipv6, h.mac, h.vendor,
                 json.dumps(h.hostnames), json.dumps(h.hostscripts)))
            for p in h.ports:
                con.execute(
                    "INSERT OR REPLACE INTO ports VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (sid, h.addr, p.port, p.proto, p.state, p.reason, p.service, p.product,
                     p.version, p.extrainfo, p.cpe, json.dumps(p.scripts)))
    result.id = sid
    return sid


def _row_to_result(con: sqlite3.Connection, row: tuple[Any, ...]) -> ScanResult:
    (sid, lab, scanner, profile, targets, excludes, argv, xml_paths, started, ended) = row
    res = ScanResult(lab=lab, scanner=scanner, profile=profile, targets=json.loads(targets),
                     excludes=json.loads(excludes), started=started, ended=ended, id=sid,
                     xml_paths=json.loads(xml_paths))
    res.runs = [NmapRun(argv=a, started=started, ended=ended, xml="") for a in json.loads(argv)]
    hosts: dict[str, HostResult] = {}
    for (addr, state, reason, ipv4, ipv6, mac, vendor, hostnames, hostscripts) in con.execute(
            "SELECT addr, state, reason, ipv4, ipv6, mac, vendor, hostnames, hostscripts "
            "FROM hosts WHERE scan_id=? ORDER BY rowid", (sid,)):
        hosts[addr] = HostResult(addr=addr, state=state, reason=reason or "", ipv4=ipv4 or "",
                                 ipv6=ipv6 or "", mac=mac or "", vendor=vendor or "",
                                 hostnames=json.loads(hostnames or "[]"),
                                 hostscripts=json.loads(hostscripts or "{}"))
    for (addr, port, proto, state, reason, service, product, version, extrainfo, cpe,
         scripts) in con.execute(
            "SELECT addr, port, proto, state, reason, service, product, version, extrainfo, "
            "cpe, scripts FROM ports WHERE scan_id=? ORDER BY addr, proto, port", (sid,)):
        if addr in hosts:
            hosts[addr].ports.append(PortResult(
                port=port, proto=proto, state=state, reason=reason or "", service=service or "",
                product=product or "", version=version or "", extrainfo=extrainfo or "",
                cpe=cpe or "", scripts=json.loads(scripts or "{}")))
    res.hosts = list(hosts.values())
    return res


_COLS = "id, lab, scanner, profile, targets, excludes, argv, xml_paths, started, ended"


def load(scan_id: int) -> ScanResult:
    with closing(connect()) as con:
        row = con.execute(f"SELECT {_COLS} FROM scans WHERE id=?", (scan_id,)).fetchone()
        if row is None:
            raise UsageError(f"no scan #{scan_id} in the history",
                             hint="`labctl scan history` lists the saved scans")
        return _row_to_result(con, row)


def list_scans(lab: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Newest first: id, lab, scanner, profile, targets, start/end, hosts up, open ports."""
    q = (f"SELECT {_COLS}, (SELECT COUNT(*) FROM hosts h WHERE h.scan_id=s.id AND "
         "h.state='up'), (SELECT COUNT(*) FROM ports p WHERE p.scan_id=s.id AND "
         "p.state='open') FROM scans s")
    args: tuple[Any, ...] = ()
    if lab:
        q += " WHERE lab=?"
        args = (lab,)
    q += " ORDER BY id DESC LIMIT ?"
    out = []
    with closing(connect()) as con:
        for row in con.execute(q, (*args, limit)):
            (sid, lab_, scanner, profile, targets, excludes, argv, xml_paths, started, ended,
             up, nopen) = row
            out.append({"id": sid, "lab": lab_, "scanner": scanner, "profile": profile,
                        "targets": json.loads(targets), "excludes": json.loads(excludes),
                        "argv": json.loads(argv), "xml": json.loads(xml_paths),
                        "started": started, "ended": ended, "hosts_up": up,
                        "open_ports": nopen})
    return out


def last_two(lab: str | None = None, targets: list[str] | None = None) -> tuple[int, int]:
    """The ids of the last two scans of the same targets (of the newest scan, by default)."""
    with closing(connect()) as con:
        if targets is None:
            q = "SELECT lab, targets FROM scans"
            a: tuple[Any, ...] = ()
            if lab:
                q += " WHERE lab=?"
                a = (lab,)
            row = con.execute(q + " ORDER BY id DESC LIMIT 1", a).fetchone()
            if row is None:
                raise UsageError("the scan history is empty",
                                 hint="run `labctl scan TARGET` twice, then diff")
            lab, key = row
        else:
            key = targets_key(targets)
        q = "SELECT id FROM scans WHERE targets=?"
        a = (key,)
        if lab:
            q += " AND lab=?"
            a = (key, lab)
        ids = [r[0] for r in con.execute(q + " ORDER BY id DESC LIMIT 2", a)]
    if len(ids) < 2:
        raise UsageError(f"only {len(ids)} scan(s) of {', '.join(json.loads(key))} in the history; "
                         "a diff needs two",
                         hint="scan the same targets again, or name two scan ids: "
                              "labctl scan diff OLD NEW")
    return ids[1], ids[0]
