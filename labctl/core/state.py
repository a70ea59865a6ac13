"""Where labctl keeps local state: scan history, logs, pinned certificates, twin state.

Also two guarantees about that state:

- :func:`ensure_private_dir` creates missing folders 0700 and changes the mode of nothing
  it did not create: an existing (shared) folder given with ``--state DIR`` keeps its mode.
- :class:`CreatedRecord` is the lab's record of resources it created that carry no
  ownership marker of their own (a NetNat has no Notes; a VHDX is a file). ``down`` removes
  such a resource only when the record names it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labctl.core.errors import LabctlError

RECORD_FILE = "created.json"
RECORD_VERSION = 1

#: Files and folders of a lab's state directory that hold secrets: router backups (the
#: Wi-Fi passphrase), the twin's generated credentials, the twin router's nvram (the
#: passphrase again) and the twin sensor's state (password hashes, API tokens, TLS key).
SECRET_STATE = ("router-backups", "twin-secrets.json", "router-nvram.json", "sensor")


def state_home() -> Path:
    """``LABCTL_STATE_DIR``, else ``$XDG_STATE_HOME/labctl``, else ``~/.local/state/labctl``."""
    override = os.environ.get("LABCTL_STATE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "labctl"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700 (umask notwithstanding).

    Only the folders created here get a mode: a folder that already exists keeps its mode
    and owner, so pointing labctl at a shared folder never narrows (or widens) it.
    """
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs, left as it is
        os.chmod(d, 0o700)  # mkdir's mode is filtered by the umask
    return path


def lab_state_dir(lab: str, create: bool = True) -> Path:
    """State directory of one lab (by the playbook's ``lab`` name)."""
    p = state_home() / "labs" / lab
    if create:
        ensure_private_dir(p)
    return p


def pins_file() -> Path:
    """TOFU certificate pins: one JSON object of ``host:port`` -> sha256 fingerprint."""
    return state_home() / "pins.json"


def write_private(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path`` as a new 0600 file: a temporary file created with O_EXCL in
    the same folder, flushed and synced, then renamed over ``path`` (readers see the old or
    the new content, never half of it; an existing file keeps neither its mode nor its
    inode; a symlink at ``path`` is replaced, not followed)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_private_json(doc: Any, path: Path) -> Path:
    """:func:`write_private` of ``doc`` as indented, sorted JSON."""
    return write_private(json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"), path)


@dataclass(frozen=True)
class Created:
    """One resource this lab created: ``kind`` (``netnat``, ``vhd``), where (``scope``, e.g.
    ``hyperv:host01``) and its identifying keys (``name``/``prefix``, ``path``)."""

    scope: str
    kind: str
    keys: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, scope: str, kind: str, keys: Mapping[str, str]) -> Created:
        return cls(scope, kind, tuple(sorted((k, str(v)) for k, v in keys.items())))

    def get(self, key: str) -> str:
        return dict(self.keys)[key]

    def to_dict(self) -> dict[str, str]:
        return {"scope": self.scope, "kind": self.kind, **dict(self.keys)}


class CreatedRecord:
    """The lab's record of created resources: ``<lab state>/created.json`` (0600).

    Every change is a read-modify-write under an exclusive lock (``created.json.lock``)
    written atomically (:func:`write_private_json`). A record that cannot be read is an
    error naming the file: labctl never guesses what it owns.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of_lab(cls, lab: str) -> CreatedRecord:
        return cls(lab_state_dir(lab, create=False) / RECORD_FILE)

    def _read(self) -> list[Created]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as e:
            raise LabctlError(f"cannot read {self.path}: {e.strerror}",
                              hint="fix its permissions; labctl does not guess what it owns"
                              ) from None
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
                raise ValueError("not a labctl record")
            out = []
            for item in doc["created"]:
                keys = {k: v for k, v in item.items() if k not in ("scope", "kind")}
                if not all(isinstance(v, str) for v in item.values()):
                    raise ValueError("a value is not a string")
                out.append(Created.of(item["scope"], item["kind"], keys))
            return out
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LabctlError(f"{self.path} is not a labctl record of created resources ({e})",
                              hint="move the file away; until then labctl owns no NetNat or "
                                   "VHDX of this lab") from None

    def entries(self, scope: str | None = None, kind: str | None = None) -> list[Created]:
        return [c for c in self._read() if (scope is None or c.scope == scope)
                and (kind is None or c.kind == kind)]

    @contextmanager
    def _locked(self) -> Iterator[list[Created]]:
        ensure_private_dir(self.path.parent)
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            items = self._read()
            before = list(items)
            yield items
            if items != before:
                write_private_json({"version": RECORD_VERSION,
                                    "created": [c.to_dict() for c in items]}, self.path)
        finally:
            os.close(fd)

    def add(self, item: Created) -> None:
        with self._locked() as items:
            if item not in items:
                items.append(item)

    def remove(self, item: Created) -> None:
        with self._locked() as items:
            while item in items:
                items.remove(item)

    def keep_only(self, scope: str, kind: str, alive: set[Created]) -> list[Created]:
        """Drop this scope's ``kind`` entries not in ``alive``; returns the dropped ones."""
        dropped: list[Created] = []
        if not self.path.exists():
            return dropped  # nothing recorded: a read-only command writes nothing
        with self._locked() as items:
            for c in list(items):
                if c.scope == scope and c.kind == kind and c not in alive:
                    items.remove(c)
                    dropped.append(c)
        return dropped


def secret_state_paths(lab: str) -> list[Path]:
    """The secret-holding files and folders of this lab's state directory that exist."""
    base = lab_state_dir(lab, create=False)
    return [base / n for n in SECRET_STATE if (base / n).exists() or (base / n).is_symlink()]


def router_backups(lab: str) -> list[Path]:
    """This lab's router backups (they hold the Wi-Fi passphrase)."""
    d = lab_state_dir(lab, create=False) / "router-backups"
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def purge_secret_state(lab: str) -> list[Path]:
    """Remove this lab's secret-holding state (:data:`SECRET_STATE`), nothing else; returns
    what was removed. A symlink is removed itself, never followed."""
    removed: list[Path] = []
    for p in secret_state_paths(lab):
        if p.is_symlink() or not p.is_dir():
            p.unlink()
        else:
            shutil.rmtree(p)
        removed.append(p)
    return removed
