"""Detections of the embedded sensor, from pcaps crafted with scapy and run through
`labctl sensor replay --json` (the real CLI path): positive cases, negatives just under the
threshold, tagged and untagged, learning mode, authorized scanners and the 6667 rule."""

from __future__ import annotations

import pytest

from tests.helpers.sensor_pcaps import (
    SCANNER_IP,
    SCANNER_MAC,
    T0,
    TARGET_IP,
    TARGET_MAC,
    address_scan,
    arp_scan,
    engines_file,
    icmp_echo,
    syn_scan,
    tcp_packet,
    udp_packet,
    vary_source,
    write,
    write_raw,
)

pytest.importorskip("scapy")


def _replay(cli_run, pcap, *extra):
    r = cli_run("sensor", "replay", "--pcap", str(pcap), "--json", *extra)
    assert r.exit_code == 0, r
    return r.json()


def _titles(doc):
    return [a["title"] for a in doc["alerts"]]


@pytest.mark.parametrize("vlan", [None, 52])
def test_port_scan_fires_at_25_ports_tagged_and_untagged(tmp_path, cli_run, vlan):
    doc = _replay(cli_run, write(tmp_path / "scan.pcap", syn_scan(25, vlan=vlan)))
    scans = [a for a in doc["alerts"] if a["title"] == "Port Scan Detected"]
    assert len(scans) == 1
    a = scans[0]
    assert a["engine"] == "Anomaly" and a["severity"] == "Critical"
    assert a["sourceDeviceAddress"] == SCANNER_IP
    assert a["destinationDeviceAddress"] == TARGET_IP
    assert f"Scanning address: {SCANNER_IP}" in a["message"]
    assert isinstance(a["remediationSteps"], list) and a["remediationSteps"]
    scanner = next(d for d in doc["devices"] if d["ipAddresses"] == [SCANNER_IP])
    assert scanner["macAddresses"] == [SCANNER_MAC]
    assert scanner["vendor"] == "Microsoft"
    assert scanner["vlans"] == ([vlan] if vlan else [])


@pytest.mark.parametrize("vlan", [None, 52])
def test_port_scan_24_ports_is_quiet(tmp_path, cli_run, vlan):
    doc = _replay(cli_run, write(tmp_path / "scan.pcap", syn_scan(24, vlan=vlan)))
    assert "Port Scan Detected" not in _titles(doc)


def test_port_scan_window_is_two_minutes(tmp_path, cli_run):
    # 30 ports, but spread over 10 minutes: never 25 inside 120 s
    doc = _replay(cli_run, write(tmp_path / "slow.pcap", syn_scan(30, gap=20.0)))
    assert "Port Scan Detected" not in _titles(doc)


def test_qinq_keeps_the_inner_vlan(tmp_path, cli_run):
    from scapy.all import IP, TCP, Dot1AD, Dot1Q, Ether

    p = Ether(src=SCANNER_MAC, dst=TARGET_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=52) / IP(
        src=SCANNER_IP, dst=TARGET_IP) / TCP(dport=80, flags="S")
    p.time = T0
    doc = _replay(cli_run, write(tmp_path / "qinq.pcap", [p]))
    assert doc["devices"][0]["vlans"] == [52]


@pytest.mark.parametrize("vlan", [None, 52])
def test_address_scan_fires_at_50_addresses(tmp_path, cli_run, vlan):
    doc = _replay(cli_run, write(tmp_path / "a.pcap", address_scan(50, vlan=vlan)))
    hits = [a for a in doc["alerts"] if a["title"] == "Address Scan Detected"]
    assert len(hits) == 1
    assert hits[0]["sourceDeviceAddress"] == SCANNER_IP
    assert "Scanned subnet: 172.16.0.0/16" in hits[0]["message"]
    assert hits[0]["engine"] == "Anomaly" and hits[0]["severity"] == "Critical"


def test_address_scan_49_addresses_is_quiet(tmp_path, cli_run):
    doc = _replay(cli_run, write(tmp_path / "a.pcap", address_scan(49)))
    assert "Address Scan Detected" not in _titles(doc)


