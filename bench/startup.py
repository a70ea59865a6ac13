"""Start-up cost of `labctl --help`, side by side with `python -c pass`.

Checks with `python -X importtime` that `labctl --help` imports none of scapy, pypsrp,
paramiko, azure or nmap, then prints the median wall time of `labctl --help` next to
`python -c pass` and their ratio. Goal: labctl --help <= 0.15 s (a command line that
answers --help at once invites exploring it).

    python bench/startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("scapy", "pypsrp", "paramiko", "nmap", "azure")
GOAL_S = 0.15


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def imported_modules() -> list[str]:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "labctl", "--help"],
                       capture_output=True, text=True, env=_env(), cwd=ROOT, check=True)
    mods = []
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                mods.append(name)
    return mods


def wall(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=_env(), cwd=ROOT, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    mods = imported_modules()
    heavy = sorted({m for m in mods for h in HEAVY if m == h or m.startswith(h + ".")})
    print(f"modules imported by `labctl --help`: {len(mods)}")
    print(f"heavy modules imported: {heavy or 'none'} (must be none of {', '.join(HEAVY)})")
    base = wall([sys.executable, "-c", "pass"], args.runs)
    help_ = wall([sys.executable, "-m", "labctl", "--help"], args.runs)
    print(f"python -c pass       median {base * 1000:7.1f} ms")
    print(f"labctl --help        median {help_ * 1000:7.1f} ms   ratio {help_ / base:4.1f}x   "
          f"(labctl's own cost {max(0.0, help_ - base) * 1000:.1f} ms)")
    ok = not heavy and help_ <= GOAL_S
    print(("OK" if ok else "FAIL") + f": goal <= {GOAL_S:.2f} s and no heavy imports")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
