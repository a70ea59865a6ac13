"""SQLite persistence for the embedded sensor: alerts, devices, connections, events, tokens, users.

Why SQLite in WAL mode with one-second batches: the capture thread must never wait on disk,
and a restart must lose nothing. The serve loop hands the rows changed in the last second
(:meth:`labctl.sensor.engine.Sensor.take_dirty`) to :meth:`SensorStore.write_batch`, which
commits them in one transaction; an unclean stop therefore loses at most about one second.

Tokens are stored as SHA-256 hashes (a token is 32 random bytes, so a fast hash is enough);
the plaintext is shown once by ``labctl sensor token create``. User passwords are stored as
PBKDF2-SHA256 hashes with a per-user salt. The first user is ``admin``/``admin`` with a
forced password change, like a fresh D4IoT sensor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from labctl.core.errors import LabctlError, UsageError
from labctl.core.state import ensure_private_dir

Row = dict[str, Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS connections (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY, time INTEGER NOT NULL,
                                   data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, timestamp INTEGER NOT NULL,
                                   data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, description TEXT NOT NULL,
                                   created INTEGER NOT NULL, last_used INTEGER);
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, salt TEXT NOT NULL, hash TEXT NOT NULL,
                                  must_change INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flows (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,
                                  last INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS flows_seq ON flows (seq);
CREATE INDEX IF NOT EXISTS flows_last ON flows (last);
"""

PBKDF2_ROUNDS = 200_000
KEEP_EVENTS = 20_000
DEFAULT_USER = "admin"
DEFAULT_PASSWORD = "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _hash_password(password: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS).hex()


def password_problems(password: str) -> list[str]:
    """The sensor's policy: 8+ characters with upper and lower case, a digit and a symbol."""
    out = []
    if len(password) < 8:
        out.append("at least 8 characters")
    if not any(c.isupper() for c in password):
        out.append("an upper-case letter")
    if not any(c.islower() for c in password):
        out.append("a lower-case letter")
    if not any(c.isdigit() for c in password):
        out.append("a digit")
    if all(c.isalnum() for c in password):
        out.append("a symbol")
    return out