def test_authorized_scanner_raises_no_scan_alerts(tmp_path, cli_run):
    pk = syn_scan(100) + address_scan(60, t0=T0 + 5)
    pcap = write(tmp_path / "s.pcap", pk)
    doc = _replay(cli_run, pcap, "--scanner", SCANNER_IP)
    assert "Port Scan Detected" not in _titles(doc)
    assert "Address Scan Detected" not in _titles(doc)
    assert next(d for d in doc["devices"] if d["ipAddresses"] == [SCANNER_IP])["scanner"]
    # the same capture from an unauthorized source does alert; also via engines.yaml by MAC
    assert {"Port Scan Detected", "Address Scan Detected"} <= set(_titles(_replay(cli_run, pcap)))
    cfg = engines_file(tmp_path, scanners=[SCANNER_MAC])
    doc = _replay(cli_run, pcap, "--config", str(cfg))
    assert "Port Scan Detected" not in _titles(doc)


def test_arp_scan_off_by_default_and_fires_when_enabled(tmp_path, cli_run):
    pcap = write(tmp_path / "arp.pcap", arp_scan(40))
    assert "ARP Address Scan Detected" not in _titles(_replay(cli_run, pcap))
    cfg = engines_file(tmp_path, enable=["arp_scan"])
    assert "ARP Address Scan Detected" in _titles(_replay(cli_run, pcap, "--config", str(cfg)))
    under = write(tmp_path / "arp39.pcap", arp_scan(39))
    assert "ARP Address Scan Detected" not in _titles(
        _replay(cli_run, under, "--config", str(cfg)))


def test_icmp_flood_off_by_default_60_per_minute_when_enabled(tmp_path, cli_run):
    cfg = engines_file(tmp_path, enable=["icmp_flood"])
    pcap = write(tmp_path / "i.pcap", icmp_echo(60, gap=0.5))
    assert "ICMP Flooding" not in _titles(_replay(cli_run, pcap))
    assert "ICMP Flooding" in _titles(_replay(cli_run, pcap, "--config", str(cfg)))
    under = write(tmp_path / "i59.pcap", icmp_echo(59, gap=0.5))
    assert "ICMP Flooding" not in _titles(_replay(cli_run, under, "--config", str(cfg)))


def test_port_zero(tmp_path, cli_run):
    pk = [tcp_packet(SCANNER_IP, TARGET_IP, 0), udp_packet(SCANNER_IP, TARGET_IP, 0,
                                                                   t=T0 + 1)]
    doc = _replay(cli_run, write(tmp_path / "p0.pcap", pk))
    hits = [a for a in doc["alerts"] if a["title"] == "Illegal Connection Attempt on Port 0"]
    assert hits and hits[0]["engine"] == "Protocol Violation"
    ok = _replay(cli_run, write(tmp_path / "p1.pcap", [tcp_packet(SCANNER_IP,
                                                                     TARGET_IP, 1)]))
    assert "Illegal Connection Attempt on Port 0" not in _titles(ok)


def test_excessive_sessions_50_per_minute(tmp_path, cli_run):
    # 50 sessions to the same port (so no port scan) on 50 hosts of different /16s (no
    # address scan): only the session count crosses its threshold
    def sessions(n):
        return [tcp_packet(SCANNER_IP, f"10.{i}.0.1", 443, sport=30000 + i, t=T0 + i * 0.5)
                for i in range(n)]
    doc = _replay(cli_run, write(tmp_path / "s.pcap", sessions(50)))
    assert _titles(doc).count("Excessive Number of Sessions") == 1
    doc = _replay(cli_run, write(tmp_path / "s49.pcap", sessions(49)))
    assert "Excessive Number of Sessions" not in _titles(doc)


def test_dos_3000_attempts_per_minute(tmp_path, cli_run):
    template = bytes(tcp_packet("10.1.0.9", TARGET_IP, 80))

    def flood(n):
        frames = vary_source(template, (f"10.{1 + i // 250}.{i % 250}.9" for i in range(n)),
                               (1024 + i for i in range(n)))
        return [(T0 + i * 0.01, f) for i, f in enumerate(frames)]
    doc = _replay(cli_run, write_raw(tmp_path / "d.pcap", flood(3000)))
    hit = [a for a in doc["alerts"] if a["title"] == "Suspicion of Denial Of Service Attack"]
    assert len(hit) == 1 and hit[0]["engine"] == "Malware"
    assert hit[0]["destinationDeviceAddress"] == TARGET_IP
    doc = _replay(cli_run, write_raw(tmp_path / "d2.pcap", flood(2999)))
    assert "Suspicion of Denial Of Service Attack" not in _titles(doc)


