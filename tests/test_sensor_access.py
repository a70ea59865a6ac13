"""``sensor_endpoint``: the base URL a command reaches the sensor at (``sensor.access``).

``ssh-tunnel`` runs for real: a throwaway OpenSSH server on 127.0.0.1 (the Hyper-V host's
stand-in, host keys checked) forwards ``direct-tcpip`` to the embedded sensor's HTTPS API
served in-process on 127.0.0.1, and a real HTTPS request through the tunnel is answered,
with the sensor's certificate pinned under the sensor's own address (not the tunnel's
ephemeral port). A changed certificate is refused before any request; the tunnel is closed
when the command ends, also when it fails."""

from __future__ import annotations

import json
import socket
import ssl

import pytest
import yaml

from labctl.core.context import LabContext
from labctl.core.errors import TransportError
from labctl.core.playbook import parse_playbook
from labctl.core.yamlfile import parse_yaml
from labctl.sensor.access import describe, sensor_endpoint
from labctl.transport.http import cert_fingerprint, make_session
from labctl.transport.sshexec import HostKeyError
from tests.helpers.hyperv_lab import reference_data
from tests.helpers.sensor_api import running_api
from tests.helpers.sshd import sshd_server


def _ctx(data: dict) -> LabContext:
    text = yaml.safe_dump(data, sort_keys=False)
    return LabContext(loaded=parse_playbook(parse_yaml(text, "lab.yaml")))


def _data(mode: str, sensor_url: str | None = None, srv=None, known_hosts=None) -> dict:
    data = reference_data(keep_sensor=True)
    data["sensor"]["access"] = {"mode": mode, "host_port": 9443}
    if sensor_url:
        data["sensor"]["url"] = sensor_url
    if srv is not None:
        data["hyperv"] = {"host": srv.host, "transport": "ssh", "port": srv.port,
                          "user": srv.user, "ssh_key": str(srv.key_path),
                          "ssh_known_hosts": str(known_hosts or srv.known_hosts),
                          "vhd_path": data["hyperv"]["vhd_path"], "timeout": 20}
    return data


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.fixture
def lab(tmp_path):
    with running_api(tmp_path / "sensor") as api, sshd_server(tmp_path / "sshd") as srv:
        yield api, srv, tmp_path / "pins.json"


def test_direct_is_the_playbook_url_and_netnat_the_hosts_published_port():
    with sensor_endpoint(_ctx(_data("direct"))) as url:
        assert url == "https://192.168.0.101"
    data = _data("netnat")
    with sensor_endpoint(_ctx(data)) as url:
        assert url == f"https://{data['hyperv']['host']}:9443"
    assert describe(_ctx(data))["via"] == url


def test_https_request_through_the_tunnel_with_the_pinned_certificate(lab):
    api, srv, pins = lab
    api_port = int(api.url.rsplit(":", 1)[1])
    ctx = _ctx(_data("ssh-tunnel", api.url, srv))
    with sensor_endpoint(ctx, pin_store=pins) as url:
        host, port = url.removeprefix("https://").split(":")
        assert host == "127.0.0.1" and int(port) != api_port
        s = make_session(url, pin_store=pins)
        r = s.get(url + "/api/v1/alerts", headers={"Authorization": api.token}, timeout=10)
        assert r.status_code == 200 and isinstance(r.json(), list)
        r = s.get(url + "/api/v1/alerts", headers={"Authorization": "wrong"}, timeout=10)
        assert r.status_code in (401, 403)  # the sensor itself answered, through the tunnel
        during = json.loads(pins.read_text())
        assert during[f"127.0.0.1:{port}"] == during[f"127.0.0.1:{api_port}"]
        # the bytes really travel through sshd: with it gone, the same URL gets no answer
        srv.stop()
        with pytest.raises(Exception):  # noqa: B017 - any transport failure will do
            make_session(url, pin_store=pins, retries=0).get(
                url + "/api/v1/alerts", headers={"Authorization": api.token}, timeout=5)
    cert_der = ssl.PEM_cert_to_DER_cert(api.cert.read_text())
    after = json.loads(pins.read_text())
    assert after == {f"127.0.0.1:{api_port}": cert_fingerprint(cert_der)}  # local key gone
    assert _refused(int(port))
    # the sshd ran no command: the forward is a channel, not a shell command
    assert srv.commands() == []


def test_a_changed_certificate_is_refused_before_any_request(lab):
    api, srv, pins = lab
    api_port = int(api.url.rsplit(":", 1)[1])
    pins.write_text(json.dumps({f"127.0.0.1:{api_port}": "ab" * 32}))
    ctx = _ctx(_data("ssh-tunnel", api.url, srv))
    with pytest.raises(TransportError, match="changed") as e:
        with sensor_endpoint(ctx, pin_store=pins):
            pytest.fail("the body must not run")
    assert str(pins) in (e.value.hint or "")
    assert json.loads(pins.read_text()) == {f"127.0.0.1:{api_port}": "ab" * 32}


def test_the_tunnel_is_closed_when_the_command_fails(lab):
    api, srv, pins = lab
    ctx = _ctx(_data("ssh-tunnel", api.url, srv))
    with pytest.raises(RuntimeError):
        with sensor_endpoint(ctx, pin_store=pins) as url:
            port = int(url.rsplit(":", 1)[1])
            raise RuntimeError("command failed")
    assert _refused(port)
    assert len(json.loads(pins.read_text())) == 1


def test_an_unknown_host_key_is_refused(lab, tmp_path):
    api, srv, pins = lab
    other = tmp_path / "known_hosts_other"
    other.write_text(f"[127.0.0.1]:{srv.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    ctx = _ctx(_data("ssh-tunnel", api.url, srv, known_hosts=other))
    with pytest.raises(HostKeyError):
        with sensor_endpoint(ctx, pin_store=pins):
            pytest.fail("the body must not run")


def test_the_number_of_forwarded_connections_is_bounded(lab):
    from labctl.transport.sshexec import SshTarget
    from labctl.transport.tunnel import open_tunnel

    api, srv, pins = lab
    api_port = int(api.url.rsplit(":", 1)[1])
    target = SshTarget(user=srv.user, host=srv.host, port=srv.port,
                       key_filename=str(srv.key_path), known_hosts=str(srv.known_hosts),
                       timeout=10)
    with open_tunnel(target, "127.0.0.1", api_port, max_connections=2) as t:
        port = t.address[1]
        held = [socket.create_connection(t.address, timeout=5) for _ in range(2)]
        extra = socket.create_connection(t.address, timeout=5)
        extra.settimeout(5)
        assert extra.recv(1) == b""  # the third is closed at once
        for h in held:
            h.close()
        extra.close()
        assert t.stats.refused >= 1
    assert _refused(port)
