"""Wall time of `up` and `down` of the reference twin (playbooks/twin.yaml as lab "twb").

Goal: up <= 10 s. As a reference run side by side, the same plan's commands are replayed
raw (each argv run in order with subprocess, no facts reading, no diff, no convergence
check, processes spawned the same way); the ratio shows what labctl's read/diff/verify
costs on top of the bare commands.

Run as root:  python bench/twin_updown.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAB = "twb"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="labctl-bench-twin-"))
    os.environ["LABCTL_STATE_DIR"] = str(tmp / "state")
    text = (ROOT / "playbooks" / "twin.yaml").read_text()
    pb_path = tmp / f"{LAB}.yaml"
    pb_path.write_text(text.replace("lab: twin", f"lab: {LAB}")
                       .replace("netns:twin-kali", f"netns:{LAB}-kali"))

    from labctl.app import lab
    from labctl.core.context import LabContext
    from labctl.core.playbook import load_playbook
    from labctl.netns.provider import NetnsProvider

    def ctx() -> LabContext:
        return LabContext(load_playbook(str(pb_path)))

    ups, downs, raw_ups, raw_downs, steps = [], [], [], [], 0
    try:
        for _ in range(max(1, args.rounds)):
            t = time.perf_counter()
            rep = lab.up(ctx(), confirm=lambda p: True)
            ups.append(time.perf_counter() - t)
            steps = len(rep.plan.steps)
            t = time.perf_counter()
            lab.down(ctx(), confirm=lambda p: True)
            downs.append(time.perf_counter() - t)
            # reference: the same commands, replayed bare
            prov = NetnsProvider(load_playbook(str(pb_path)))
            plan = prov.plan_up(prov.empty_facts())
            t = time.perf_counter()
            prov.apply(plan)
            raw_ups.append(time.perf_counter() - t)
            dplan = prov.plan_down(prov.read_facts())
            t = time.perf_counter()
            prov.apply(dplan)
            raw_downs.append(time.perf_counter() - t)
    finally:
        for ns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if ns.startswith(LAB + "-"):
                subprocess.run(["ip", "netns", "del", ns], check=False)

    med = statistics.median
    out = {
        "lab": LAB, "rounds": len(ups), "steps": steps,
        "up_seconds": round(med(ups), 3), "down_seconds": round(med(downs), 3),
        "raw_up_seconds": round(med(raw_ups), 3), "raw_down_seconds": round(med(raw_downs), 3),
        "up_ratio_vs_raw": round(med(ups) / med(raw_ups), 2),
        "down_ratio_vs_raw": round(med(downs) / med(raw_downs), 2),
        "goal_up_seconds": 10.0, "goal_met": med(ups) <= 10.0,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"twin up   {out['up_seconds']:.3f} s (raw commands {out['raw_up_seconds']:.3f} s, "
              f"ratio {out['up_ratio_vs_raw']}) over {steps} steps; goal <= 10 s: "
              f"{'met' if out['goal_met'] else 'MISSED'}")
        print(f"twin down {out['down_seconds']:.3f} s (raw commands "
              f"{out['raw_down_seconds']:.3f} s, ratio {out['down_ratio_vs_raw']})")
    return 0 if out["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
