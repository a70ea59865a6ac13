"""A stand-in for nmap (``LABCTL_NMAP``) that records its argv and prints an empty scan.

Used to prove that the scope guard refuses *before* nmap is started: the record file stays
empty. When a scan is allowed, it answers with valid XML for zero hosts, so the whole path
(history, JSON) still runs without sending a packet.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

SCRIPT = '''#!{py}
import json, sys
with open({record!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print('<?xml version="1.0"?><nmaprun scanner="nmap" args="nmap (recorder)" version="7.93">'
      '<runstats><finished time="0" timestr="" elapsed="0.01" exit="success"/>'
      '<hosts up="0" down="0" total="0"/></runstats></nmaprun>')
'''


def make_recorder(directory: Path) -> tuple[Path, Path]:
    """Write the stand-in; return (program path, record file path)."""
    directory.mkdir(parents=True, exist_ok=True)
    record = directory / "nmap-calls.jsonl"
    prog = directory / "nmap-recorder"
    prog.write_text(SCRIPT.format(py=sys.executable, record=str(record)))
    prog.chmod(prog.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return prog, record


def calls(record: Path) -> list[list[str]]:
    import json

    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line]
