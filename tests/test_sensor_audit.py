"""``labctl sensor audit`` against an SSH server the test starts on 127.0.0.1, playing the
sensor's admin CLI (``shell>`` prompt, exec refused) with the outputs Microsoft documents
(tests/helpers/fake_sensor_cli.py): version, services, PROMISC interfaces with RX counters
sampled twice, the kernel from the login banner against sensor/cves.yaml, exit code 4 for a
dead mirror or a known CVE, and timeouts instead of hangs."""

from __future__ import annotations

import json

import pytest
import yaml

from labctl.cli._common import CliState
from labctl.cli.sensor_audit import audit
from labctl.core.context import LabContext
from labctl.core.errors import AuthError, ConnectTimeout, TransportError, UsageError
from labctl.core.playbook import parse_playbook
from labctl.core.yamlfile import parse_yaml
from labctl.sensor import audit as A
from labctl.transport.sshexec import HostKeyError
from tests.helpers.fake_sensor_cli import FakeSensorCli
from tests.helpers.hyperv_lab import reference_data

PASSWORD = "Sens0r!Passw0rd"


def _ctx(**kw) -> LabContext:
    data = reference_data(keep_sensor=True)
    data["sensor"]["url"] = "https://127.0.0.1"
    text = yaml.safe_dump(data, sort_keys=False)
    slept: list[float] = []
    return LabContext(loaded=parse_playbook(parse_yaml(text, "lab.yaml")),
                      sleep=slept.append, **kw)


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("LABCTL_SENSOR_PASSWORD", PASSWORD)


def _run(fake, tmp_path, **kw):
    kh = fake.write_known_hosts(tmp_path / "known_hosts")
    return A.run_audit(_ctx(), known_hosts=str(kh), port=fake.port, **kw)


def test_documented_outputs_parse():
    fake = FakeSensorCli()
    assert A.parse_version(fake.answer("system version")) == "22.2.5.9-r-2121448"
    services, up, profile = A.parse_sanity(A.clean(fake.sanity()))
    assert len(services) == 13 and all(s.running for s in services)
    assert up and profile == "medium"
    ifaces = A.parse_network_list(A.clean(fake.network_list()))
    assert [(i.name, i.promisc) for i in ifaces] == [("adiot0", True), ("eth0", False),
                                                      ("lo", False)]
    assert ifaces[1].rx_packets == 22419372 and ifaces[1].inet == "172.18.0.2"


def test_healthy_sensor_reports_version_services_mirror_and_kernel(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, kernel_package="5.10.209-2") as fake:
        rep = _run(fake, tmp_path, interval=5)
    assert rep.version == "22.2.5.9-r-2121448"
    assert rep.system_up and rep.profile == "medium" and rep.services_down == []
    assert rep.monitor_interfaces == ["adiot0"]
    assert rep.rx_delta["adiot0"] == 1500 and rep.rx_delta["eth0"] == 0
    assert rep.mirror_alive
    assert rep.os_base == "Debian 11 (Bullseye)"
    assert rep.kernel == "5.10.209" and rep.kernel_source.startswith("login banner")
    assert {c.cve: c.affected for c in rep.cves} == {
        "CVE-2022-0847": False, "CVE-2016-5195": False, "CVE-2024-1086": False}
    assert rep.exit_code == 0 and rep.problems == []
    # an interactive session, commands one at a time: never an exec request
    assert fake.exec_requests == []
    assert fake.commands == ["system version", "system sanity", "network list", "network list"]


def test_dead_mirror_is_exit_4(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, mirror_rate=0, kernel_package="5.10.209-2") as fake:
        rep = _run(fake, tmp_path)
    assert rep.monitor_interfaces == ["adiot0"] and not rep.mirror_alive
    assert rep.exit_code == 4
    assert any("mirror does not feed" in p for p in rep.problems)


def test_no_promisc_interface_is_exit_4(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, promisc=False, kernel_package="5.10.209-2") as fake:
        rep = _run(fake, tmp_path)
    assert rep.monitor_interfaces == [] and rep.exit_code == 4
    assert any("PROMISC" in p for p in rep.problems)


def test_dirty_pipe_kernel_is_exit_4_with_its_sources(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, kernel_release="5.10.0-9-amd64",
                       kernel_package="5.10.70-1") as fake:
        rep = _run(fake, tmp_path)
    found = {c.cve: c for c in rep.cves}
    assert found["CVE-2022-0847"].affected is True
    assert "https://dirtypipe.cm4all.com/" in found["CVE-2022-0847"].sources
    assert found["CVE-2016-5195"].affected is False
    assert rep.mirror_alive and rep.exit_code == 4
    assert "CVE-2022-0847" in rep.known_cves


def test_stopped_service_is_reported(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, services_down=("Horizon Parser",),
                       kernel_package="5.10.209-2") as fake:
        rep = _run(fake, tmp_path)
    assert rep.services_down == ["Horizon Parser"] and not rep.system_up
    assert any("Horizon Parser" in p for p in rep.problems)