def test_learning_mode_withholds_policy_alerts_only(tmp_path, cli_run):
    pk = syn_scan(30) + [tcp_packet("172.16.1.77", "8.8.8.8", 443, t=T0 + 5)]
    pcap = write(tmp_path / "l.pcap", pk)
    learning = _replay(cli_run, pcap, "--learning")
    assert "Port Scan Detected" in _titles(learning)  # Anomaly still fires
    assert "New Asset Detected" not in _titles(learning)
    assert "Unauthorized Internet Connectivity Detected" not in _titles(learning)
    assert learning["withheld_policy_alerts"] >= 2
    assert all(d["authorized"] for d in learning["devices"])
    live = _replay(cli_run, pcap, "--no-learning")
    titles = _titles(live)
    assert "Port Scan Detected" in titles
    assert titles.count("New Asset Detected") == 2  # scanner and 172.16.1.77
    net = next(a for a in live["alerts"]
               if a["title"] == "Unauthorized Internet Connectivity Detected")
    assert net["engine"] == "Policy Violation"
    assert (net["sourceDeviceAddress"], net["destinationDeviceAddress"]) == ("172.16.1.77",
                                                                             "8.8.8.8")
    assert not any(d["authorized"] for d in live["devices"])
    # a global address is an internet endpoint: a device record of type Internet (no New
    # Asset alert for it), which the alert names by id instead of a null id
    inet = [d for d in live["devices"] if d["ipAddresses"] == ["8.8.8.8"]]
    assert len(inet) == 1 and inet[0]["type"] == "Internet"
    assert net["destinationDevice"] == inet[0]["id"]
    assert all(d["type"] == "Unknown" for d in live["devices"] if d is not inet[0])


def test_custom_rule_6667_fires_and_dedups(tmp_path, cli_run):
    pk = [tcp_packet("172.16.1.20", "172.16.1.30", 6667, flags="PA", t=T0 + i, payload=b"PING")
          for i in range(20)]
    pk.append(tcp_packet("172.16.1.20", "172.16.1.30", 6668, flags="PA", t=T0 + 30))
    doc = _replay(cli_run, write(tmp_path / "irc.pcap", pk), "--learning")
    hits = [a for a in doc["alerts"] if a["title"] == "Communication to port 6667"]
    assert len(hits) == 1  # 20 packets, one alert inside the dedup window
    a = hits[0]
    assert a["severity"] == "Major"
    assert a["sourceDeviceAddress"] == "172.16.1.20"
    assert "from 172.16.1.20 to 172.16.1.30" in a["message"]
    neg = _replay(cli_run, write(tmp_path / "n.pcap", pk[-1:]))
    assert "Communication to port 6667" not in _titles(neg)


def test_dedup_window_then_new_alert(tmp_path, cli_run):
    cfg = engines_file(tmp_path, dedup_seconds=60)
    pk = syn_scan(25) + syn_scan(25, t0=T0 + 30, start_port=100) + \
        syn_scan(25, t0=T0 + 200, start_port=200)
    doc = _replay(cli_run, write(tmp_path / "d.pcap", pk), "--config", str(cfg))
    assert _titles(doc).count("Port Scan Detected") == 2  # 2nd burst deduped, 3rd is new


