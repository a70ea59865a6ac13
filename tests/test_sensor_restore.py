"""A restarted sensor keeps deduplicating: alerts persist their dedup key, and a store
written before they did (no ``dedup_key`` in the rows) still restores; the TLS key of such
a state (``tls/key.pem``) is kept, so a pinned certificate stays valid."""

from __future__ import annotations

import pytest

from labctl.sensor.config import load_config
from labctl.sensor.engine import Sensor
from labctl.sensor.store import SensorStore
from tests.helpers.sensor_pcaps import T0, address_scan

pytest.importorskip("scapy")

TITLE = "Address Scan Detected"


def _feed(s: Sensor, packets) -> None:
    for p in packets:
        raw = bytes(p)
        s.feed(raw, 0, len(raw), float(p.time))


def _scanned(t0: float) -> Sensor:
    s = Sensor(load_config(), learning_mode=False)
    _feed(s, address_scan(60, t0=t0))
    assert [a.title for a in s.alerts].count(TITLE) == 1
    return s


def _restart(tmp_path, rows, *, legacy: bool) -> Sensor:
    devices, connections, alerts, events, *_flows = rows
    if legacy:  # rows as a sensor wrote them before alerts carried their dedup key
        alerts = [{k: v for k, v in a.items() if k != "dedup_key"} for a in alerts]
    store = SensorStore(tmp_path / ("legacy" if legacy else "current"))
    try:
        store.write_batch(devices, connections, alerts, events)
        s = Sensor(load_config(), learning_mode=False)
        s.restore(*store.load_all())
    finally:
        store.close()
    return s


@pytest.mark.parametrize("legacy", [False, True], ids=["current-store", "legacy-store"])
def test_restored_address_scan_alert_still_absorbs_repeats(tmp_path, legacy):
    first = _scanned(T0)
    with first.lock:
        rows = first.take_dirty()
    (row,) = [a for a in rows[2] if a["title"] == TITLE]
    assert row["dedup_key"] == [TITLE, "172.16.1.50", "172.16.0.0/16"]
    again = _restart(tmp_path, rows, legacy=legacy)
    (restored,) = [a for a in again.alerts if a.title == TITLE]
    assert restored.dedup_key == (TITLE, "172.16.1.50", "172.16.0.0/16")
    n = len(again.alerts)
    _feed(again, address_scan(60, t0=T0 + 60))  # the same scan again, inside dedup_seconds
    assert [a.title for a in again.alerts[n:]].count(TITLE) == 0
    assert restored.count == 2


def test_legacy_tls_key_is_kept_so_the_pin_survives(tmp_path):
    from labctl.sensor.api import ensure_certificate
    from labctl.transport.certs import ensure_self_signed, fingerprint

    tls = tmp_path / "tls"
    cert, key = ensure_self_signed(tls, stem="cert", common_name="old sensor")
    key.rename(tls / "key.pem")  # the layout the sensor used to write: cert.pem + key.pem
    pinned = fingerprint(cert)
    cert2, key2 = ensure_certificate(tmp_path, ["127.0.0.1"])
    assert cert2 == tls / "cert.pem" and fingerprint(cert2) == pinned
    assert key2.exists() and (key2.stat().st_mode & 0o777) == 0o600
    assert not (tls / "key.pem").exists()