def test_without_a_banner_the_kernel_is_unknown_or_given(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, motd=False) as fake:
        rep = _run(fake, tmp_path)
        assert rep.kernel is None and rep.os_base is None
        assert all(c.affected is None for c in rep.cves) and rep.exit_code == 0
        rep = _run(fake, tmp_path, kernel="5.15.20")
        assert rep.kernel_source == "given" and "CVE-2022-0847" in rep.known_cves


def test_a_debian_backport_below_the_upstream_fix_is_not_reported(env, tmp_path):
    """Debian 11 shipped the Dirty Pipe fix in 5.10.92-2 (DSA-5092-1), before upstream
    5.10.102: the package version decides for a Bullseye kernel."""
    with FakeSensorCli(password=PASSWORD, kernel_release="5.10.0-11-amd64",
                       kernel_package="5.10.92-2") as fake:
        rep = _run(fake, tmp_path)
    found = {c.cve: c for c in rep.cves}
    assert rep.kernel == "5.10.92"
    assert found["CVE-2022-0847"].affected is False
    assert "5.10.92-2" in found["CVE-2022-0847"].note
    # CVE-2024-1086 has no Debian entry: by upstream 5.10.92 < 5.10.209, affected
    assert found["CVE-2024-1086"].affected is True and rep.exit_code == 4
    with FakeSensorCli(password=PASSWORD, kernel_release="5.10.0-11-amd64",
                       kernel_package="5.10.92-1") as fake:
        rep = _run(fake, tmp_path)
    assert {c.cve: c.affected for c in rep.cves}["CVE-2022-0847"] is True


def test_the_cve_table_rows_as_checked():
    """The rows' versions as docs/sensor.md says they were checked (and where not)."""
    table = {c.cve: c for c in A.load_cves()}
    v = A.parse_kernel_version
    dp, cow, nft = table["CVE-2022-0847"], table["CVE-2016-5195"], table["CVE-2024-1086"]
    assert dp.introduced == (5, 8, 0)
    assert set(dp.fixed) == {(5, 10, 102), (5, 15, 25), (5, 16, 11)}
    assert dp.debian_fixed == {"bullseye": "5.10.92-2"}
    assert cow.introduced == (2, 6, 22) and set(cow.fixed) == {(4, 4, 26), (4, 7, 9),
                                                               (4, 8, 3)}
    assert nft.introduced == (3, 15, 0)
    assert {(5, 10, 209), (5, 15, 149), (6, 1, 76), (6, 6, 15), (6, 7, 3)} <= set(nft.fixed)
    # 3.15 up to the fixes: affected; the fixed releases and later: not
    assert not nft.affects(v("3.14.79")) and nft.affects(v("3.15"))
    for fixed in ("5.10.209", "5.15.149", "6.1.76", "6.6.15", "6.7.3"):
        f = v(fixed)
        assert nft.affects((*f[:2], f[2] - 1)) and not nft.affects(f), fixed
    assert not nft.affects(v("6.8")) and not nft.affects(v("6.12.1"))
    # unverified branches err towards "affected": 5.4.268 and every 4.19 kernel
    assert nft.affects(v("5.4.268")) and not nft.affects(v("5.4.269"))
    assert nft.affects(v("4.19.320"))
    for c in table.values():
        assert any("git.kernel.org" in s for s in c.sources), c.cve
        assert any("nvd.nist.gov" in s for s in c.sources), c.cve
        assert c.debian_tracker and c.debian_tracker.startswith(
            "https://security-tracker.debian.org/tracker/")


def test_debian_version_comparison_follows_dpkg():
    cmp = A.debian_version_cmp
    assert cmp("5.10.92-2", "5.10.92-2") == 0
    assert cmp("5.10.92-1", "5.10.92-2") < 0 < cmp("5.10.102-1", "5.10.92-2")
    assert cmp("5.10.92-2~bpo11+1", "5.10.92-2") < 0 < cmp("5.10.92-2+deb11u1", "5.10.92-2")
    assert cmp("1:4.19.1-1", "5.10.1-1") > 0


def test_cve_ranges():
    table = {c.cve: c for c in A.load_cves()}
    dp = table["CVE-2022-0847"]
    v = A.parse_kernel_version
    assert not dp.affects(v("5.7.19")) and dp.affects(v("5.8"))
    assert dp.affects(v("5.10.101")) and not dp.affects(v("5.10.102"))
    assert dp.affects(v("5.13.19"))  # an end-of-life branch never got the fix
    assert dp.affects(v("5.15.24")) and not dp.affects(v("5.15.25"))
    assert not dp.affects(v("5.17")) and not dp.affects(v("6.1.0"))
    assert all(c.sources for c in table.values())


def test_bad_cve_table_names_file_and_row(tmp_path):
    bad = tmp_path / "cves.yaml"
    bad.write_text("cves:\n  - {cve: CVE-1, name: x, summary: y, introduced: '1.0', "
                   "fixed: [], sources: []}\n")
    with pytest.raises(UsageError, match=r"cves.yaml:2: cves\[0\]\.sources") as e:
        A.load_cves(bad)
    assert e.value.exit_code == 2
    bad.write_text("cves:\n  - cve: CVE-1\n    name: x\n    summary: y\n"
                   "    introduced: soon\n    fixed: []\n    sources: [https://example.org/]\n")
    with pytest.raises(UsageError, match=r"cves.yaml:5: cves\[0\]\.introduced"):
        A.load_cves(bad)


