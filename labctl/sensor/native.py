"""The compiled fused pcap loop (``_walk.c`` beside this file): built on first use, optional.

Why: the Python loop in :mod:`labctl.sensor.fastpath` spends about 1 µs per record on the
interpreter alone, and a SYN that opens a flow costs 5-8 µs; the compiled translation does
the same work (the same objects, the same calls back into the engine) without the
interpreter. It is a translation, not a second engine: the Python loop stays the reference,
and tests run both and compare them packet for packet.

How: the first replay compiles ``_walk.c`` with the machine's C compiler (the one Python was
built with, ``sysconfig``'s ``CC``) and Python's headers, into a private cache folder, then
imports it. Without a compiler or headers (Debian: ``gcc``, ``python3-dev``), or when the
build fails, the Python loop runs; :func:`status` says which and why.

- cache folder: ``LABCTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/labctl``, else
  ``~/.cache/labctl``; its ``native/`` folder is created 0700, and a module is loaded only
  from a folder and file owned by the user and writable by nobody else (loading a module is
  running its code);
- the file name carries a hash of the source, the Python build and the compiler command: an
  edit, another Python or another compiler builds anew; builds are atomic (a temporary name,
  then a rename), so two processes building at once are harmless;
- ``LABCTL_NATIVE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

SOURCE = Path(__file__).with_name("_walk.c")
_lock = threading.Lock()
_state: dict[str, Any] = {}


def cache_home() -> Path:
    """``LABCTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/labctl``, else ``~/.cache/labctl``."""
    override = os.environ.get("LABCTL_CACHE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "labctl"


def _private(path: Path) -> bool:
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _compiler() -> list[str]:
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    return cc if cc and shutil.which(cc[0]) else []


def _build(folder: Path, cc: list[str], include: str, target: Path) -> str | None:
    """Compile the source to ``target``; None, or why not."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=".so")
    os.close(fd)
    cmd = [*cc, "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-I", include, str(SOURCE),
           "-o", tmp]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if r.returncode != 0:
            first = (r.stderr.strip().splitlines() or ["(no output)"])[0]
            return f"the C compiler failed: {first}"
        os.chmod(tmp, 0o700)
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the C compiler did not run: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("LABCTL_NATIVE", "1") == "0":
        return None, "off (LABCTL_NATIVE=0)"
    if sys.implementation.name != "cpython" or not sys.platform.startswith("linux"):
        return None, "CPython on Linux only"
    if not SOURCE.is_file():
        return None, f"{SOURCE.name} is not installed"
    include = sysconfig.get_paths()["include"]
    if not os.path.isfile(os.path.join(include, "Python.h")):
        return None, f"no Python headers in {include} (Debian: apt-get install python3-dev)"
    cc = _compiler()
    if not cc:
        return None, "no C compiler (Debian: apt-get install gcc)"
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), sys.version.encode(), shlex.join(cc).encode(),
                 str(sysconfig.get_config_var("EXT_SUFFIX")).encode()):
        digest.update(part)
        digest.update(b"\0")
    from labctl.core.state import ensure_private_dir

    try:
        folder = ensure_private_dir(cache_home() / "native")
        if not _private(folder):
            return None, f"{folder} is not private to this user: not loading code from it"
        target = folder / f"_walk-{digest.hexdigest()[:20]}{sysconfig.get_config_var('EXT_SUFFIX')}"
        for attempt in (1, 2):
            if not target.exists():
                why = _build(folder, cc, include, target)
                if why:
                    return None, why
            if not _private(target):
                return None, f"{target} is not private to this user: not loading it"
            try:
                return _import(target), f"native ({target})"
            except ImportError:
                if attempt == 2:
                    raise
                target.unlink()  # damaged (a full disk, say): built again once
    except (OSError, ImportError) as e:
        return None, f"cannot build or load the compiled loop: {e}"
    raise AssertionError("unreachable")


def _import(target: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader("_walk", str(target))
    spec = importlib.util.spec_from_file_location("_walk", target, loader=loader)
    if spec is None:
        raise ImportError(f"cannot import {target}")
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def walk() -> Any | None:
    """The compiled loop's ``walk`` function, or None (then :func:`status` says why)."""
    with _lock:
        if "mod" not in _state:
            _state["mod"], _state["why"] = _load()
        mod = _state["mod"]
    return None if mod is None else mod.walk


def status() -> str:
    """``native (PATH)``, or why the Python loop runs instead (builds on first call)."""
    walk()
    return str(_state["why"])


def reset() -> None:
    """Forget the loaded module's state (tests): the next call looks again."""
    with _lock:
        _state.clear()
