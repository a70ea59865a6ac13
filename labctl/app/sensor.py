"""`labctl up`'s sensor stage: wait for the sensor's API, then do its first sign-in.

The same code serves a real Defender for IoT OT sensor and the twin's embedded sensor:

1. wait (bounded) until ``https://<management ip>`` answers, pinning its self-signed
   certificate on first use (``labctl.transport.http``);
2. sign in with the playbook's admin password; if that fails and the factory default is
   still set (admin/admin on 24.1.x, support/support on 23.x: both are tried, in that
   order, per defender-for-iot.md §4.2), set the playbook's password through
   ``/api/external/authentication/set_password`` and sign in again;
3. report. Activation of a real sensor is an upload in its web UI; no API for it is
   documented (§4.3), so the stage says what to do instead of pretending.

A second run on a signed-in sensor changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from labctl.core.errors import AuthError, ConvergenceError, TransportError
from labctl.core.playbook import LoadedPlaybook
from labctl.core.secrets import Secret

FACTORY_DEFAULTS = (("admin", "admin"), ("support", "support"))
ACTIVATION_NOTE = ("activate it in the sensor's web UI: System Settings > Sensor management > "
                   "Subscription & Activation Mode > Upload (no activation API is documented)")


@dataclass
class SensorStageReport:
    url: str
    action: str  # noop | set-password | would-set-password | reachable
    applied: bool = False
    waited_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "action": self.action, "applied": self.applied,
                "waited_seconds": round(self.waited_seconds, 1), "notes": self.notes}

    def __str__(self) -> str:
        return self.action + (f" ({'; '.join(self.notes)})" if self.notes else "")


def admin_password(loaded: LoadedPlaybook, prompt_fn: Callable[[str], str] | None = None,
                   environ: dict[str, str] | None = None) -> Secret:
    s = loaded.model.sensor
    assert s is not None
    if loaded.model.provider == "netns" and s.kind == "embedded":
        from labctl.netns.secrets import sensor_admin_password

        return sensor_admin_password(loaded, environ)
    return s.admin_password.resolve("sensor admin password", prompt_fn=prompt_fn, environ=environ)


def make_client(loaded: LoadedPlaybook, timeout: float = 10.0):  # -> D4IoTClient
    from labctl.sensor.client import D4IoTClient
    from labctl.transport.http import make_session
    from labctl.transport.netns import lab_host_netns

    s = loaded.model.sensor
    assert s is not None
    fingerprint = s.tls_fingerprint
    if fingerprint is None and loaded.model.provider == "netns" and s.kind == "embedded":
        # the twin made this sensor and knows its certificate: no trust-on-first-use needed,
        # and a rebuilt twin (new certificate) does not trip over an old pin
        from labctl.app.twin import wait_for_sensor
        from labctl.core.state import lab_state_dir

        fingerprint = wait_for_sensor(lab_state_dir(loaded.model.lab),
                                      float(s.wait_seconds))["fingerprint"]
    session = make_session(s.base_url, fingerprint=fingerprint, timeout=timeout,
                           netns=lab_host_netns(loaded.model), retries=0)
    return D4IoTClient(s.base_url, token=None, session=session)


def wait_for_api(client: Any, user: str, password: Secret, *, timeout: float,
                 interval: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll the (token-free) validation endpoint until the sensor answers at all."""
    start = time.monotonic()
    while True:
        try:
            client.validate_credentials(user, password)
            return time.monotonic() - start
        except AuthError:
            return time.monotonic() - start  # it answered; credentials are step 2's business
        except TransportError as e:
            if time.monotonic() - start >= timeout:
                raise TransportError(
                    f"the sensor at {client.base_url} did not answer within {timeout:g} s "
                    f"({e.message})",
                    hint="a fresh D4IoT install takes 20-30 minutes; check the VM console, or "
                         "raise sensor.wait_seconds") from None
            sleep(interval)


def sensor_stage(ctx: Any, *, dry_run: bool = False, client: Any = None,
                 sleep: Callable[[float], None] = time.sleep) -> SensorStageReport | None:
    """Wait for the sensor and sign it in. ``ctx`` is a :class:`labctl.app.lab.LabContext`."""
    loaded: LoadedPlaybook = ctx.loaded
    s = loaded.model.sensor
    if s is None:
        return None
    env = ctx.options.get("environ")
    desired = admin_password(loaded, ctx.prompt_fn, env)
    client = client or ctx.options.get("sensor_client_factory", make_client)(loaded)
    report = SensorStageReport(url=s.base_url, action="noop")
    report.waited_seconds = wait_for_api(client, s.admin_user, desired,
                                         timeout=float(s.wait_seconds), sleep=sleep)
    try:
        ok = client.validate_credentials(s.admin_user, desired)
    except AuthError:
        ok = False
    if not ok:
        default = _factory_default(client, s.admin_user)
        if default is None:
            raise AuthError(
                f"the sensor rejected the password for {s.admin_user!r}, and the factory "
                "default is not set either",
                hint=f"set {s.admin_password.env or 'the sensor admin password'} to the "
                     "sensor's current password")
        if dry_run:
            report.action = "would-set-password"
        else:
            client.set_password(default[0], default[1], desired)
            if not client.validate_credentials(s.admin_user, desired):
                raise ConvergenceError("the sensor still rejects the new admin password after "
                                       "the change", hint="sign in to the sensor's web UI")
            report.action, report.applied = "set-password", True
    if s.kind == "d4iot":
        report.notes.append(ACTIVATION_NOTE)
    return report


def _factory_default(client: Any, user: str) -> tuple[str, str] | None:
    from labctl.sensor.client import PasswordChangeRequired

    candidates = [d for d in FACTORY_DEFAULTS if d[0] == user] or list(FACTORY_DEFAULTS)
    for u, p in candidates:
        try:
            if client.validate_credentials(u, p):
                return (u, p)
        except PasswordChangeRequired:
            return (u, p)
        except AuthError:
            continue
    return None
