"""`labctl up`'s sensor stage: wait for the sensor's API, then do its first sign-in.

The same code serves a real Defender for IoT OT sensor and the twin's embedded sensor; the
driver comes from the registry (:func:`labctl.sensor.registry.get_sensor_driver`) by the
playbook's ``sensor.kind``, or from ``ctx.sensor_driver_factory`` when a caller injects one:

1. wait (bounded) until ``https://<management ip>`` answers, pinning its self-signed
   certificate on first use (``labctl.transport.http``);
2. sign in with the playbook's admin password; if that fails and the factory default is
   still set (admin/admin on 24.1.x, support/support on 23.x: both are tried, in that
   order, per defender-for-iot.md §4.2), set the playbook's password through
   ``/api/external/authentication/set_password`` and sign in again;
3. report. Activation of a real sensor is an upload in its web UI; no API for it is
   documented (§4.3), so the stage says what to do instead of pretending.

A second run on a signed-in sensor changes nothing. Setting the password at first sign-in
is not put to ``confirm``: it is what bringing the sensor up means, and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labctl.core.context import LabContext
from labctl.core.errors import AuthError
from labctl.core.playbook import LoadedPlaybook
from labctl.core.secrets import PromptFn, Secret
from labctl.sensor.base import CredentialsRejected, SensorDriver, SensorTarget

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


def admin_password(loaded: LoadedPlaybook, prompt_fn: PromptFn | None = None,
                   environ: Mapping[str, str] | None = None) -> Secret:
    s = loaded.model.sensor
    assert s is not None
    if loaded.model.provider == "netns" and s.kind == "embedded":
        from labctl.netns.credentials import sensor_admin_password

        return sensor_admin_password(loaded, environ)
    env = dict(environ) if environ is not None else None  # SecretRef.resolve takes a dict
    return s.admin_password.resolve("sensor admin password", prompt_fn=prompt_fn, environ=env)


def sensor_target(loaded: LoadedPlaybook, timeout: float = 10.0) -> SensorTarget:
    """Where the playbook's sensor is; for the twin's embedded sensor, its known certificate."""
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
    return SensorTarget(base_url=s.base_url, fingerprint=fingerprint,
                        netns=lab_host_netns(loaded.model), timeout=timeout)


def make_driver(ctx: LabContext, target: SensorTarget) -> SensorDriver:
    """``ctx.sensor_driver_factory(target)``, else the registry's driver for ``sensor.kind``."""
    if ctx.sensor_driver_factory is not None:
        driver: SensorDriver = ctx.sensor_driver_factory(target)
        return driver
    from labctl.sensor.registry import get_sensor_driver

    s = ctx.loaded.model.sensor
    assert s is not None
    factory: Callable[[SensorTarget], SensorDriver] = get_sensor_driver(s.kind)
    return factory(target)


def sensor_stage(ctx: LabContext, *, confirm: Callable[[Any], bool],
                 dry_run: bool = False) -> SensorStageReport | None:
    """Wait for the sensor and sign it in (None when the playbook has no sensor)."""
    loaded: LoadedPlaybook = ctx.loaded
    s = loaded.model.sensor
    if s is None:
        return None
    desired = admin_password(loaded, ctx.prompt_fn, ctx.environ)
    driver = make_driver(ctx, sensor_target(loaded))
    try:
        done = driver.prepare(s.admin_user, desired, wait_seconds=float(s.wait_seconds),
                              dry_run=dry_run, clock=ctx.clock, sleep=ctx.sleep)
    except CredentialsRejected as e:
        raise AuthError(e.message, hint=f"set {s.admin_password.env or 'the sensor admin password'}"
                                        " to the sensor's current password") from None
    report = SensorStageReport(url=s.base_url, action=done.action, applied=done.applied,
                               waited_seconds=done.waited_seconds)
    if s.kind == "d4iot":
        report.notes.append(ACTIVATION_NOTE)
    return report
