"""engines.yaml and rule files: the shipped ones load; mistakes give a ConfigError naming the
file, the key path and the line, and the CLI exits 2."""

from __future__ import annotations

import pytest

from labctl.core.errors import ConfigError
from labctl.sensor.config import load_config, load_rules_file
from tests.helpers.sensor_pcaps import engines_file


def test_shipped_config_has_reference_defaults():
    cfg = load_config()
    d = cfg.detections
    assert (d.port_scan.title, d.port_scan.threshold, d.port_scan.window_seconds) == (
        "Port Scan Detected", 25, 120)
    assert (d.port_scan.engine, d.port_scan.severity) == ("Anomaly", "Critical")
    assert (d.address_scan.threshold, d.address_scan.window_seconds, d.address_scan.prefix) == (
        50, 120, 16)
    assert not d.arp_scan.enabled and not d.icmp_flood.enabled
    assert d.dos.engine == "Malware" and d.dos.threshold == 3000
    assert d.internet.engine == "Policy Violation"
    assert d.no_traffic.engine == "Operational"
    assert [r.rule.name for r in cfg.rules] == ["Communication to port 6667"]
    assert cfg.rules[0].dstport_eq == 6667


BAD_RULES = [
    ("rules:\n  - name: x\n    protocol: TCP\n    conditions:\n      - TCP.dstport = 6667\n",
     "rules[0].conditions", 4, "VARIABLE OP VALUE"),
    ("rules:\n  - name: x\n    protocol: TCP\n    conditions: ['UDP.dstport == 53']\n",
     "rules[0].conditions", 4, "cannot be used in a TCP rule"),
    ("rules:\n  - name: x\n    protocol: TCP\n    conditions: ['TCP.dstport == 70000']\n",
     "rules[0].conditions", 4, "out of range"),
    ("rules:\n  - name: x\n    protocol: SCTP\n", "rules[0].protocol", 3, "TCP"),
    ("rules:\n  - name: x\n    protocol: TCP\n    severity: Huge\n", "rules[0].severity", 4,
     "Critical"),
    ("rules:\n  - name: x\n    protocol: TCP\n    colour: red\n", "rules[0].colour", 4,
     "unknown key"),
    ("rules:\n  - name: x\n    protocol: TCP\n    direction: {source: [300.1.1.1]}\n",
     "rules[0].direction.source", 4, "not an IP"),
    ("rules:\n  - name: x\n    protocol: TCP\n    conditions: ['TCP.flags == 2']\n",
     "rules[0].conditions", 4, "unknown variable"),
]


@pytest.mark.parametrize("text,key,line,needle", BAD_RULES)
def test_bad_rule_file_names_file_key_line(tmp_path, text, key, line, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_rules_file(f)
    e = ei.value
    assert e.file == str(f) and e.key == key and e.line == line, (e.key, e.line, str(e))
    assert needle in str(e)


def test_rules_file_without_rules_key(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("- name: x\n")
    with pytest.raises(ConfigError, match="top-level `rules:`"):
        load_rules_file(f)


def test_bad_rule_via_cli_exits_2(tmp_path, cli_run):
    rules = tmp_path / "custom.yaml"
    rules.write_text("rules:\n  - name: irc\n    protocol: TCP\n    action: page-me\n")
    cfg = engines_file(tmp_path, rules=[str(rules)])
    pcap = tmp_path / "x.pcap"
    pcap.write_bytes(b"")
    r = cli_run("sensor", "replay", "--pcap", str(pcap), "--config", str(cfg))
    assert r.exit_code == 2
    assert f"{rules}:4: rules[0].action" in r.stderr


def test_bad_engines_file(tmp_path, cli_run):
    cfg = engines_file(tmp_path)
    text = cfg.read_text().replace("threshold: 25", "threshold: -3")
    cfg.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    assert ei.value.key == "detections.port_scan.threshold"
    assert ei.value.line and "threshold: -3" in text.splitlines()[ei.value.line - 1]
    cfg.write_text(text.replace("threshold: -3", "threshold: 25").replace(
        "authorized_scanners: []", "authorized_scanners: [not-an-address]"))
    r = cli_run("sensor", "replay", "--pcap", str(cfg), "--config", str(cfg))
    assert r.exit_code == 2 and "authorized_scanners" in r.stderr


def test_missing_rule_file_named_in_engines(tmp_path):
    cfg = engines_file(tmp_path, rules=["does-not-exist.yaml"])
    with pytest.raises(ConfigError, match="not found") as ei:
        load_config(cfg)
    assert ei.value.key == "rules[0]"
