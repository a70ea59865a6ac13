"""Where a person opens the sensor's web UI (activation's instructions) for each
``sensor.access`` mode, and the access path ``sensor status`` reports (no network)."""

from __future__ import annotations

import yaml

from labctl.app.sensor import _tunnel_howto, access_path, browser_url
from labctl.core.context import LabContext
from labctl.core.playbook import parse_playbook
from labctl.core.yamlfile import parse_yaml
from tests.helpers.hyperv_lab import reference_data


def _ctx(mode: str) -> LabContext:
    data = reference_data(keep_sensor=True)
    data["sensor"]["access"] = {"mode": mode, "host_port": 9443}
    text = yaml.safe_dump(data, sort_keys=False)
    return LabContext(loaded=parse_playbook(parse_yaml(text, "lab.yaml")))


def test_browser_url_per_mode():
    host = reference_data()["hyperv"]["host"]
    assert browser_url(_ctx("direct")) == "https://192.168.0.101"
    assert browser_url(_ctx("netnat")) == f"https://{host}:9443"
    ctx = _ctx("ssh-tunnel")
    assert browser_url(ctx) == "https://127.0.0.1:8443"
    howto = _tunnel_howto(ctx)
    assert "ssh -L 8443:192.168.0.101:443 " in howto and host in howto


def test_access_path_names_the_mode_the_hop_and_the_url_used():
    host = reference_data()["hyperv"]["host"]
    doc = access_path(_ctx("netnat"), f"https://{host}:9443")
    assert doc == {"mode": "netnat", "sensor": "https://192.168.0.101",
                   "via": f"https://{host}:9443", "url": f"https://{host}:9443"}
    assert access_path(_ctx("direct"), "https://192.168.0.101") == {
        "mode": "direct", "sensor": "https://192.168.0.101", "url": "https://192.168.0.101"}
