"""Apply SDN edits as a transaction: back up, apply, read back, restore on any failure.

Why: a half-written SDN table set can break the router's Wi-Fi and DHCP for every network.
The router has no transaction of its own, so labctl makes one:

1. back up every SDN key (from the same fresh read the edit was computed from) and write
   the backup to a file in the lab's state directory before touching anything;
2. compare-and-swap: read the SDN keys again just before writing; if anything differs from
   the read the edit was planned from, write nothing and raise :class:`StaleRead` (the
   caller plans again from a fresh read);
3. apply the edit in one ``applyapp.cgi`` POST (never retried);
4. read every SDN key back and compare every one of them, so every record of every SDN
   table, ours or not, with the expected state (backup + edit);
5. on any failure (dropped connection, 5xx, unexpected reply, read-back mismatch) restore:
   from a fresh read, post the backup value of each key this edit wrote that differs, read
   back and verify; a restore whose own POST fails is tried again from a fresh read, up to
   :data:`RESTORE_ATTEMPTS` times, and only then reported, naming the backup file. Keys this
   edit did not write are never posted, so a restore cannot undo somebody else's change.

What "restored" means: every SDN key reads back as it read before. The web API cannot
unset an nvram key (``applyapp.cgi`` only ever sets values, like the firmware's apply
handlers in web.c), so a key the failed apply created stays present with an empty value;
an unset key and an empty one read the same through ``appGet.cgi`` (``nvram_get`` returns
""), and that read is what is compared.

The outcome is a :class:`TxReport`; failures raise with the report attached (``.report``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.core.errors import ApiError, ConfigError, ConvergenceError, Interrupted, LabctlError
from labctl.router.asus import codec, sdn
from labctl.router.base import NetworkEdit, StaleRead, TransactionFailed

__all__ = ["TransactionFailed", "TxReport", "load_backup", "restore_backup", "run",
           "write_backup"]

BACKUP_KIND = "asus-sdn-nvram"
#: restore attempts after a failed apply, each from a fresh read
RESTORE_ATTEMPTS = 3

log = logging.getLogger("labctl.router.tx")


@dataclass
class TxReport:
    action: str
    sdn_idx: str
    changed_keys: list[str] = field(default_factory=list)
    applied: bool = False
    verified: bool = False
    failure: str | None = None
    restored: bool | None = None  # None: no restore needed
    restore_verified: bool | None = None
    restore_mismatch: list[str] = field(default_factory=list)
    restore_attempts: int = 0
    backup_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _write_secret_json(doc: dict[str, Any], path: Path) -> Path:
    """Write ``doc`` to ``path`` as a new 0600 file: a temporary file created with O_EXCL
    (``mkstemp``) in the target folder, then renamed over ``path``. An existing file keeps
    neither its mode nor its inode, and a symlink at ``path`` is replaced, not followed.
    Backups hold Wi-Fi passphrases."""
    if path.is_dir():
        raise ConfigError("is a directory, not a file", file=str(path))
    from labctl.core.state import write_private_json

    return write_private_json(doc, path)


def write_backup(values: dict[str, str], directory: Path, label: str = "sdn-backup") -> Path:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = directory / f"{label}-{stamp}.json"
    n = 1
    while path.exists():  # several transactions in one second keep every backup
        n += 1
        path = directory / f"{label}-{stamp}-{n}.json"
    return _write_secret_json({"kind": BACKUP_KIND, "keys": values}, path)


def write_backup_to(values: dict[str, str], path: Path) -> Path:
    """Write a backup to the file the user named: always a new 0600 file, also over an
    existing (e.g. 0644) one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write_secret_json({"kind": BACKUP_KIND, "keys": values}, path)
    except OSError as e:
        raise ConfigError(f"cannot write the backup: {e.strerror or e}",
                          file=str(path)) from None


def sdn_only(state: dict[str, str]) -> dict[str, str]:
    """The backed-up part of a read: every SDN key, unset ones as ""."""
    keys = sdn.sdn_keys()
    return {k: state.get(k, "") for k in keys}


