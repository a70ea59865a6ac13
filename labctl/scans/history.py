"""Scan history in SQLite (``<state dir>/scans/history.sqlite``), raw XML beside it.

Tables: ``scans`` (one row per ``labctl scan``: lab, scanner, profile, targets, every nmap
argv, start and end), ``hosts`` (address, MAC, vendor, state per scan) and ``ports`` (state
and the service seen on it: name, product, version, extra info, CPE, script output); the
``services`` view lists the identified services on open ports. A scan's targets are stored
normalised (sorted, JSON) so "the last two scans of the same targets" is one query.

The schema is versioned with ``PRAGMA user_version`` (:data:`MIGRATIONS`). A file from
before versioning (user_version 0, tables present) is labctl's version 1 and is stamped so
when it is first opened; its rows are kept.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

from labctl.core.errors import LabctlError, UsageError
from labctl.core.state import state_home
from labctl.scans.result import HostResult, NmapRun, PortResult, ScanResult

# Version 1: the schema as it stood when versioning began. Every statement is idempotent,
# so it also completes a version-0 database written before the services view existed.
_V1 = (
    """CREATE TABLE IF NOT EXISTS scans (
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
)""",
    "CREATE INDEX IF NOT EXISTS scans_targets ON scans(lab, targets, id)",
    """CREATE TABLE IF NOT EXISTS hosts (
  scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
  addr TEXT NOT NULL,
  state TEXT NOT NULL,
  reason TEXT, ipv4 TEXT, ipv6 TEXT, mac TEXT, vendor TEXT,
  hostnames TEXT, hostscripts TEXT,
  PRIMARY KEY (scan_id, addr)
)""",
    """CREATE TABLE IF NOT EXISTS ports (
  scan_id INTEGER NOT NULL REFERENCES scans(id) ON DELETE CASCADE,
  addr TEXT NOT NULL,
  port INTEGER NOT NULL,
  proto TEXT NOT NULL,
  state TEXT NOT NULL,
  reason TEXT, service TEXT, product TEXT, version TEXT, extrainfo TEXT, cpe TEXT,
  scripts TEXT,
  PRIMARY KEY (scan_id, addr, port, proto)
)""",
    """CREATE VIEW IF NOT EXISTS services AS
  SELECT scan_id, addr, port, proto, service, product, version, extrainfo, cpe, scripts
  FROM ports WHERE state = 'open' AND service != ''""",
)

#: ``MIGRATIONS[n]`` brings a database from version n - 1 to version n (``PRAGMA
#: user_version``). Add a schema change as a new entry; never edit a released one.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1}
SCHEMA_VERSION = max(MIGRATIONS)

SCAN_COLUMNS = ("id", "lab", "scanner", "profile", "targets", "excludes", "argv",
                "xml_paths", "started", "ended")
HOST_COLUMNS = ("scan_id", "addr", "state", "reason", "ipv4", "ipv6", "mac", "vendor",
                "hostnames", "hostscripts")
PORT_COLUMNS = ("scan_id", "addr", "port", "proto", "state", "reason", "service", "product",
                "version", "extrainfo", "cpe", "scripts")
_TABLES = {"scans": SCAN_COLUMNS, "hosts": HOST_COLUMNS, "ports": PORT_COLUMNS}


def scans_dir() -> Path:
    return state_home() / "scans"


def db_path() -> Path:
    return scans_dir() / "history.sqlite"


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {str(r["name"]) for r in con.execute(f"PRAGMA table_info({table})")}


def _check_unversioned(con: sqlite3.Connection) -> None:
    """A version-0 file holding tables: labctl's schema from before versioning, or refuse."""
    for table, cols in _TABLES.items():
        have = _columns(con, table)
        missing = [c for c in cols if c not in have]
        if have and missing:
            raise LabctlError(f"{db_path()}: table {table!r} has no column "
                             f"{', '.join(missing)}; this is not a labctl scan history",
                             hint="move the file away; labctl then starts a new history")