class SensorStore:
    """One SQLite database (``<state>/sensor.db``); safe to share between threads."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        try:
            # only what labctl creates gets 0700: an existing (shared) folder keeps its mode
            ensure_private_dir(self.dir)
        except OSError as e:
            raise UsageError(f"cannot use sensor state directory {self.dir}: {e.strerror}",
                             hint="pass --state DIR with a writable folder") from None
        self.path = self.dir / "sensor.db"
        self._lock = threading.Lock()
        try:
            self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LabctlError(f"sensor database {self.path} is unusable: {e}",
                              hint="move the file away to start with an empty sensor") from None
        self._ensure_admin()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ---- sensor state ------------------------------------------------------------------

    def write_batch(self, devices: list[Row], connections: list[Row], alerts: list[Row],
                    events: list[Row], flows: list[Row] | None = None,
                    flow_meta: dict[str, Any] | None = None) -> None:
        """Commit one batch in one transaction. ``flows`` are the changed flows (each with
        its new ``seq``); ``flow_meta`` (from :meth:`Sensor.take_dirty
        <labctl.sensor.engine.Sensor.take_dirty>`) names the evicted flows to delete, the
        last ``seq`` and the next flow id (kept in ``meta``, so both stay monotonic across
        restarts even when the newest flow is gone), and the age and count bounds, which
        the table keeps too."""
        flows = flows or []
        deleted = list((flow_meta or {}).get("deleted") or [])
        if not (devices or connections or alerts or events or flows or deleted):
            return
        with self._lock:
            self.db.execute("BEGIN")
            try:
                self.db.executemany("INSERT OR REPLACE INTO devices VALUES (?, ?)",
                                    [(d["id"], json.dumps(d)) for d in devices])
                self.db.executemany(
                    "INSERT OR REPLACE INTO connections VALUES (?, ?)",
                    [(f"{c['client']}|{c['server']}|{c['proto']}", json.dumps(c))
                     for c in connections])
                self.db.executemany("INSERT OR REPLACE INTO alerts VALUES (?, ?, ?)",
                                    [(a["id"], a["time"], json.dumps(a)) for a in alerts])
                self.db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?)",
                                    [(e["seq"], e["timestamp"], json.dumps(e)) for e in events])
                if events:  # keep the newest KEEP_EVENTS (the API serves at most 100)
                    newest = max(e["seq"] for e in events)
                    self.db.execute("DELETE FROM events WHERE seq <= ?",
                                    (newest - KEEP_EVENTS,))
                if flows or deleted:
                    self._write_flows(flows, deleted, flow_meta or {})
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _write_flows(self, flows: list[Row], deleted: list[int], meta: dict[str, Any]
                     ) -> None:
        self.db.executemany("INSERT OR REPLACE INTO flows VALUES (?, ?, ?, ?)",
                            [(f["id"], f["seq"], f["last"], json.dumps(f)) for f in flows])
        self.db.executemany("DELETE FROM flows WHERE id = ?", [(i,) for i in deleted])
        for key in ("seq", "next_id"):
            if key in meta:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                (f"flow_{key}", str(int(meta[key]))))
        newest = max((f["last"] for f in flows), default=None)
        if newest is not None and meta.get("max_age_ms"):
            self.db.execute("DELETE FROM flows WHERE last < ?",
                            (newest - int(meta["max_age_ms"]),))
        cap = meta.get("max_flows")
        if cap:
            over = self.db.execute("SELECT COUNT(*) FROM flows").fetchone()[0] - int(cap)
            if over > 0:  # the engine evicts first; this only trims a store left larger
                self.db.execute("DELETE FROM flows WHERE id IN (SELECT id FROM flows "
                                "ORDER BY last, id LIMIT ?)", (over,))

    def flows(self, after_seq: int = 0, limit: int = 10_000) -> list[Row]:
        """Stored flows with ``seq`` above ``after_seq``, in ``seq`` order, at most ``limit``."""
        with self._lock:
            rows = self.db.execute("SELECT data FROM flows WHERE seq > ? ORDER BY seq LIMIT ?",
                                   (after_seq, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def load_flows(self) -> tuple[list[Row], dict[str, Any]]:
        """Every stored flow and the flow store's bookkeeping (last seq, next id)."""
        with self._lock:
            rows = [json.loads(r[0]) for r in self.db.execute("SELECT data FROM flows")]
            meta = dict(self.db.execute(
                "SELECT key, value FROM meta WHERE key IN ('flow_seq', 'flow_next_id')"
            ).fetchall())
        return rows, {"seq": int(meta.get("flow_seq", 0)),
                      "next_id": int(meta.get("flow_next_id", 1))}

    def load_all(self) -> tuple[list[Row], list[Row], list[Row], list[Row]]:
        with self._lock:
            devs = [json.loads(r[0]) for r in self.db.execute("SELECT data FROM devices")]
            conns = [json.loads(r[0]) for r in self.db.execute("SELECT data FROM connections")]
            alerts = [json.loads(r[0]) for r in
                      self.db.execute("SELECT data FROM alerts ORDER BY id")]
            events = [json.loads(r[0]) for r in self.db.execute(
                "SELECT data FROM (SELECT seq, data FROM events ORDER BY seq DESC LIMIT 20000) "
                "ORDER BY seq")]
        return devs, conns, alerts, events

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ---- tokens ------------------------------------------------------------------------

    def create_token(self, description: str = "") -> str:
        token = secrets.token_hex(32)
        with self._lock:
            self.db.execute("INSERT INTO tokens VALUES (?, ?, ?, NULL)",
                            (hash_token(token), description, int(time.time() * 1000)))
        return token

    def list_tokens(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute(
                "SELECT hash, description, created, last_used FROM tokens ORDER BY created, rowid"
            ).fetchall()
        return [{"id": h[:12], "description": d, "created": c, "used": u}
                for h, d, c, u in rows]

    def check_token(self, token: str) -> bool:
        """True if ``token`` is valid; records the time it was used (the UI's "Used" column)."""
        if not token:
            return False
        h = hash_token(token)
        with self._lock:
            row = self.db.execute("SELECT hash FROM tokens WHERE hash=?", (h,)).fetchone()
            if row is None:
                return False
            self.db.execute("UPDATE tokens SET last_used=? WHERE hash=?",
                            (int(time.time() * 1000), h))
        return hmac.compare_digest(row[0], h)

    # ---- users -------------------------------------------------------------------------

    def _ensure_admin(self) -> None:
        with self._lock:
            n = self.db.execute("SELECT COUNT(*) FROM users").fetchone()[0]
            if n == 0:
                salt = secrets.token_bytes(16)
                self.db.execute("INSERT INTO users VALUES (?, ?, ?, 1)",
                                (DEFAULT_USER, salt.hex(),
                                 _hash_password(DEFAULT_PASSWORD, salt)))

    def check_password(self, user: str, password: str) -> tuple[bool, bool]:
        """(password correct, must change) for ``user``."""
        with self._lock:
            row = self.db.execute("SELECT salt, hash, must_change FROM users WHERE name=?",
                                  (user,)).fetchone()
        if row is None:
            _hash_password(password, b"0" * 16)  # same cost for unknown users
            return False, False
        ok = hmac.compare_digest(_hash_password(password, bytes.fromhex(row[0])), row[1])
        return ok, bool(row[2])

    def user_exists(self, user: str) -> bool:
        with self._lock:
            row = self.db.execute("SELECT 1 FROM users WHERE name=?", (user,)).fetchone()
        return row is not None

    def is_admin(self, user: str) -> bool:
        """Whether ``user`` has the Admin role. The embedded sensor has one user, the
        factory ``admin``, and it is the administrator."""
        return user == DEFAULT_USER and self.user_exists(user)

    def set_password(self, user: str, new_password: str) -> None:
        salt = secrets.token_bytes(16)
        with self._lock:
            self.db.execute("UPDATE users SET salt=?, hash=?, must_change=0 WHERE name=?",
                            (salt.hex(), _hash_password(new_password, salt), user))