def test_rule_with_direction_and_decimal_ip(tmp_path, cli_run):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: Feeder talks MQTT out\n"
        "    protocol: TCP\n"
        "    direction: {source: [172.16.1.0/24], destination: [10.0.0.0/8]}\n"
        "    conditions: ['TCP.dstport == 1883', 'IPv4.src == 2886729997']\n"  # 172.16.1.13
        "    action: alert\n"
        "    severity: Minor\n"
        "    message: 'MQTT from {IPv4.src}:{TCP.srcport}'\n"
        "  - name: Feeder event\n"
        "    protocol: UDP\n"
        "    conditions: ['UDP.dstport >= 6000', 'UDP.dstport < 7000']\n"
        "    action: event\n")
    cfg = engines_file(tmp_path, rules=[str(rules)])
    pk = [tcp_packet("172.16.1.13", "10.1.2.3", 1883, sport=5555),
          tcp_packet("172.16.1.14", "10.1.2.3", 1883, t=T0 + 1),  # other source
          tcp_packet("172.16.1.13", "192.168.9.9", 1883, t=T0 + 2),  # outside direction
          udp_packet("172.16.1.13", "172.16.1.1", 6500, t=T0 + 3)]
    doc = _replay(cli_run, write(tmp_path / "r.pcap", pk), "--config", str(cfg))
    hits = [a for a in doc["alerts"] if a["title"] == "Feeder talks MQTT out"]
    assert len(hits) == 1 and hits[0]["message"] == "MQTT from 172.16.1.13:5555"
    assert hits[0]["severity"] == "Minor"
    assert "Feeder event" not in _titles(doc)  # action: event raises no alert


def test_inventory_connections_and_services(tmp_path, cli_run):
    from scapy.all import ARP, Ether

    pk = [tcp_packet("172.16.1.20", "172.16.1.30", 6668, sport=40000, t=T0),
          tcp_packet("172.16.1.30", "172.16.1.20", 40000, sport=6668, flags="SA", t=T0 + 0.1,
                       smac="dc:a6:32:00:00:30")]
    arp = Ether(src="24:0a:c4:00:00:40", dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc="24:0a:c4:00:00:40", psrc="172.16.1.40", pdst="172.16.1.1")
    arp.time = T0 + 1
    pk.append(arp)
    doc = _replay(cli_run, write(tmp_path / "inv.pcap", pk))
    devs = {d["ipAddresses"][0]: d for d in doc["devices"]}
    assert devs["172.16.1.30"]["vendor"] == "Raspberry Pi Trading"
    assert devs["172.16.1.30"]["ports"] == [6668]
    assert "IRC" in [p["name"] for p in devs["172.16.1.30"]["protocols"]]
    assert devs["172.16.1.40"]["vendor"] == "Espressif"
    assert devs["172.16.1.40"]["macAddresses"] == ["24:0a:c4:00:00:40"]
    assert devs["172.16.1.20"]["firstSeen"] == int(T0 * 1000)
    (conn,) = doc["connections"]
    assert conn["ports"] == [6668]
    assert {conn["firstDeviceId"], conn["secondDeviceId"]} == {devs["172.16.1.20"]["id"],
                                                               devs["172.16.1.30"]["id"]}
    assert conn["discovered"] == int((T0 + 0.1) * 1000)


def test_ipv6_address_scan_groups_by_64(tmp_path, cli_run):
    from scapy.all import TCP, Ether, IPv6

    def scan(n, prefix="fd00:52::"):
        out = []
        for i in range(n):
            p = Ether(src=SCANNER_MAC, dst=TARGET_MAC) / IPv6(
                src="fd00:52::50", dst=f"{prefix}{i + 1:x}") / TCP(dport=80, flags="S")
            p.time = T0 + i * 0.01
            out.append(p)
        return out
    doc = _replay(cli_run, write(tmp_path / "v6.pcap", scan(50)))
    hit = [a for a in doc["alerts"] if a["title"] == "Address Scan Detected"]
    assert len(hit) == 1 and "Scanned subnet: fd00:52::/64" in hit[0]["message"]
    assert hit[0]["sourceDeviceAddress"] == "fd00:52::50"
    doc = _replay(cli_run, write(tmp_path / "v6b.pcap", scan(49)))
    assert "Address Scan Detected" not in _titles(doc)


def test_scanner_option_is_validated(tmp_path, cli_run):
    pcap = write(tmp_path / "s.pcap", syn_scan(30))
    r = cli_run("sensor", "replay", "--pcap", str(pcap), "--scanner", "kali-box")
    assert r.exit_code == 2 and "neither an IP nor a MAC" in r.stderr
    doc = _replay(cli_run, pcap, "--scanner", SCANNER_MAC.upper().replace(":", "-"))
    assert "Port Scan Detected" not in _titles(doc)