def migrate(con: sqlite3.Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; return the version it had before.

    Runs in one write transaction, so two labctl processes opening a new history at once
    migrate it once, and a failed step leaves the file as it was. A current database is
    only read, without taking the write lock.
    """
    if int(con.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    con.execute("BEGIN IMMEDIATE")
    try:
        before = int(con.execute("PRAGMA user_version").fetchone()[0])
        if before > SCHEMA_VERSION:
            raise LabctlError(f"{db_path()} is scan history version {before}; this labctl "
                             f"reads up to version {SCHEMA_VERSION}",
                             hint="upgrade labctl, or move the file away to start a new "
                                  "history")
        if before == 0:
            _check_unversioned(con)
        for version in range(before + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {int(version)}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return before


def connect() -> sqlite3.Connection:
    """Open the history (created and migrated as needed); rows are :class:`sqlite3.Row`."""
    scans_dir().mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(db_path()), timeout=10, isolation_level=None)
    try:
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys = ON")
        migrate(con)
    except sqlite3.DatabaseError as e:
        con.close()
        raise LabctlError(f"cannot open the scan history {db_path()}: {e}",
                          hint="if it is not a labctl scan history, move it away; labctl "
                               "then starts a new one") from None
    except BaseException:
        con.close()
        raise
    return con


def _insert(table: str, columns: tuple[str, ...], *, replace: bool = False) -> str:
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    return (f"{verb} INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})")


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
    scan_cols = SCAN_COLUMNS[1:]  # id is assigned by SQLite
    with closing(connect()) as con:
        con.execute("BEGIN")
        try:
            cur = con.execute(_insert("scans", scan_cols), (
                result.lab, result.scanner, result.profile, targets_key(result.targets),
                json.dumps(result.excludes), json.dumps(result.argv),
                json.dumps(result.xml_paths), result.started, result.ended))
            sid = int(cur.lastrowid or 0)
            for h in result.hosts:
                con.execute(_insert("hosts", HOST_COLUMNS), (
                    sid, h.addr, h.state, h.reason, h.ipv4, h.ipv6, h.mac, h.vendor,
                    json.dumps(h.hostnames), json.dumps(h.hostscripts)))
                for p in h.ports:
                    con.execute(_insert("ports", PORT_COLUMNS, replace=True), (
                        sid, h.addr, p.port, p.proto, p.state, p.reason, p.service,
                        p.product, p.version, p.extrainfo, p.cpe, json.dumps(p.scripts)))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    result.id = sid
    return sid


def _row_to_result(con: sqlite3.Connection, row: sqlite3.Row) -> ScanResult:
    sid, started, ended = int(row["id"]), float(row["started"]), float(row["ended"])
    res = ScanResult(lab=row["lab"], scanner=row["scanner"], profile=row["profile"],
                     targets=json.loads(row["targets"]), excludes=json.loads(row["excludes"]),
                     started=started, ended=ended, id=sid,
                     xml_paths=json.loads(row["xml_paths"]))
    res.runs = [NmapRun(argv=a, started=started, ended=ended, xml="")
                for a in json.loads(row["argv"])]
    hosts: dict[str, HostResult] = {}
    for h in con.execute(f"SELECT {', '.join(HOST_COLUMNS)} FROM hosts WHERE scan_id=? "
                         "ORDER BY rowid", (sid,)):
        hosts[h["addr"]] = HostResult(
            addr=h["addr"], state=h["state"], reason=h["reason"] or "", ipv4=h["ipv4"] or "",
            ipv6=h["ipv6"] or "", mac=h["mac"] or "", vendor=h["vendor"] or "",
            hostnames=json.loads(h["hostnames"] or "[]"),
            hostscripts=json.loads(h["hostscripts"] or "{}"))
    for p in con.execute(f"SELECT {', '.join(PORT_COLUMNS)} FROM ports WHERE scan_id=? "
                         "ORDER BY addr, proto, port", (sid,)):
        if p["addr"] in hosts:
            hosts[p["addr"]].ports.append(PortResult(
                port=p["port"], proto=p["proto"], state=p["state"], reason=p["reason"] or "",
                service=p["service"] or "", product=p["product"] or "",
                version=p["version"] or "", extrainfo=p["extrainfo"] or "",
                cpe=p["cpe"] or "", scripts=json.loads(p["scripts"] or "{}")))
    res.hosts = list(hosts.values())
    return res


_COLS = ", ".join(SCAN_COLUMNS)


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
         "h.state='up') AS hosts_up, (SELECT COUNT(*) FROM ports p WHERE p.scan_id=s.id AND "
         "p.state='open') AS open_ports FROM scans s")
    args: tuple[Any, ...] = ()
    if lab:
        q += " WHERE lab=?"
        args = (lab,)
    q += " ORDER BY id DESC LIMIT ?"
    out = []
    with closing(connect()) as con:
        for r in con.execute(q, (*args, limit)):
            out.append({"id": r["id"], "lab": r["lab"], "scanner": r["scanner"],
                        "profile": r["profile"], "targets": json.loads(r["targets"]),
                        "excludes": json.loads(r["excludes"]), "argv": json.loads(r["argv"]),
                        "xml": json.loads(r["xml_paths"]), "started": r["started"],
                        "ended": r["ended"], "hosts_up": r["hosts_up"],
                        "open_ports": r["open_ports"]})
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
            lab, key = row["lab"], row["targets"]
        else:
            key = targets_key(targets)
        q = "SELECT id FROM scans WHERE targets=?"
        a = (key,)
        if lab:
            q += " AND lab=?"
            a = (key, lab)
        ids = [int(r["id"]) for r in con.execute(q + " ORDER BY id DESC LIMIT 2", a)]
    if len(ids) < 2:
        raise UsageError(f"only {len(ids)} scan(s) of {', '.join(json.loads(key))} in the history; "
                         "a diff needs two",
                         hint="scan the same targets again, or name two scan ids: "
                              "labctl scan diff OLD NEW")
    return ids[1], ids[0]
