"""Benchmark: labctl's SSH transport against the OpenSSH client, side by side, on loopback.

Starts a throwaway sshd on 127.0.0.1 (tests/helpers/sshd.py, with the powershell.exe
stand-in), then measures:

* one-shot commands: ``ssh_exec`` (new login each time) vs ``ssh -i KEY host true``;
* commands on one reused connection (``SshConnection.exec``, what the PowerShell runner does)
  vs OpenSSH with connection multiplexing (ControlMaster);
* throughput: 64 MiB of stdout through ``ssh_exec`` vs ``ssh host head -c``;
* PowerShell scripts through ``SshRunner.run`` (wrapper, base64 params, envelope parsing)
  per second, on one connection;
* a converged ``labctl plan`` of the reference lab over SSH (after ``labctl up`` onto the fake
  Hyper-V host behind the sshd): wall time, remote round trips (must be 1) and writes (0).

Prints each figure and the ratio labctl/OpenSSH (lower time is better). Usage::

    python bench/transport_ssh.py [--n 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.core.playbook.hyperv import HyperVHost  # noqa: E402
from labctl.transport.powershell import RenderedScript  # noqa: E402
from labctl.transport.ssh import SshRunner  # noqa: E402
from labctl.transport.sshexec import SshConnection, ssh_exec  # noqa: E402
from tests.helpers.sshd import sshd_server  # noqa: E402


def timed(fn, n: int) -> float:
    """Median seconds per call over n calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="iterations per measurement")
    args = ap.parse_args()
    n = max(1, min(args.n, 500))  # bounded
    standin = ROOT / "tests" / "helpers" / "fake_powershell.py"
    with tempfile.TemporaryDirectory() as d, \
            sshd_server(Path(d) / "sshd", powershell_standin=standin) as srv:
        target = srv.target()
        ssh = ["ssh", "-q", "-i", str(srv.key_path), "-p", str(srv.port),
               "-o", f"UserKnownHostsFile={srv.known_hosts}", "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=yes", f"{srv.user}@{srv.host}"]
        ctl = Path(d) / "ctl"
        mux = ssh[:-1] + ["-o", "ControlMaster=auto", "-o", f"ControlPath={ctl}",
                          "-o", "ControlPersist=60", ssh[-1]]

        rows: list[tuple[str, float, float]] = []
        a = timed(lambda: ssh_exec(target, ["true"]), n)
        b = timed(lambda: subprocess.run(ssh + ["true"], check=True), n)
        rows.append(("one-shot `true` (s/command)", a, b))

        with SshConnection(target) as conn:
            conn.exec(["true"])
            a = timed(lambda: conn.exec(["true"]), n)
        subprocess.run(mux + ["true"], check=True)
        b = timed(lambda: subprocess.run(mux + ["true"], check=True), n)
        subprocess.run(ssh[:-1] + ["-o", f"ControlPath={ctl}", "-O", "exit", ssh[-1]],
                       capture_output=True)
        rows.append(("reused connection `true` (s/command)", a, b))

        size = 64 * 1024 * 1024
        a = timed(lambda: ssh_exec(target, ["head", "-c", str(size), "/dev/zero"], timeout=120),
                  3)
        b = timed(lambda: subprocess.run(ssh + ["head", "-c", str(size), "/dev/zero"],
                                         check=True, stdout=subprocess.DEVNULL), 3)
        rows.append((f"{size >> 20} MiB stdout (s)", a, b))

        cfg = HyperVHost(host=srv.host, transport="ssh", port=srv.port, user=srv.user,
                         ssh_key=str(srv.key_path), ssh_known_hosts=str(srv.known_hosts))
        script = RenderedScript("bench/echo", "param($Name, $Vlans)\n#fake: echo",
                                {"Name": "d4iot-sensor", "Vlans": list(range(1, 200))})
        with SshRunner(cfg) as runner:
            runner.run(script)
            per_script = timed(lambda: runner.run(script), n)

        converged = _converged_plan_over_ssh(Path(d), srv_factory=sshd_server, standin=standin,
                                             n=max(3, n // 4))

        print(f"{'measurement':40} {'labctl':>10} {'openssh':>10} {'ratio':>7}")
        for name, x, y in rows:
            print(f"{name:40} {x:10.4f} {y:10.4f} {x / y:7.2f}")
        print(f"{'SshRunner.run, reused connection (s)':40} {per_script:10.4f} "
              f"{'-':>10} {'-':>7}   ({1 / per_script:.1f} scripts/s)")
        secs, trips, writes = converged
        print(f"{'converged `labctl plan` over SSH (s)':40} {secs:10.4f} {'-':>10} {'-':>7}"
              f"   ({trips} remote round trip(s), {writes} writes)")


def _converged_plan_over_ssh(tmp: Path, srv_factory, standin: Path, n: int):
    """`labctl up` the reference lab onto the fake Hyper-V host behind the sshd, then time
    `labctl plan` against the converged host and count its remote round trips."""
    import contextlib
    import io
    import pickle

    import yaml

    from labctl.cli import run
    from tests.helpers.fake_hyperv import FakeHyperVHost

    state = tmp / "host.pkl"
    state.write_bytes(pickle.dumps(FakeHyperVHost.reference()))
    with srv_factory(tmp / "sshd-lab", powershell_standin=standin,
                     setenv={"LABCTL_STANDIN_HYPERV_STATE": str(state)}) as srv:
        doc = yaml.safe_load((ROOT / "playbooks" / "home-lab.yaml").read_text())
        doc["hyperv"] = {"host": srv.host, "transport": "ssh", "port": srv.port,
                         "user": srv.user, "ssh_key": str(srv.key_path),
                         "ssh_known_hosts": str(srv.known_hosts),
                         "vhd_path": doc["hyperv"]["vhd_path"]}
        pb = tmp / "lab.yaml"
        pb.write_text(yaml.safe_dump(doc, sort_keys=False))
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            assert run(["up", "-f", str(pb), "-y", "--only", "hyperv"]) == 0, sink.getvalue()
            writes = len(pickle.loads(state.read_bytes()).writes)
            before = len(srv.standin_calls())
            secs = timed(lambda: run(["plan", "-f", str(pb), "--json"]), n)
        trips = (len(srv.standin_calls()) - before) / n
        extra_writes = len(pickle.loads(state.read_bytes()).writes) - writes
        return secs, trips, extra_writes


if __name__ == "__main__":
    main()
