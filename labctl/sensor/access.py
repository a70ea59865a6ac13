"""The one way a command reaches the sensor: :func:`sensor_endpoint` (``sensor.access``).

Every sensor command and ``verify-alerts`` wrap their work in::

    with sensor_endpoint(ctx) as base_url:
        ...  # talk to the sensor API at base_url

- ``direct``: the playbook's ``sensor.url`` (default ``https://<management_ip>``), unchanged;
- ``netnat``: ``https://<hyperv.host>:<sensor.access.host_port>``, the port the Hyper-V
  provider publishes to the management address, port 443 (a planned resource, see
  :mod:`labctl.hyperv.diff`);
- ``ssh-tunnel``: an SSH login to the Hyper-V host with its playbook settings
  (:func:`labctl.transport.tunnel.host_ssh_target`), a listener on 127.0.0.1 forwarding through
  ``direct-tcpip`` to the sensor's address and port as the host sees them, open for the body of
  the ``with`` and closed in ``finally``.

Certificate pins belong to the sensor, not to the tunnel's ephemeral local port: in
``ssh-tunnel`` mode the certificate seen through the tunnel is checked against the pin stored
for the sensor's own ``host:port`` (learned on first use like a direct connection), and a
changed certificate is refused here, before any request. While the tunnel is open the same
fingerprint is pinned for the local address too, so the HTTP session enforces it on every
connection; that entry is removed when the tunnel closes. A ``sensor.tls_fingerprint`` in the
playbook is enforced by the session on any address and needs none of this.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from labctl.core.context import LabContext
from labctl.core.errors import TransportError, UsageError
from labctl.core.playbook.sensor import SensorSection

if TYPE_CHECKING:  # pragma: no cover
    from labctl.transport.http import PinStore

log = logging.getLogger(__name__)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _sensor(ctx: LabContext) -> SensorSection:
    sensor = ctx.loaded.model.sensor
    if sensor is None:
        raise UsageError(f"{ctx.loaded.path or 'the playbook'} has no sensor: section",
                         hint="add a sensor: section (kind, management_ip, token)")
    return sensor


def describe(ctx: LabContext) -> dict[str, object]:
    """The access path as plain data, for ``sensor status`` and reports (no secrets)."""
    pb = ctx.loaded.model
    sensor = _sensor(ctx)
    acc = sensor.access
    out: dict[str, object] = {"mode": acc.mode, "sensor": sensor.base_url}
    if acc.mode == "netnat" and pb.hyperv is not None:
        out["via"] = f"https://{_url_host(pb.hyperv.host)}:{acc.host_port}"
    if acc.mode == "ssh-tunnel" and pb.hyperv is not None:
        out["via"] = f"ssh {pb.hyperv.user or '?'}@{pb.hyperv.host}"
    return out


@dataclass
class _Tunnel:
    """An open ``ssh-tunnel`` endpoint: what :func:`tunnel_probe` and :func:`ensure_pinned`
    need while the ``with`` of :func:`sensor_endpoint` runs."""

    tunnel: Any
    store: PinStore | None  # None: https with the playbook's fingerprint, or plain http
    sensor_key: str
    lhost: str
    lport: int
    timeout: float
    local_key: str | None = None  # set once the certificate was checked and carried


#: the tunnels open now, by the base URL :func:`sensor_endpoint` yielded
_OPEN: dict[str, _Tunnel] = {}


@contextmanager
def sensor_endpoint(ctx: LabContext, *, pin_store: Path | None = None,
                    defer_pin: bool = False) -> Iterator[str]:
    """The base URL to reach the sensor at for the duration of the ``with``.

    ``pin_store`` is the certificate pin file (default: labctl's, the one
    :func:`labctl.transport.http.make_session` uses). ``defer_pin`` (``up``'s sensor stage,
    which opens the tunnel before the sensor answers): the certificate is checked through
    the tunnel by :func:`ensure_pinned` once the sensor answers, not when the tunnel opens."""
    pb = ctx.loaded.model
    sensor = _sensor(ctx)
    mode = sensor.access.mode
    if mode == "direct":
        yield sensor.base_url
        return
    if pb.hyperv is None:
        raise UsageError(f"sensor.access.mode {mode} goes through the Hyper-V host, but the "
                         "playbook has no hyperv: section",
                         hint="add hyperv: (host, user, ssh_key/ssh_known_hosts), or use "
                              "sensor.access.mode: direct")
    if mode == "netnat":
        yield f"https://{_url_host(pb.hyperv.host)}:{sensor.access.host_port}"
        return
    yield from _through_tunnel(ctx, sensor, pin_store, defer_pin)


def _through_tunnel(ctx: LabContext, sensor: SensorSection, pin_store: Path | None,
                    defer_pin: bool) -> Iterator[str]:
    from labctl.transport.http import PinStore, host_port, pin_key
    from labctl.transport.tunnel import host_ssh_target, open_tunnel

    hv = ctx.loaded.model.hyperv
    assert hv is not None
    parts = urlsplit(sensor.base_url)
    dest_host, dest_port = host_port(sensor.base_url)
    target = host_ssh_target(hv, ctx.prompt_fn)
    with open_tunnel(target, dest_host, dest_port,
                     local_port=sensor.access.local_port) as tunnel:
        lhost, lport = tunnel.address
        store = None
        if parts.scheme == "https" and not sensor.tls_fingerprint:
            from labctl.core.state import pins_file

            store = PinStore(pin_store or pins_file())
        url = urlunsplit((parts.scheme, f"{lhost}:{lport}", parts.path.rstrip("/"), "", ""))
        state = _Tunnel(tunnel, store, pin_key(dest_host, dest_port), lhost, lport,
                        target.timeout)
        _OPEN[url] = state
        try:
            if store is not None and not defer_pin:
                _carry(state)
            yield url
        finally:
            _OPEN.pop(url, None)
            if store is not None and state.local_key is not None:
                store.forget(state.local_key)


def tunnel_probe(url: str) -> tuple[bool, str] | None:
    """For a URL :func:`sensor_endpoint` yielded in ``ssh-tunnel`` mode: whether the sensor's
    port accepts a connection *from the Hyper-V host* (a ``direct-tcpip`` channel opened
    and closed at once; the local listener accepts anything, so it proves nothing). None
    for any other URL."""
    state = _OPEN.get(url)
    if state is None:
        return None
    ok, seen = state.tunnel.probe()
    return bool(ok), str(seen)


def ensure_pinned(url: str) -> bool:
    """Check the sensor's certificate through the tunnel and carry its pin to the tunnel's
    local address, once (a deferred :func:`sensor_endpoint`). False while the sensor's TLS
    does not answer yet; a changed certificate raises. True for any other URL."""
    from labctl.core.errors import LabctlError
    from labctl.transport.http import cert_fingerprint, fetch_peer_certificate

    state = _OPEN.get(url)
    if state is None or state.store is None or state.local_key is not None:
        return True
    try:
        der, _ = fetch_peer_certificate(state.lhost, state.lport, state.timeout)
    except LabctlError:
        return False
    _pin_seen(state, cert_fingerprint(der))
    return True


def _carry(state: _Tunnel) -> None:
    from labctl.transport.http import cert_fingerprint, fetch_peer_certificate

    der, _ = fetch_peer_certificate(state.lhost, state.lport, state.timeout)
    _pin_seen(state, cert_fingerprint(der))


def _pin_seen(state: _Tunnel, seen: str) -> None:
    """Check the certificate seen through the tunnel against the sensor's pin (learning it
    on first use) and pin it for the tunnel's local address."""
    from labctl.transport.http import pin_key

    store = state.store
    assert store is not None
    sensor_key = state.sensor_key
    known = store.get(sensor_key)
    if known is None:
        store.set(sensor_key, seen)
        log.info("pinned the certificate of %s (sha256 %s), seen through the SSH tunnel, in %s",
                 sensor_key, seen, store.path)
    elif known.replace(":", "").lower() != seen:
        raise TransportError(
            f"the TLS certificate of {sensor_key} (reached through the SSH tunnel) changed: it "
            f"no longer matches the pinned sha256 {known}",
            hint=f"if the sensor's certificate was replaced on purpose, delete {sensor_key!r} "
                 f"from {store.path} to re-pin it on the next run")
    local_key = pin_key(state.lhost, state.lport)
    store.set(local_key, seen)
    state.local_key = local_key
