"""The twin demo end to end, with verify-alerts: wall time per phase and detection latency.

Goals: the whole demo at most 60 s on this machine, median
detection latency at most 1 s, worst at most 3 s. Latency is what a user waits for: from
the end of a case's stimulus to the first matching alert (the alert's own time, and when
labctl saw it through the API, which adds the poll interval).

The reference run side by side is the demo without verify-alerts' waiting: the same up,
the same stimuli would cost their own wall time anyway, so the ratio printed is
"verify phase / stimulus time" — what the waiting for alerts adds on top of sending them.

Run as root:  python bench/verify.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_round(state: Path) -> dict:
    env = dict(os.environ, LABCTL_STATE_DIR=str(state))
    cp = subprocess.run([sys.executable, "-m", "labctl", "twin", "demo", "--json"],
                        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    if cp.returncode not in (0, 4):
        raise SystemExit(f"demo failed ({cp.returncode}): {cp.stderr[-2000:]}")
    return json.loads(cp.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    rows = []
    for _ in range(max(1, min(args.rounds, 10))):
        with tempfile.TemporaryDirectory(prefix="labctl-bench-verify-") as tmp:
            rows.append(one_round(Path(tmp) / "state"))
    lat = sorted(c["latency_seconds"] for r in rows for c in r["verify"]["cases"]
                 if c["latency_seconds"] is not None)
    seen = sorted(c["seen_latency_seconds"] for r in rows for c in r["verify"]["cases"]
                  if c["seen_latency_seconds"] is not None)
    stim = [sum(c["stimulus_seconds"] for c in r["verify"]["cases"]) for r in rows]
    out = {
        "rounds": len(rows),
        "demo_seconds": [round(r["up_seconds"] + r["verify_seconds"] + r["down_seconds"], 2)
                         for r in rows],
        "up_seconds": [r["up_seconds"] for r in rows],
        "verify_seconds": [r["verify_seconds"] for r in rows],
        "down_seconds": [r["down_seconds"] for r in rows],
        "verify_phases": [r["verify"]["phases"] for r in rows],
        "stimulus_seconds": [round(s, 2) for s in stim],
        "verify_over_stimulus": [round(r["verify_seconds"] / s, 2) if s else None
                                 for r, s in zip(rows, stim, strict=True)],
        "latency_median": statistics.median(lat) if lat else None,
        "latency_worst": lat[-1] if lat else None,
        "seen_latency_median": statistics.median(seen) if seen else None,
        "seen_latency_worst": seen[-1] if seen else None,
        "verdicts": [r["verify"]["counts"] for r in rows],
        "goals": {"demo_seconds": 60, "latency_median": 1.0, "latency_worst": 3.0},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for k, v in out.items():
        print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
