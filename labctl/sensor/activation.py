"""The sensor's activation file: checked before labctl uses it.

What Microsoft documents about the file (defender-for-iot.md §4.3): it is unique per sensor,
it expires 14 days after it was created (download a new one then), and ARM's
``downloadActivation`` returns it as ``application/zip``. Its members are not documented.
So "looks like an activation file" is, here, what can be said without guessing at an
undocumented layout:

- it is a ZIP archive whose central directory reads and whose members pass their CRC;
- it holds at least one regular file, none of them executable-looking or with a path that
  climbs out (``..``, absolute), at most 32 members and 1 MiB uncompressed (an activation
  file is a few kilobytes of signed configuration; anything far larger is the wrong file);
- its age, from the file's modification time (the moment it was downloaded: the ZIP holds
  no documented creation date), is under 14 days; over 12 days it is flagged as close to
  expiry.

A failed check is a :class:`~labctl.core.errors.ConfigError` naming the playbook, the key
``sensor.activation_file`` and its line (exit 2); nothing is contacted.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from labctl.core.errors import ConfigError

#: the validity Microsoft documents for an activation file
VALIDITY_DAYS = 14
WARN_DAYS = 12
MAX_MEMBERS = 32
MAX_UNCOMPRESSED = 1 << 20
MAX_FILE = 4 << 20
_EXEC_SUFFIXES = (".exe", ".dll", ".bat", ".cmd", ".ps1", ".sh", ".com", ".scr", ".msi")


@dataclass(frozen=True)
class ActivationFile:
    path: Path
    sha256: str
    members: tuple[str, ...]
    age_days: float
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "members": list(self.members),
                "age_days": round(self.age_days, 2), "valid_days": VALIDITY_DAYS,
                "warnings": list(self.warnings)}


def check_activation_file(path: str | Path, *, now: float, file: str | None = None,
                          key: str = "sensor.activation_file",
                          line: int | None = None) -> ActivationFile:
    """Check ``path`` (see the module doc); ``now`` is the wall clock in epoch seconds."""
    p = Path(path)

    def bad(msg: str, hint: str) -> ConfigError:
        return ConfigError(f"{p}: {msg}", file=file, key=key, line=line, hint=hint)

    fresh = ("download a new one: Azure portal > Defender for IoT > Sites and sensors > "
             "the sensor > Download activation file (or let labctl do it with sensor.azure)")
    try:
        st = p.stat()
    except OSError as e:
        raise bad(f"cannot read it ({e.strerror or e})", fresh) from None
    if not p.is_file():
        raise bad("is not a regular file", fresh)
    if st.st_size > MAX_FILE:
        raise bad(f"is {st.st_size} bytes; an activation file is a few kilobytes", fresh)
    data = p.read_bytes()
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
            broken = zf.testzip()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise bad("is not a ZIP archive (an activation file is the ZIP the portal or ARM's "
                  "downloadActivation gives)", fresh) from None
    if broken is not None:
        raise bad(f"is a damaged ZIP (CRC error in {broken!r})", fresh)
    members = [i for i in infos if not i.is_dir()]
    if not members:
        raise bad("is an empty ZIP", fresh)
    if len(infos) > MAX_MEMBERS:
        raise bad(f"holds {len(infos)} entries (more than {MAX_MEMBERS}): not an activation "
                  "file", fresh)
    total = sum(i.file_size for i in members)
    if total > MAX_UNCOMPRESSED:
        raise bad(f"unpacks to {total} bytes (more than {MAX_UNCOMPRESSED}): not an "
                  "activation file", fresh)
    for i in members:
        pp = PurePosixPath(i.filename.replace("\\", "/"))
        if pp.is_absolute() or ".." in pp.parts or (":" in i.filename):
            raise bad(f"holds a member with an unsafe path {i.filename!r}", fresh)
        if i.filename.lower().endswith(_EXEC_SUFFIXES):
            raise bad(f"holds a program ({i.filename!r}): not an activation file", fresh)
    age = max(0.0, (now - st.st_mtime) / 86400)
    if age >= VALIDITY_DAYS:
        raise bad(f"is {age:.1f} days old; activation files expire {VALIDITY_DAYS} days after "
                  "they are created", fresh)
    warnings: tuple[str, ...] = ()
    if age >= WARN_DAYS:
        warnings = (f"the activation file is {age:.1f} days old and expires at "
                    f"{VALIDITY_DAYS} days",)
    return ActivationFile(path=p, sha256=hashlib.sha256(data).hexdigest(),
                          members=tuple(i.filename for i in members), age_days=age,
                          warnings=warnings)
