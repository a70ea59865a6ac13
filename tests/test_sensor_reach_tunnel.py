"""Every sensor command and verify-alerts reach the sensor the way ``sensor.access`` says.

The real topology, in two network namespaces this test creates (nothing leaves them):

    <p>-a  "the laptop": labctl runs here (the CLI in-process, its thread inside <p>-a)
    <p>-b  "the Hyper-V host": a real OpenSSH server on 172.31.250.2, and the embedded
           sensor's real HTTPS API on *its* 127.0.0.1:<port>

The playbook's sensor URL is ``https://127.0.0.1:<port>``: from the laptop nothing listens
there (the test checks it is refused), so a command that answers reached the sensor through
the SSH tunnel (``direct-tcpip`` to 127.0.0.1:<port> as the host sees it). ``netnat``: the
driver is given ``https://<hyperv.host>:<host_port>``; a listener standing in for the
published host port (the same embedded sensor, bound on the host's address) answers there.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from labctl.transport.netns import netns_context

pytest.importorskip("scapy")

if os.geteuid() != 0:  # pragma: no cover - CI runs as root
    pytest.skip("network namespaces need root", allow_module_level=True)

from tests.helpers.sensor_api import running_api  # noqa: E402
from tests.helpers.sensor_netns import TARGET_IP as HOST_IP  # noqa: E402
from tests.helpers.sensor_netns import new_pair  # noqa: E402
from tests.helpers.sensor_pcaps import SCANNER_IP, syn_scan, write  # noqa: E402
from tests.helpers.sshd import start_sshd  # noqa: E402

CASES = """
cases:
  - id: scan
    stimulus: {recipe: tcp-connect, host: "{device:feeder1}", port: 6668, count: 1}
    expect:
      - {title: "{title}", source: "{scanner}", within: 5s}
