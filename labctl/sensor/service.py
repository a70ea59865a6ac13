"""``labctl sensor serve``: live capture + engines + SQLite + HTTPS API, until SIGTERM/SIGINT.

Threads and why:

* the capture loop (the calling thread) reads frames in batches and feeds the sensor under
  its lock, so the API never sees a half-updated inventory;
* a one-second housekeeping thread moves changed rows to SQLite in one transaction (an
  unclean stop loses at most ~1 s), runs the idle timer that raises the Operational
  "No Traffic / Traffic Detected on Sensor Interface" alerts, prunes scan windows and
  writes ``<state>/status.json`` (listen URL, certificate fingerprint, kernel drop counts);
* the HTTPS server runs in its own threads.

On SIGTERM/SIGINT the loop ends, the API stops, and a final flush is committed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labctl.core.errors import PreflightError, UsageError
from labctl.sensor.config import load_config
from labctl.sensor.engine import Sensor
from labctl.sensor.store import SensorStore

log = logging.getLogger("labctl.sensor.service")


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) -> (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--listen {text!r} is not ADDR:PORT", hint="e.g. 192.168.0.101:443")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _lock_state(state_dir: Path) -> int:
    """One serve per state folder: a second one would interleave writes to the database."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(state_dir / "serve.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise PreflightError(f"another `labctl sensor serve` is using {state_dir}",
                             hint="stop it first, or give this one its own --state") from None
    return fd


class SensorService:
    """Wires capture, sensor, store and API together; usable from tests in a thread."""

    def __init__(self, *, interface: str, listen: str, state_dir: str | Path,
                 config: str | Path | None = None, learning_mode: bool | None = None,
                 authorized_scanners: list[str] | None = None, ring_mb: int = 128) -> None:
        self.interface = interface
        self.ring_mb = ring_mb
        self.listen = parse_listen(listen)
        self.state_dir = Path(state_dir)
        cfg = load_config(config)
        self._lock_fd = _lock_state(self.state_dir)
        self.store = SensorStore(self.state_dir)
        # like a real sensor, leaving learning mode is a decision that survives restarts.
        # Which value is in force, first match wins: --learning/--no-learning; the
        # learning_mode of a --config file that sets it (the twin writes one from the
        # playbook, so a changed playbook takes effect at the next `up`); the remembered
        # value; the shipped engines file. The first two are remembered.
        if learning_mode is None and config is not None and \
                "learning_mode" in cfg.engines.model_fields_set:
            learning_mode = cfg.engines.learning_mode
        if learning_mode is None:
            stored = self.store.get_meta("learning_mode")
            if stored is not None:
                learning_mode = stored == "1"
        else:
            self.store.set_meta("learning_mode", "1" if learning_mode else "0")
        self.sensor = Sensor(cfg, learning_mode=learning_mode,
                             authorized_scanners=authorized_scanners or [],
                             interface=interface)
        self.sensor.restore(*self.store.load_all(), *self.store.load_flows())
        self.stop_event = threading.Event()
        self.capture: Any = None
        self.server: Any = None
        self.idle = False
        self.last_rx = time.time()
        self.idle_seconds = cfg.detections.no_traffic.idle_seconds or 300.0
        self.flushes = 0
        self.errors = 0

    def start_api(self) -> str:
        from labctl.sensor.api import make_server, start_in_thread
        from labctl.transport.certs import fingerprint

        try:
            self.server = make_server(self.sensor, self.store, self.listen, self.state_dir,
                                      status_fn=self._capture_stats)
        except OSError as e:
            host, port = self.listen
            raise PreflightError(f"cannot serve the sensor API on {host}:{port}: "
                                 f"{e.strerror or e}",
                                 hint="is another program using that port, or is the "
                                      "address not on this machine (or namespace)?") from None
        start_in_thread(self.server)
        host, port = self.server.server_address[:2]
        shown = host if ":" not in host else f"[{host}]"
        self.url = f"https://{shown}:{port}"
        self.fingerprint = fingerprint(self.state_dir / "tls" / "cert.pem")
        return self.url

    def _capture_stats(self) -> dict[str, Any]:
        st = self.capture.stats() if self.capture is not None else {}
        return {"interface": self.interface, "idle": self.idle, "errors": self.errors, **st}

    def flush(self) -> None:
        with self.sensor.lock:
            rows = self.sensor.take_dirty()
        self.store.write_batch(*rows)
        self.flushes += 1

    def housekeeping(self, now: float) -> None:
        """Idle timer, window pruning and the status file (runs every second)."""
        with self.sensor.lock:
            if not self.idle and now - self.last_rx >= self.idle_seconds:
                self.idle = True
                self.sensor.operational("no_traffic", now)
            self.sensor.prune(self.sensor.last_ts or now)
        self.write_status()

    def write_status(self) -> None:
        st = self.capture.stats() if self.capture is not None else {}
        doc = {"pid": os.getpid(), "interface": self.interface,
               "url": getattr(self, "url", None),
               "fingerprint": getattr(self, "fingerprint", None),
               "idle": self.idle, **st, **self.sensor.summary()}
        tmp = self.state_dir / "status.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        os.replace(tmp, self.state_dir / "status.json")

    def _ticker(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self.flush()
                self.housekeeping(time.time())
            except Exception:  # keep flushing even if one round fails
                log.exception("sensor housekeeping failed")

    def run(self, ready: Callable[[SensorService], None] | None = None) -> None:
        """Capture until :attr:`stop_event` is set; always flush on the way out."""
        from labctl.sensor.capture import open_capture

        self.capture = open_capture(self.interface, ring_mb=self.ring_mb)
        ticker = threading.Thread(target=self._ticker, name="sensor-flush", daemon=True)
        try:
            self.start_api()
            self.write_status()
            ticker.start()
            if ready:
                ready(self)
            sensor = self.sensor
            cap = self.capture
            from labctl.sensor.replay import collector_tuned

            with collector_tuned():  # the flow store's containers: see collector_tuned
                self._loop(sensor, cap)
        finally:
            self.stop_event.set()
            if self.server is not None:
                self.server.stop()
            if ticker.is_alive():
                ticker.join(timeout=5)
            self.flush()
            self.write_status()
            self.capture.close()
            self.store.close()

    def _loop(self, sensor: Sensor, cap: Any) -> None:
        while not self.stop_event.is_set():
            batch = cap.recv_batch()
            if not batch:
                continue
            self.last_rx = batch[-1][1]
            with sensor.lock:
                if self.idle:
                    self.idle = False
                    sensor.operational("traffic_resumed", self.last_rx)
                try:
                    sensor.feed_batch(batch)
                except Exception:  # never die on traffic: log, count, carry on
                    self.errors += 1
                    log.exception("sensor: a capture batch failed (%d frames)", len(batch))

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, frame: Any) -> None:
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