def test_wrong_password_and_unknown_host_key(env, tmp_path):
    with FakeSensorCli(password="another") as fake:
        with pytest.raises(AuthError):
            _run(fake, tmp_path)
        other = FakeSensorCli().start()
        try:
            kh = other.write_known_hosts(tmp_path / "kh_other")
            kh.write_text(kh.read_text().replace(f":{other.port}", f":{fake.port}"))
            with pytest.raises(HostKeyError):
                A.run_audit(_ctx(), known_hosts=str(kh), port=fake.port)
        finally:
            other.stop()


def test_a_command_that_never_prompts_times_out(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, hang_on="system sanity") as fake:
        kh = fake.write_known_hosts(tmp_path / "known_hosts")
        tgt = A.sensor_ssh_target(_ctx(), known_hosts=str(kh), port=fake.port)
        with pytest.raises(ConnectTimeout, match="shell>"):
            A.run_audit(_ctx(), target=tgt, overrides={"timeout": 1.0})


def test_a_dropped_session_is_a_transport_error(env, tmp_path):
    with FakeSensorCli(password=PASSWORD, drop_on="system version") as fake:
        with pytest.raises(TransportError, match="closed the admin CLI session"):
            _run(fake, tmp_path)


def test_bad_input_contacts_nothing(env, tmp_path):
    with FakeSensorCli(password=PASSWORD) as fake:
        with pytest.raises(UsageError):
            _run(fake, tmp_path, kernel="latest")
        assert fake.logins == 0


def _cli(args, tmp_path, fake):
    pb = tmp_path / "lab.yaml"
    data = reference_data(keep_sensor=True)
    data["sensor"]["url"] = "https://127.0.0.1"
    pb.write_text(yaml.safe_dump(data, sort_keys=False))
    kh = fake.write_known_hosts(tmp_path / "known_hosts")
    return audit.main(["-f", str(pb), "--known-hosts", str(kh), "--port", str(fake.port),
                       "--interval", "1", *args], standalone_mode=False,
                      obj=CliState(overrides={"sleep": lambda s: None}))


def test_cli_json_and_exit_codes(env, tmp_path, capsys):
    with FakeSensorCli(password=PASSWORD, kernel_package="5.10.209-2") as fake:
        assert _cli(["--json"], tmp_path, fake) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["version"] == "22.2.5.9-r-2121448" and doc["mirror_alive"] is True
        assert doc["monitor_interfaces"] == ["adiot0"] and doc["exit_code"] == 0
        assert PASSWORD not in json.dumps(doc)
        fake.mirror_rate = 0
        assert _cli([], tmp_path, fake) == 4
        out = capsys.readouterr()
        assert "mirror: DEAD" in out.out and "problem:" in out.err
        assert PASSWORD not in out.out + out.err


def test_through_the_hyperv_host_when_access_goes_through_it(env, tmp_path):
    """sensor.access ssh-tunnel: the SSH session to the admin CLI rides a direct-tcpip
    channel from a real OpenSSH server (the Hyper-V host's stand-in); the sensor's host key
    is checked under the sensor's own address."""
    from tests.helpers.sshd import sshd_server

    with sshd_server(tmp_path / "sshd") as srv, \
            FakeSensorCli(password=PASSWORD, kernel_package="5.10.209-2") as fake:
        data = reference_data(keep_sensor=True)
        data["sensor"]["url"] = "https://127.0.0.1"
        data["sensor"]["access"] = {"mode": "ssh-tunnel"}
        data["hyperv"] = {"host": srv.host, "transport": "ssh", "port": srv.port,
                          "user": srv.user, "ssh_key": str(srv.key_path),
                          "ssh_known_hosts": str(srv.known_hosts),
                          "vhd_path": data["hyperv"]["vhd_path"], "timeout": 20}
        ctx = LabContext(loaded=parse_playbook(parse_yaml(yaml.safe_dump(data), "lab.yaml")),
                         sleep=lambda s: None)
        kh = fake.write_known_hosts(tmp_path / "known_hosts")
        rep = A.run_audit(ctx, known_hosts=str(kh), port=fake.port)
        assert rep.version == "22.2.5.9-r-2121448" and rep.mirror_alive
        assert fake.commands == ["system version", "system sanity", "network list",
                                 "network list"]
        assert srv.commands() == []  # the host ran no command: a forward, not a shell
        # the sensor's key is checked under its own name, through the tunnel too
        other = FakeSensorCli().start()
        try:
            bad = other.write_known_hosts(tmp_path / "kh_other")
            bad.write_text(bad.read_text().replace(f":{other.port}", f":{fake.port}"))
            with pytest.raises(HostKeyError):
                A.run_audit(ctx, known_hosts=str(bad), port=fake.port)
        finally:
            other.stop()
