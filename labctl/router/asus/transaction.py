"""Apply SDN edits as a transaction: back up, apply, read back, restore on any failure.

Why: a half-written SDN table set can break the router's Wi-Fi and DHCP for every network.
The router has no transaction of its own, so labctl makes one:

1. back up every SDN key (from the same fresh read the edit was computed from) and write
   the backup to a file in the lab's state directory before touching anything;
2. apply the edit in one ``applyapp.cgi`` POST (never retried);
3. read every SDN key back and compare with the expected state (backup + edit);
4. on any failure (dropped connection, 5xx, unexpected reply, read-back mismatch) post the
   backup values of every key that differs, read back again and verify the restore.

The outcome is a :class:`TxReport`; failures raise with the report attached (``.report``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.core.errors import ApiError, ConfigError, ConvergenceError, Interrupted, LabctlError
from labctl.router.asus import sdn
from labctl.router.base import NetworkEdit, TransactionFailed

__all__ = ["TransactionFailed", "TxReport", "load_backup", "restore_backup", "run",
           "write_backup"]

BACKUP_KIND = "asus-sdn-nvram"

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
    backup_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def write_backup(values: dict[str, str], directory: Path, label: str = "sdn-backup") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = directory / f"{label}-{stamp}.json"
    n = 1
    while path.exists():  # several transactions in one second keep every backup
        n += 1
        path = directory / f"{label}-{stamp}-{n}.json"
    fd, tmp = tempfile.mkstemp(prefix=".backup.", dir=str(directory))
    with os.fdopen(fd, "w") as f:
        json.dump({"kind": BACKUP_KIND, "keys": values}, f, indent=1, sort_keys=True)
    os.chmod(tmp, 0o600)  # it holds Wi-Fi passphrases
    os.replace(tmp, path)
    return path


def write_backup_to(values: dict[str, str], path: Path) -> Path:
    """Write a backup to the file the user named (created 0600, replaced if present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"kind": BACKUP_KIND, "keys": values}, f, indent=1, sort_keys=True)
    return path


def sdn_only(state: dict[str, str]) -> dict[str, str]:
    """The backed-up part of a read: every SDN key, unset ones as ""."""
    keys = sdn.sdn_keys()
    return {k: state.get(k, "") for k in keys}


def _mismatch(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    return sorted(k for k in expected if actual.get(k, "") != expected[k])


def restore_values(client: Any, backup: dict[str, str], rc_service: str,
                   current: dict[str, str] | None) -> list[str]:
    """Post the backup value of every key that differs (all keys if current is unknown);
    return the keys still differing after a read-back."""
    if current is None:
        todo = dict(backup)
    else:
        todo = {k: v for k, v in backup.items() if current.get(k, "") != v}
    if todo:
        client.apply(todo, rc_service)
    after = sdn_only(sdn.read_state(client))
    return _mismatch(backup, after)


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
    try:
        client.apply(edit.values, edit.service)
        report.applied = True
        after = sdn_only(sdn.read_state(client))
        bad = _mismatch(expected, after)
        if bad:
            raise ConvergenceError(f"read-back mismatch after apply in {', '.join(bad[:8])}"
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
    # Putting a profile back (also after a failed delete) is an edit of that profile.
    service = f"restart_wireless;restart_sdn {edit.target};"
    current: dict[str, str] | None
    try:
        current = sdn_only(sdn.read_state(client))
    except LabctlError as e:
        log.warning("cannot read the router before restoring (%s); posting every key", e)
        current = None
    try:
        left = restore_values(client, backup, service, current)
        if left:  # one more attempt, from a fresh read
            left = restore_values(client, backup, service,
                                  sdn_only(sdn.read_state(client)))
        report.restored = True
        report.restore_verified = not left
        report.restore_mismatch = left
    except LabctlError as e:
        report.restored = False
        report.restore_verified = False
        report.restore_mismatch = [f"restore failed: {e.message}"]


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
