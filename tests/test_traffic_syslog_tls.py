"""TLS syslog: a self-signed collector is pinned by SHA-256 on first use in labctl's pin
store, a changed certificate is refused before anything is sent, --fingerprint is enforced;
against a real rsyslogd with certificates made by the test."""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
from pathlib import Path

import pytest

from labctl.cli import run
from tests.helpers.traffic_pcaps import write_pcap
from tests.test_traffic_report import frames

pytestmark = pytest.mark.skipif(
    not (shutil.which("rsyslogd") or Path("/usr/sbin/rsyslogd").exists()),
    reason="needs rsyslog and rsyslog-gnutls (Debian packages)")


def _sha256(cert_pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.read_text())).hexdigest()


def test_pin_on_first_use_then_refuse_a_changed_certificate(tmp_path: Path, _isolated_state,
                                                             capsys) -> None:
    from tests.helpers.traffic_rsyslog import Rsyslog

    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with Rsyslog(tmp_path / "one") as first:
        url = f"tls://127.0.0.1:{first.tls}"
        # no --ca: the test CA is in no trust store, so the certificate is pinned
        assert run(["traffic", "export", "--pcap", str(pcap), "--syslog", url]) == 0
        assert len(first.received(20)) == 20
        pins_path = _isolated_state / "pins.json"
        pins = json.loads(pins_path.read_text())
        assert pins[f"127.0.0.1:{first.tls}"] == _sha256(first.cert)
        assert pins_path.stat().st_mode & 0o777 == 0o600
        # a second run uses the pin
        first.clear()
        assert run(["traffic", "export", "--pcap", str(pcap), "--syslog", url]) == 0
        assert len(first.received(20)) == 20
        port = first.tls
    capsys.readouterr()
    # the same address now serves another certificate: refused, nothing sent, the pin kept
    with Rsyslog(tmp_path / "two", tls_port=port) as second:
        assert _sha256(second.cert) != pins[f"127.0.0.1:{port}"]
        rc = run(["traffic", "export", "--pcap", str(pcap), "--syslog", url])
        assert rc == 5
        err = capsys.readouterr().err
        assert "changed" in err and str(pins_path) in err and f"127.0.0.1:{port}" in err
        assert _sha256(second.cert) in err
        assert second.received(1, timeout=1.5) == []
        assert json.loads(pins_path.read_text()) == pins
        # the CA that signed the new certificate is accepted explicitly
        assert run(["traffic", "export", "--pcap", str(pcap), "--syslog", url,
                    "--ca", str(second.ca)]) == 0
        assert len(second.received(20)) == 20


def test_fingerprint_option(tmp_path: Path, _isolated_state, capsys) -> None:
    from tests.helpers.traffic_rsyslog import Rsyslog

    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    with Rsyslog(tmp_path) as r:
        url = f"tls://127.0.0.1:{r.tls}"
        fp = _sha256(r.cert)
        wrong = "00" * 32
        assert run(["traffic", "export", "--pcap", str(pcap), "--syslog", url,
                    "--fingerprint", wrong]) == 5
        assert "--fingerprint" in capsys.readouterr().err
        assert r.received(1, timeout=1.0) == []
        colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
        assert run(["traffic", "export", "--pcap", str(pcap), "--syslog", url,
                    "--fingerprint", colons]) == 0
        assert len(r.received(20)) == 20
        # an explicit fingerprint is enforced, never stored
        assert not (_isolated_state / "pins.json").exists()
        assert run(["traffic", "export", "--pcap", str(pcap), "--syslog", url,
                    "--fingerprint", "xyz"]) == 2