def _mismatch(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    return sorted(k for k in expected if actual.get(k, "") != expected[k])


def describe_mismatch(keys: list[str], expected: dict[str, str], actual: dict[str, str]
                      ) -> list[str]:
    """The differing keys, and for an SDN table the records that differ (1-based), so a
    corrupted unrelated row (say the Guest network's ``subnet_rl`` record) is named."""
    out = []
    for k in keys:
        if k in codec.SDN_TABLE_KEYS:
            want = codec.parse(expected.get(k, "")).rows
            got = codec.parse(actual.get(k, "")).rows
            bad = [str(i + 1) for i in range(max(len(want), len(got)))
                   if i >= len(want) or i >= len(got) or want[i].fields != got[i].fields]
            out.append(f"{k} record {','.join(bad)}" if bad else k)
        else:
            out.append(k)
    return out


def restore_values(client: Any, backup: dict[str, str], rc_service: str,
                   current: dict[str, str] | None, only: set[str] | None = None) -> list[str]:
    """Post the backup value of every key that differs (all keys if current is unknown),
    limited to ``only`` when given; return the keys (of ``only``) still differing after a
    read-back."""
    keys = [k for k in backup if only is None or k in only]
    if current is None:
        todo = {k: backup[k] for k in keys}
    else:
        todo = {k: backup[k] for k in keys if current.get(k, "") != backup[k]}
    if todo:
        client.apply(todo, rc_service)
    after = sdn_only(sdn.read_state(client))
    return _mismatch({k: backup[k] for k in keys}, after)


def run(client: Any, state: dict[str, str], edit: NetworkEdit, *, backup_dir: Path
        ) -> TxReport:
    """Apply ``edit`` computed from ``state`` (a fresh read) as a transaction."""
    report = TxReport(edit.action, edit.target, sorted(edit.values))
    if edit.empty:
        report.verified = True
        return report
    backup = sdn_only(state)
    report.backup_file = str(write_backup(backup, backup_dir))
    expected = dict(backup)
    expected.update({k: v for k, v in edit.values.items() if k in expected})
    # compare-and-swap: the tables must still be what the edit was planned from
    now = sdn_only(sdn.read_state(client))
    moved = _mismatch(backup, now)
    if moved:
        raise StaleRead("the router's SDN settings changed since they were read ("
                        + ", ".join(describe_mismatch(moved, backup, now)[:4])
                        + "); nothing was written",
                        hint="another client changed the router; run again to plan from a "
                             "fresh read")
    try:
        client.apply(edit.values, edit.service)
        report.applied = True
        after = sdn_only(sdn.read_state(client))
        bad = _mismatch(expected, after)
        if bad:
            named = describe_mismatch(bad, expected, after)
            raise ConvergenceError(f"read-back mismatch after apply in {', '.join(named[:8])}"
                                   + (" ..." if len(bad) > 8 else ""))
        report.verified = True
        return report
    except LabctlError as e:
        report.failure = f"{type(e).__name__}: {e.message}"
        log.warning("apply failed (%s); restoring the backup", e.message)
        _restore(client, backup, edit, report)
        if report.restore_verified:
            msg = (f"applying the router change failed ({e.message}); the backup was "
                   "restored and verified, the router is as it was before")
            hint = e.hint or "run the command again once the router is healthy"
        else:
            msg = (f"applying the router change failed ({e.message}) and the automatic "
                   f"restore could not be verified "
                   f"({', '.join(report.restore_mismatch[:8]) or 'router unreachable'})")
            hint = (f"restore it with `labctl router restore {report.backup_file}` once the "
                    "router answers")
        raise TransactionFailed(msg, report, e, hint) from None
    except KeyboardInterrupt:
        # Ctrl-C mid-apply must not leave a half-written router either.
        report.failure = "interrupted"
        _restore(client, backup, edit, report)
        raise Interrupted("interrupted during the apply; the backup was "
                          + ("restored and verified" if report.restore_verified else
                             f"NOT verified; run `labctl router restore {report.backup_file}`")
                          ) from None


def _restore(client: Any, backup: dict[str, str], edit: NetworkEdit, report: TxReport
             ) -> None:
    """Put back the keys this edit wrote, each attempt from a fresh read; a failed restore
    POST (dropped, 5xx) or a restore that does not read back is tried again, up to
    RESTORE_ATTEMPTS times."""
    # Putting a profile back (also after a failed delete) is an edit of that profile.
    service = f"restart_wireless;restart_sdn {edit.target};"
    ours = set(edit.values) & set(backup)
    left: list[str] = []
    last_error: str | None = None
    for attempt in range(1, RESTORE_ATTEMPTS + 1):
        report.restore_attempts = attempt
        current: dict[str, str] | None
        try:
            current = sdn_only(sdn.read_state(client))
        except LabctlError as e:
            log.warning("cannot read the router before restoring (%s); posting every key "
                        "this edit wrote", e.message)
            current = None
        try:
            left = restore_values(client, backup, service, current, only=ours)
        except LabctlError as e:
            last_error = e.message
            log.warning("restore attempt %d of %d failed: %s", attempt, RESTORE_ATTEMPTS,
                        e.message)
            continue
        last_error = None
        if not left:
            break
        log.warning("restore attempt %d of %d did not read back (%s)", attempt,
                    RESTORE_ATTEMPTS, ", ".join(left[:8]))
    if last_error is not None:
        report.restored = False
        report.restore_verified = False
        report.restore_mismatch = [f"restore failed: {last_error}"]
        return
    report.restored = True
    report.restore_verified = not left
    report.restore_mismatch = left


def restore_backup(client: Any, backup: dict[str, str]) -> TxReport:
    """`router restore FILE`: put every backed-up key back, verified."""
    current = sdn_only(sdn.read_state(client))
    keys = sorted(k for k, v in backup.items() if current.get(k, "") != v)
    report = TxReport("restore", "", keys)
    if not keys:
        report.verified = True
        return report
    left = restore_values(client, backup, "restart_wireless;restart_sdn;", current)
    report.applied = True
    report.verified = not left
    if left:
        raise ApiError(f"restore did not converge: {', '.join(left[:8])}",
                       hint="run the restore again")
    return report


def load_backup(path: Path) -> dict[str, str]:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(path)) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"not a labctl router backup ({e})", file=str(path)) from None
    if not isinstance(doc, dict) or doc.get("kind") != BACKUP_KIND or \
            not isinstance(doc.get("keys"), dict):
        raise ConfigError("not a labctl router backup (kind: asus-sdn-nvram expected)",
                          file=str(path))
    allowed = set(sdn.sdn_keys())
    keys = doc["keys"]
    for k, v in keys.items():
        if k not in allowed:
            raise ConfigError(f"{k!r} is not an SDN nvram key", file=str(path), key=f"keys.{k}")
        if not isinstance(v, str):
            raise ConfigError("value must be a string", file=str(path), key=f"keys.{k}")
    return {str(k): v for k, v in keys.items()}
