"""Round trips to the Hyper-V host, counted by the fake host (tests/helpers/fake_hyperv.py).

The goal: a converged `labctl up` makes exactly ONE remote round trip per host (the batched
facts script) and no writes, so a second `up` is as cheap as reading the host once. Also
shows the cost of a first `up` and of `down`, and runs the converged case through the real
CLI entry point.

    python bench/hyperv_roundtrips.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.app import lab as app  # noqa: E402
from tests.helpers.fake_hyperv import FakeHyperVHost  # noqa: E402
from tests.helpers.hyperv_lab import fake_factory, loaded, write_playbook  # noqa: E402


def _ctx(host: FakeHyperVHost) -> app.LabContext:
    return app.LabContext(loaded=loaded(), provider_factory=fake_factory(host))


def _measure(label: str, host: FakeHyperVHost, fn) -> tuple[int, int]:
    host.calls.clear()
    t0 = time.perf_counter()
    fn()
    dt = (time.perf_counter() - t0) * 1000
    calls, writes = len(host.calls), len(host.writes)
    print(f"{label:<34} round trips {calls:>3}   writes {writes:>3}   {dt:7.1f} ms (fake host)")
    return calls, writes


def main() -> int:
    host = FakeHyperVHost.reference()
    yes = {"confirm": lambda p: True}
    first = _measure("first up (empty reference host)", host, lambda: app.up(_ctx(host), **yes))
    conv = _measure("converged up", host, lambda: app.up(_ctx(host), **yes))
    plan = _measure("plan (converged)", host, lambda: app.plan(_ctx(host)))
    stat = _measure("status (converged)", host, lambda: app.status(_ctx(host)))

    import tempfile

    from labctl.cli import run

    with tempfile.TemporaryDirectory() as tmp:
        pb = str(write_playbook(Path(tmp)))
        fake = {"provider_factory": fake_factory(host)}
        cli = _measure("converged `labctl up -y` (CLI)", host,
                       lambda: run(["-q", "up", "-y", "-f", pb], overrides=fake))
    down = _measure("down", host, lambda: app.down(_ctx(host), **yes))
    print()
    print(f"first up: {first[0]} round trips = 1 facts read + {first[1]} steps + 1 re-read")
    ok = conv == (1, 0) and cli == (1, 0) and plan == (1, 0) and stat == (1, 0)
    print(f"converged up: {conv[0]} round trip(s), {conv[1]} write(s) -> "
          + ("OK (goal: exactly 1 and 0)" if ok else "FAIL (goal: exactly 1 and 0)"))
    print(f"down: {down[1]} writes")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