"""


class Lab:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stack = ExitStack()

    def start(self) -> Lab:
        st = self.stack
        self.pair = new_pair()
        st.callback(self.pair.down)
        pcap = write(self.root / "scan.pcap", syn_scan(40, src=SCANNER_IP,
                                                       t0=time.time() - 120))
        with netns_context(self.pair.b):  # sockets bound here stay in the host's namespace
            api_cm = running_api(self.root / "sensor", pcap, learning=False)
            self.api = api_cm.__enter__()
            st.push(api_cm.__exit__)
            self.srv = start_sshd(self.root / "sshd", host=HOST_IP)
            st.callback(self.srv.stop)
        self.port = int(self.api.url.rsplit(":", 1)[1])
        return self

    def close(self) -> None:
        self.stack.close()

    def playbook(self, repo_root: Path, mode: str, **access: object) -> Path:
        data = yaml.safe_load((repo_root / "playbooks" / "home-lab.yaml").read_text())
        data["hyperv"] = {"host": HOST_IP, "transport": "ssh", "port": self.srv.port,
                          "user": self.srv.user, "ssh_key": str(self.srv.key_path),
                          "ssh_known_hosts": str(self.srv.known_hosts),
                          "vhd_path": data["hyperv"]["vhd_path"], "timeout": 20}
        data["sensor"]["url"] = f"https://127.0.0.1:{self.port}"
        data["sensor"]["access"] = {"mode": mode, **access}
        p = self.root / f"lab-{mode}.yaml"
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return p


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        yield lab.start()
    finally:
        lab.close()


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return True
    return False


def _alert_title(lab: Lab) -> str:
    with netns_context(lab.pair.b):
        docs = lab.api.get("/api/v2/alerts").json()
    assert docs, "the pcap raised no alert"
    return str(next(d["title"] for d in docs if d.get("sourceDeviceAddress") == SCANNER_IP))


def test_status_alerts_and_verify_alerts_through_the_ssh_tunnel(lab, cli_run, repo_root,
                                                                 _isolated_state):
    pb = lab.playbook(repo_root, "ssh-tunnel")
    env = {"LABCTL_SENSOR_TOKEN": lab.api.token}
    title = _alert_title(lab)
    exp = lab.root / "cases.yaml"
    exp.write_text(CASES.replace("{title}", title))
    with netns_context(lab.pair.a):
        # the sensor's direct URL is not reachable from "the laptop"
        assert _refused("127.0.0.1", lab.port)
        r = cli_run("sensor", "status", "--json", "-f", str(pb), env=env)
        assert r.exit_code == 0, r
        doc = r.json()
        assert doc["reachable"] is True and doc["token_accepted"] is True
        assert doc["version"].startswith("labctl-embedded ")
        path = doc["access_path"]
        assert doc["access"] == path["mode"] == "ssh-tunnel"
        assert path["via"] == f"ssh {lab.srv.user}@{HOST_IP}"
        used = path["url"]
        assert used.startswith("https://127.0.0.1:") and used != doc["url"]
        assert doc["url"] == f"https://127.0.0.1:{lab.port}"
        # the pin is the sensor's, under its own address, and the tunnel's is gone
        pins = json.loads((_isolated_state / "pins.json").read_text())
        assert pins == {f"127.0.0.1:{lab.port}": doc["fingerprint"]}
        assert _refused("127.0.0.1", int(used.rsplit(":", 1)[1]))  # closed after the command

        r = cli_run("sensor", "status", "-f", str(pb), env=env)
        assert r.exit_code == 0, r
        assert "ssh-tunnel" in r.stdout and f"ssh {lab.srv.user}@{HOST_IP}" in r.stdout

        r = cli_run("sensor", "alerts", "--json", "-f", str(pb), env=env)
        assert r.exit_code == 0, r
        assert title in [a["title"] for a in r.json()]

        for args in (("devices", "--json"), ("connections", "--json"),
                     ("events", "--json")):
            r = cli_run("sensor", *args, "-f", str(pb), env=env)
            assert r.exit_code == 0, (args, r)
            assert isinstance(r.json(), list)
        r = cli_run("sensor", "devices", "--json", "-f", str(pb), env=env)
        assert SCANNER_IP in [ip for d in r.json() for ip in d.get("ipAddresses") or []]

        r = cli_run("verify-alerts", "-f", str(pb), "--expectations", str(exp),
                    "--no-stimulus", "--since", "1h", "--json", env=env)
        assert r.exit_code == 0, r
        rep = r.json()
        assert rep["ok"] is True and rep["counts"]["PASS"] == 1
        # a changed certificate (a pin that no longer matches) is an error with a hint
        pins_path = _isolated_state / "pins.json"
        pins_path.write_text(json.dumps({f"127.0.0.1:{lab.port}": "ab" * 32}))
        r = cli_run("sensor", "alerts", "--json", "-f", str(pb), env=env)
        assert r.exit_code == 5 and "changed" in r.stderr and str(pins_path) in r.stderr, r
        assert r.stdout == ""
    # the sshd carried the bytes as channels, never as commands
    assert lab.srv.commands() == []


def test_without_the_tunnel_the_laptop_does_not_reach_the_sensor(lab, cli_run, repo_root,
                                                                 _isolated_state):
    pb = lab.playbook(repo_root, "direct")
    with netns_context(lab.pair.a):
        r = cli_run("sensor", "status", "--json", "-f", str(pb),
                    env={"LABCTL_SENSOR_TOKEN": lab.api.token})
    assert r.exit_code == 5, r
    doc = r.json()
    assert doc["reachable"] is False and doc["access_path"]["mode"] == "direct"


def test_netnat_reaches_the_hosts_published_port(lab, cli_run, repo_root, _isolated_state):
    """The stand-in for ``Add-NetNatStaticMapping``'s published port: the embedded sensor's
    API bound on the host's address (HOST_IP:<port>) in the host's namespace."""
    from labctl.sensor.api import make_server, start_in_thread

    with netns_context(lab.pair.b):
        server = make_server(lab.api.sensor, lab.api.store, (HOST_IP, 0), lab.api.state)
        start_in_thread(server)
    try:
        host_port = server.server_address[1]
        pb = lab.playbook(repo_root, "netnat", host_port=host_port)
        env = {"LABCTL_SENSOR_TOKEN": lab.api.token}
        with netns_context(lab.pair.a):
            assert _refused("127.0.0.1", lab.port)
            r = cli_run("sensor", "status", "--json", "-f", str(pb), env=env)
            assert r.exit_code == 0, r
            doc = r.json()
            assert doc["access_path"] == {
                "mode": "netnat", "sensor": f"https://127.0.0.1:{lab.port}",
                "via": f"https://{HOST_IP}:{host_port}",
                "url": f"https://{HOST_IP}:{host_port}"}
            assert doc["reachable"] is True
            pins = json.loads((_isolated_state / "pins.json").read_text())
            assert pins == {f"{HOST_IP}:{host_port}": doc["fingerprint"]}
            r = cli_run("sensor", "alerts", "--json", "-f", str(pb), env=env)
            assert r.exit_code == 0 and r.json(), r
    finally:
        server.shutdown()
        server.server_close()
        server.head_watchdog.stop()


def test_ups_sensor_stage_waits_and_signs_in_through_the_tunnel(lab, cli_run, repo_root,
                                                                _isolated_state):
    """`labctl up --only sensor` from "the laptop": TCP 443 is probed from the host (a
    direct-tcpip channel), the certificate checked through the tunnel once the sensor
    answers and pinned under the sensor's own address, then the first sign-in."""
    data_pb = lab.playbook(repo_root, "ssh-tunnel")
    data = yaml.safe_load(data_pb.read_text())
    data["sensor"].pop("vm", None)  # no Hyper-V VM to watch here (the host is a plain sshd)
    data_pb.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"LABCTL_SENSOR_PASSWORD": "Reach-Tunnel-Pw-7!", "LABCTL_SENSOR_TOKEN": None}
    with netns_context(lab.pair.a):
        assert _refused("127.0.0.1", lab.port)
        r = cli_run("up", "--only", "sensor", "-y", "--json", "-f", str(data_pb), env=env)
        assert r.exit_code == 0, r
        [stage] = r.json()["stages"]
        assert stage["stage"] == "sensor" and stage["report"]["action"] == "set-password"
        assert f"TCP 127.0.0.1:{lab.port} from {HOST_IP}: open" in r.stderr
        pins = json.loads((_isolated_state / "pins.json").read_text())
        assert list(pins) == [f"127.0.0.1:{lab.port}"]  # the sensor's, not the tunnel's
        again = cli_run("up", "--only", "sensor", "-y", "--json", "-f", str(data_pb), env=env)
        assert again.exit_code == 0, again
        assert again.json()["stages"][0]["report"]["action"] == "noop"


def test_the_tunnels_tcp_probe_sees_a_closed_port_at_the_host(lab):
    from labctl.transport.tunnel import open_tunnel

    with netns_context(lab.pair.b):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
        s.close()
    with netns_context(lab.pair.a):
        target = lab.srv.target(host=HOST_IP)
        with open_tunnel(target, "127.0.0.1", closed) as t:
            ok, seen = t.probe()
            assert not ok and f"127.0.0.1:{closed} from {HOST_IP}" in seen
            # the local listener itself accepts: that alone would prove nothing
            socket.create_connection(t.address, timeout=2).close()
        with open_tunnel(target, "127.0.0.1", lab.port) as t:
            assert t.probe()[0] is True
