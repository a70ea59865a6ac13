"""A wrapper around the real nmap (``LABCTL_NMAP``) that records each invocation first.

The scope-guard tests point ``LABCTL_NMAP`` at it: a refused scan leaves the record empty
(nmap never started), an accepted one records its argv and then *is* nmap (``execv``), so
the scan really runs, inside the test's own namespace.
"""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

SCRIPT = '''#!{py}
import json, os, sys
with open({record!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
os.execv({nmap!r}, [{nmap!r}, *sys.argv[1:]])
'''


def real_nmap() -> str | None:
    return shutil.which("nmap")


def make_wrapper(directory: Path) -> tuple[Path, Path]:
    """Write the wrapper; return (program path, record file path)."""
    nmap = real_nmap()
    if nmap is None:
        raise RuntimeError("nmap is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / "nmap-calls.jsonl"
    prog = directory / "nmap-wrapper"
    prog.write_text(SCRIPT.format(py=sys.executable, record=str(record), nmap=nmap))
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return prog, record
