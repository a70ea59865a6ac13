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

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from labctl.core.context import LabContext
from labctl.core.errors import AuthError
from labctl.core.model import Plan
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
                 dry_run: bool = False, phase_progress: PhaseProgressFn | None = None,
                 probe: Any = None) -> SensorStageReport | None:
    """Wait through the phases (VM running, installer, installing, web UI, signed in) and
    sign the sensor in (None when the playbook has no sensor).

    ``phase_progress`` gets a :class:`PhaseEvent` per observation (the CLI renders it);
    ``probe`` replaces :class:`SensorProbe` in tests. A later run resumes at the phase the
    previous one reached (``<lab state>/sensor-phase.json``); a dry run records nothing.
    """
    loaded: LoadedPlaybook = ctx.loaded
    s = loaded.model.sensor
    if s is None:
        return None
    from labctl.sensor.access import ensure_pinned, sensor_endpoint

    desired = admin_password(loaded, ctx.prompt_fn, ctx.environ)
    # reached the way sensor.access says (an SSH tunnel stays open for the whole wait); the
    # tunnel's certificate check waits until the sensor answers (it is being installed)
    with sensor_endpoint(ctx, defer_pin=True) as base_url:
        target = sensor_target(loaded)
        if base_url != target.base_url:
            target = dataclasses.replace(target, base_url=base_url, netns=None)
        driver = make_driver(ctx, target)
        if probe is None:
            probe = SensorProbe(ctx, driver, target, s.admin_user, desired)

        def sign_in(deadline: float) -> Any:
            from labctl.core.errors import TransportError

            if not ensure_pinned(base_url):
                raise TransportError(f"the sensor's HTTPS does not answer at {s.base_url} "
                                     "(through the SSH tunnel)",
                                     hint="run `labctl up` again: it resumes at this phase")
            try:
                return driver.prepare(s.admin_user, desired, wait_seconds=deadline,
                                      dry_run=dry_run, clock=ctx.clock, sleep=ctx.sleep)
            except CredentialsRejected as e:
                env = s.admin_password.env or "the sensor admin password"
                raise AuthError(e.message,
                                hint=f"set {env} to the sensor's current password") from None

        done, waited = wait_phases(ctx, probe, signed_in=sign_in, progress=phase_progress,
                                   save=not dry_run)
    report = SensorStageReport(url=s.base_url, action=done.action, applied=done.applied,
                               waited_seconds=waited)
    if s.kind == "d4iot":
        report.notes.append(ACTIVATION_NOTE)
    return report


# ---- looking at the sensor ---------------------------------------------------------------

@contextmanager
def sensor_session(ctx: LabContext) -> Iterator[SensorDriver]:
    """The sensor driver of the playbook, reached the way ``sensor.access`` says, for the
    body of the ``with``: every command that talks to the sensor API goes through here.

    The base URL comes from :func:`labctl.sensor.access.sensor_endpoint` (``direct``: the
    playbook's URL; ``netnat``: the Hyper-V host's published port; ``ssh-tunnel``: a loopback
    port forwarded through the host, opened here and closed in ``finally``); the driver is
    built like :func:`open_sensor` (token, certificate pin) against that URL
    (``driver.base_url``; :func:`access_path` describes the path actually used).
    """
    from labctl.sensor.access import sensor_endpoint

    _require_sensor(ctx)
    with sensor_endpoint(ctx) as base_url:
        yield open_sensor(ctx, base_url=base_url)


def access_path(ctx: LabContext, used_url: str) -> dict[str, Any]:
    """The access path as plain data: the mode, the sensor's own URL, the hop (``via``) and
    the URL the driver really spoke to (``url``; a loopback port for ``ssh-tunnel``)."""
    from labctl.sensor.access import describe

    doc: dict[str, Any] = dict(describe(ctx))
    doc["url"] = used_url
    return doc


def open_sensor(ctx: LabContext, *, base_url: str | None = None) -> SensorDriver:
    """The sensor driver of the playbook, with its API token and certificate pin.

    The token comes from the playbook's ``sensor.token`` (environment or prompt); for the
    twin's embedded sensor without one, labctl creates one in the sensor's state (the twin
    made that sensor, so it may). ``base_url`` replaces the playbook's URL (what
    :func:`sensor_session` passes: the URL ``sensor.access`` reaches the sensor at); a URL
    other than the playbook's is reached from this process, not from the twin's namespace.
    Commands use :func:`sensor_session`, which also opens and closes a tunnel.
    """
    from labctl.core.errors import UsageError

    pb = ctx.playbook
    target = sensor_target(ctx.loaded)
    if base_url is not None and base_url != target.base_url:
        target = dataclasses.replace(target, base_url=base_url, netns=None)
    try:
        token = pb.sensor.token.resolve("sensor API token", prompt_fn=ctx.prompt_fn,
                                        environ=dict(ctx.environ))
    except UsageError:
        if not _is_twin_sensor(ctx.loaded):
            raise
        token = Secret(_create_twin_token(ctx.loaded), source="twin sensor")
    return make_driver(ctx, dataclasses.replace(target, token=token))


def _is_twin_sensor(loaded: LoadedPlaybook) -> bool:
    s = loaded.model.sensor
    return bool(s is not None and loaded.model.provider == "netns" and s.kind == "embedded")


def _create_twin_token(loaded: LoadedPlaybook, description: str = "twin demo") -> str:
    from labctl.app.twin import create_sensor_token
    from labctl.core.state import lab_state_dir

    del description  # the twin's helper names its tokens itself
    return create_sensor_token(lab_state_dir(loaded.model.lab))


def _require_sensor(ctx: LabContext) -> Any:
    from labctl.core.errors import ConfigError

    s = ctx.playbook.sensor
    if s is None:
        raise ConfigError(f"{ctx.loaded.path}: the playbook has no sensor section",
                          hint="add sensor: {kind: d4iot, management_ip: 192.168.0.101}")
    return s


def _client(driver: SensorDriver) -> Any:
    """The D4IoT REST client behind a driver (both kinds today speak the D4IoT API)."""
    from labctl.core.errors import UsageError

    client = getattr(driver, "client", None)
    if client is None:
        raise UsageError(f"{driver.name} has no D4IoT REST client",
                         hint="the sensor commands need a sensor that speaks the D4IoT API")
    return client


def pinned_fingerprint(ctx: LabContext, target: SensorTarget) -> str | None:
    """The fingerprint labctl enforces for the sensor: the playbook's, else the stored pin."""
    if target.fingerprint:
        return target.fingerprint
    from labctl.core.state import pins_file
    from labctl.transport.http import PinStore, host_port, pin_key

    host, port = host_port(target.base_url)
    return PinStore(pins_file()).get(pin_key(host, port))


def sensor_status(ctx: LabContext) -> dict[str, Any]:
    """What the sensor says about itself; ``reachable`` False when it did not answer;
    ``access_path`` the way it was reached (:func:`access_path`).

    A changed certificate is not "unreachable": it raises (TransportError with a hint).
    """

    s = _require_sensor(ctx)
    with sensor_session(ctx) as driver:
        return _status(ctx, s, driver)


def _status(ctx: LabContext, s: Any, driver: SensorDriver) -> dict[str, Any]:
    from labctl.core.errors import ApiError, AuthError, HostUnreachable
    from labctl.core.errors import ConnectTimeout as Timeout

    target: SensorTarget = getattr(driver, "target", SensorTarget(base_url=driver.base_url))
    doc: dict[str, Any] = {"url": s.base_url, "kind": s.kind,
                           "access": s.access.mode,
                           "access_path": access_path(ctx, driver.base_url),
                           "reachable": False, "error": None,
                           "version": None, "activation": None, "learning_mode": None,
                           "monitor_interfaces": None, "token_accepted": None,
                           "fingerprint": None}
    client = _client(driver)
    try:
        st = driver.status()
        doc["reachable"] = st.reachable
        doc["token_accepted"] = True
        doc["learning_mode"] = st.learning_mode
        details = dict(st.details)
        doc["version"] = details.get("version")
        ifaces = details.get("interface") or details.get("interfaces")
        if ifaces:
            doc["monitor_interfaces"] = [ifaces] if isinstance(ifaces, str) else list(ifaces)
        for k in ("packets", "devices", "alerts", "kernel_drops"):
            doc[k] = getattr(st, k)
        if not details:
            # a real sensor (no labctl status endpoint): a data call proves the token
            import time as _time

            client.alerts(version=1, from_time=int(_time.time() * 1000))
    except AuthError as e:
        doc["reachable"], doc["token_accepted"], doc["error"] = True, False, e.message
    except (HostUnreachable, Timeout) as e:
        doc["error"] = e.message
    if doc["reachable"]:
        try:
            act = client.labctl_activation()
            doc["activation"] = "activated" if act.get("activated") else "not activated"
        except ApiError as e:
            if e.status != 404:
                raise
            # a real sensor has no activation API: its data API answering the user's token
            # is the evidence there is
            doc["activation"] = ("activated (the data API accepts the token)"
                                 if doc["token_accepted"] else "unknown")
        except AuthError:
            doc["activation"] = "unknown"
    # the pin belongs to the sensor: through the tunnel, it is kept under the sensor's own
    # address (labctl.sensor.access), not the tunnel's ephemeral loopback port
    pin_url = s.base_url if s.access.mode == "ssh-tunnel" else driver.base_url
    doc["fingerprint"] = pinned_fingerprint(ctx, dataclasses.replace(target, base_url=pin_url))
    return doc


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d`` (or plain seconds) -> seconds; UsageError otherwise."""
    import re

    from labctl.core.errors import UsageError

    m = re.fullmatch(r"([0-9]{1,9})([smhd]?)", text.strip())
    if not m:
        raise UsageError(f"--since {text!r} is not a duration",
                         hint="use a number with s, m, h or d, e.g. --since 30m")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def sensor_alerts(ctx: LabContext, *, since: str | None = None, state: str | None = None,
                  title: str | None = None) -> list[dict[str, Any]]:
    """The sensor's alerts (v2 shape where the sensor has it), newest last."""
    import time as _time

    from labctl.core.errors import ApiError

    _require_sensor(ctx)
    from_ms = int((_time.time() - parse_duration(since)) * 1000) if since else None
    with sensor_session(ctx) as driver:
        client = _client(driver)
        try:
            docs = client.alerts(version=2, state=state, from_time=from_ms)
        except ApiError as e:
            if e.status != 404:
                raise
            docs = client.alerts(version=1, state=state, from_time=from_ms)
    if title:
        docs = [d for d in docs if title.lower() in str(d.get("title", "")).lower()]
    return sorted(docs, key=lambda d: int(d.get("time") or 0))


def sensor_devices(ctx: LabContext, *, authorized: bool | None = None) -> list[dict[str, Any]]:
    _require_sensor(ctx)
    with sensor_session(ctx) as driver:
        docs: list[dict[str, Any]] = _client(driver).devices(authorized=authorized)
    return docs


def sensor_connections(ctx: LabContext, *, device: str | None = None) -> list[dict[str, Any]]:
    """Connections; ``device`` (an IP or MAC address) limits them to that device's."""
    from labctl.core.errors import UsageError

    _require_sensor(ctx)
    with sensor_session(ctx) as driver:
        client = _client(driver)
        if device is None:
            docs: list[dict[str, Any]] = client.connections()
            return docs
        want = device.strip().lower()
        for d in client.devices():
            addrs = [str(a).lower() for a in (d.get("ipAddresses") or []) +
                     (d.get("macAddresses") or [])]
            if want in addrs:
                found: list[dict[str, Any]] = client.connections(device_id=int(d["id"]))
                return found
    raise UsageError(f"--device {device}: the sensor knows no device with that address",
                     hint="see `labctl sensor devices` for the addresses it has seen")


def sensor_events(ctx: LabContext, *, minutes: int = 60,
                  type: str | None = None) -> list[dict[str, Any]]:  # noqa: A002
    _require_sensor(ctx)
    with sensor_session(ctx) as driver:
        docs: list[dict[str, Any]] = _client(driver).events(minutes=minutes, type=type)
    return docs


# ---- token ---------------------------------------------------------------------------------

TOKEN_HOWTO = ("System Settings > Integrations > Access Tokens > Generate token (the token is "
               "shown once)")


def sensor_token(ctx: LabContext) -> dict[str, Any]:
    """For the twin's embedded sensor: a new API token (``created`` True, ``token`` set).
    For a real sensor: where to create one and which variable to set (no API creates one).
    """
    s = _require_sensor(ctx)
    env = s.token.env or "LABCTL_SENSOR_TOKEN"
    doc: dict[str, Any] = {"url": s.base_url, "kind": s.kind, "env": env, "created": False,
                           "token": None}
    if _is_twin_sensor(ctx.loaded):
        doc["token"] = Secret(_create_twin_token(ctx.loaded), source="twin sensor")
        doc["created"] = True
        return doc
    doc["instructions"] = [
        f"open {s.base_url} and sign in as {s.admin_user}",
        TOKEN_HOWTO,
        f"export {env}=<the token>  (labctl sends it raw as `Authorization: <token>`)",
    ]
    return doc


# ---- activation ----------------------------------------------------------------------------

ACTIVATION_PAGE = "System settings > Sensor management > Subscription & Activation mode"
#: ``progress(event)``: ``{"phase": "instructions"|"uploaded"|"waiting"|"activated", ...}``
ActivationProgress = Callable[[dict[str, Any]], None]


def activation_file(ctx: LabContext, given: str | None = None) -> Any:
    """The activation file to use, checked (:func:`labctl.sensor.activation.check_activation_file`):
    ``given`` (the command line), else ``sensor.activation_file`` (relative to the playbook),
    else the one ``sensor.azure`` downloaded into the lab's state folder."""
    import time as _time
    from pathlib import Path

    from labctl.core.errors import ConfigError, UsageError
    from labctl.sensor.activation import check_activation_file

    s = _require_sensor(ctx)
    loaded = ctx.loaded
    if given is not None:
        return check_activation_file(Path(given), now=_time.time(), file=None,
                                     key="--activation-file")
    if s.activation_file:
        p = Path(s.activation_file)
        if not p.is_absolute():
            p = loaded.base_dir / p
        line = loaded.doc.line_of(("sensor", "activation_file"))
        return check_activation_file(p, now=_time.time(), file=loaded.path,
                                     key="sensor.activation_file", line=line)
    downloaded = azure_activation_path(loaded)
    if downloaded.is_file():
        return check_activation_file(downloaded, now=_time.time())
    if getattr(s, "azure", None) is not None:
        raise UsageError("no activation file has been downloaded yet",
                         hint="run `labctl sensor azure` (or `labctl up`) to create the sensor "
                              "in Azure and download it")
    raise ConfigError("no activation file", file=loaded.path, key="sensor.activation_file",
                      hint="set sensor.activation_file to the ZIP from the Azure portal, or "
                           "pass --activation-file")


def browser_url(ctx: LabContext) -> str:
    """Where a person opens the sensor's web UI from the machine labctl runs on: the
    published host port in ``netnat`` mode, else the sensor's own URL (``ssh-tunnel``: from
    the forward :func:`_tunnel_howto` describes, see there)."""
    s = _require_sensor(ctx)
    hv = ctx.playbook.hyperv
    if s.access.mode == "netnat" and hv is not None:
        host = f"[{hv.host}]" if ":" in hv.host else hv.host
        return f"https://{host}:{s.access.host_port}"
    if s.access.mode == "ssh-tunnel":
        return "https://127.0.0.1:8443"
    return str(s.base_url)


def _tunnel_howto(ctx: LabContext) -> str:
    from labctl.transport.http import host_port

    s = _require_sensor(ctx)
    hv = ctx.playbook.hyperv
    host, port = host_port(s.base_url)
    who = f"{hv.user}@{hv.host}" if hv is not None and hv.user else "<user>@<hyperv.host>"
    return (f"the sensor ({s.base_url}) is reachable from the Hyper-V host only: forward a "
            f"port for your browser first, e.g. `ssh -L 8443:{host}:{port} {who}`")


def azure_activation_path(loaded: LoadedPlaybook) -> Any:
    from labctl.core.state import lab_state_dir

    return lab_state_dir(loaded.model.lab) / "sensor-activation.zip"


@dataclass
class ActivationReport:
    url: str
    file: dict[str, Any]
    uploaded: bool
    activated: bool
    waited_seconds: float
    instructions: list[str] = field(default_factory=list)
    evidence: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "file": self.file, "uploaded": self.uploaded,
                "activated": self.activated, "waited_seconds": round(self.waited_seconds, 1),
                "instructions": self.instructions, "evidence": self.evidence}


def sensor_activate(ctx: LabContext, *, given: str | None = None,
                    progress: ActivationProgress | None = None,
                    timeout: float | None = None, interval: float = 10.0,
                    credential: Any = None, verify: Any = True) -> ActivationReport:
    """Activate the sensor with its activation file, then wait until it reports activation.

    The embedded sensor takes the ZIP on labctl's own endpoint (``/api/labctl/activation``).
    A real sensor has no documented upload API: the instructions (the exact URL, the page
    and the file) go to ``progress`` first, then labctl polls until the sensor's data API
    answers the user's token, or, with ``sensor.azure``, until ARM reports the sensor's
    ``sensorStatus`` Ok with a ``connectivityTime``. TransportError (exit 5) for a sensor
    that never answers; ConvergenceError (exit 4) when the deadline passes.
    """
    from labctl.core.errors import ApiError, AuthError, ConvergenceError, TransportError
    from labctl.core.waiting import WaitTimeout, wait_until

    s = _require_sensor(ctx)
    emit = progress or (lambda _e: None)
    act = activation_file(ctx, given)
    with sensor_session(ctx) as driver:
        client = _client(driver)
        deadline = float(timeout if timeout is not None else s.activation_wait_seconds)
        uploaded = False
        instructions: list[str] = []
        # the embedded sensor has labctl's activation endpoint; a real sensor answers 404 there
        # (or 401 while its token is not accepted yet): then the human path
        try:
            already = bool(client.labctl_activation().get("activated"))
            embedded = True
        except ApiError as e:
            if e.status != 404:
                raise
            already, embedded = False, False
        except AuthError:
            if s.kind == "embedded":
                raise
            already, embedded = False, False
        if embedded and not already:
            client.upload_activation(act.path.read_bytes())
            uploaded = True
            emit({"phase": "uploaded", "file": str(act.path)})
        elif not embedded:
            browse = browser_url(ctx)
            instructions = [f"open {browse.rstrip('/')}/ and sign in as {s.admin_user}",
                            f"go to {ACTIVATION_PAGE} > Upload",
                            f"choose {act.path}", "tick the terms and select Activate"]
            if s.access.mode == "ssh-tunnel":
                instructions.insert(0, _tunnel_howto(ctx))
            emit({"phase": "instructions", "url": browse, "page": ACTIVATION_PAGE,
                  "file": str(act.path), "steps": instructions})
        start = ctx.clock()
        observed = {"last": ""}
        arm = arm_client(ctx, credential=credential, verify=verify) \
            if (not embedded and s.azure is not None) else None

        def activated() -> bool:
            if arm is not None:
                props = arm.get_sensor(s.azure.site, s.azure.sensor_name) or {}
                ok = props.get("sensorStatus") == "Ok" and bool(props.get("connectivityTime"))
                observed["last"] = (f"Azure: sensorStatus {props.get('sensorStatus') or '-'}, "
                                    f"connectivityTime {props.get('connectivityTime') or '-'}")
            elif embedded:
                ok = bool(client.labctl_activation().get("activated"))
                observed["last"] = "activation endpoint: " + ("activated" if ok else "not yet")
            else:
                import time as _time

                try:
                    client.alerts(version=1, from_time=int(_time.time() * 1000))
                    ok = True
                    observed["last"] = "the data API accepts the token"
                except AuthError as e:
                    ok = False
                    observed["last"] = f"token refused ({e.message})"
            emit({"phase": "activated" if ok else "waiting",
                  "elapsed": ctx.clock() - start, "deadline": deadline,
                  "observed": observed["last"]})
            return ok

        def _tracked() -> bool:
            try:
                return activated()
            except TransportError as e:
                observed["last"] = e.message
                emit({"phase": "waiting", "elapsed": ctx.clock() - start, "deadline": deadline,
                      "observed": observed["last"]})
                raise

        try:
            wait_until(_tracked, timeout=deadline, interval=interval, clock=ctx.clock,
                       sleep=ctx.sleep, ignore=(TransportError,))
        except WaitTimeout:
            raise ConvergenceError(
                f"the sensor at {s.base_url} did not report activation within {deadline:g} s "
                f"(last seen: {observed['last'] or 'nothing'})",
                hint=("upload the file on " + ACTIVATION_PAGE + "; if the wizard reports time "
                      "drift, sync the sensor's clock first (`ntp enable <ip>` in its CLI)")
                if not embedded else "see the embedded sensor's log in the lab's state folder"
            ) from None
        return ActivationReport(url=s.base_url, file=act.to_dict(), uploaded=uploaded,
                                activated=True, waited_seconds=ctx.clock() - start,
                                instructions=instructions, evidence=observed["last"])


# ---- Azure (optional) ------------------------------------------------------------------------

@dataclass
class AzureReport:
    results: list[dict[str, Any]]
    activation_file: str | None
    downloaded: bool
    #: a dry run: whether a real run would download the activation file
    would_download: bool = False
    dry_run: bool = False

    @property
    def applied(self) -> bool:
        return self.downloaded or any(r["action"] in ("created", "updated")
                                      for r in self.results)

    @property
    def action(self) -> str:
        acts = [f"{r['resource']} {r['action']}" for r in self.results
                if r["action"] != "noop"]
        if self.downloaded:
            acts.append("activation file downloaded")
        elif self.would_download:
            acts.append("activation file would-download")
        return ", ".join(acts) or "noop"

    def to_dict(self) -> dict[str, Any]:
        return {"results": self.results, "activation_file": self.activation_file,
                "downloaded": self.downloaded, "would_download": self.would_download,
                "dry_run": self.dry_run}


def arm_client(ctx: LabContext, *, credential: Any = None, verify: Any = True) -> Any:
    from labctl.sensor.arm import ArmClient

    s = _require_sensor(ctx)
    az = s.azure
    if az is None:
        from labctl.core.errors import ConfigError

        raise ConfigError("no Azure section", file=ctx.loaded.path, key="sensor.azure",
                          hint="add sensor.azure: {subscription, location, site, sensor_name,"
                               " zone}")
    if credential is None:
        credential = ctx.arm_credential
    if verify is True:
        verify = ctx.arm_verify
    return ArmClient(az.subscription, az.location, credential=credential,
                     endpoint=az.endpoint, verify=verify, sleep=ctx.sleep)


def azure_onboard(ctx: LabContext, *, dry_run: bool = False, credential: Any = None,
                  verify: Any = True, refresh: bool = False) -> AzureReport:
    """Create (or find) the site and the OT sensor in Azure, then download the activation
    file into the lab's state folder (0600). An existing file younger than the 14-day
    validity is kept unless ``refresh``. A second run sends no PUT and downloads nothing."""
    import os
    import tempfile
    import time as _time

    from labctl.core.state import ensure_private_dir
    from labctl.sensor.activation import WARN_DAYS

    s = _require_sensor(ctx)
    az = s.azure
    client = arm_client(ctx, credential=credential, verify=verify)
    results = [client.ensure_site(az.site, az.site_display_name or az.site, dry_run=dry_run),
               client.ensure_sensor(az.site, az.sensor_name, zone=az.zone,
                                    ti_automatic_updates=az.ti_automatic_updates,
                                    dry_run=dry_run)]
    path = azure_activation_path(ctx.loaded)
    fresh = path.is_file() and (_time.time() - path.stat().st_mtime) < WARN_DAYS * 86400
    downloaded = False
    need = refresh or not fresh
    if not dry_run and need:
        data = client.download_activation(az.site, az.sensor_name)
        ensure_private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".activation.", dir=str(path.parent))
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        downloaded = True
    return AzureReport(results=[r.to_dict() for r in results],
                       activation_file=str(path) if path.is_file() else None,
                       downloaded=downloaded, would_download=dry_run and need,
                       dry_run=dry_run)


_ARM_ACTIONS = {"would-create": "create", "would-update": "update", "noop": "noop"}


def azure_plan(ctx: LabContext, *, credential: Any = None, verify: Any = True,
               refresh: bool = False) -> Plan:
    """The Azure changes ``sensor.azure`` asks for, as a plan of plain-data steps (site PUT,
    sensor PUT, activation download): :func:`azure_onboard` as a dry run (the one code path
    that reads ARM and compares), each result turned into a Change with its HTTP step. An
    empty plan means Azure matches the playbook and a fresh activation file is on disk."""
    from labctl.core.model import Action, Change, Step, StepKind
    from labctl.sensor.arm import (
        API_VERSION,
        activation_path,
        location_prefix,
        sensor_path,
        site_path,
    )

    s = _require_sensor(ctx)
    az = s.azure
    rep = azure_onboard(ctx, dry_run=True, credential=credential, verify=verify,
                        refresh=refresh)
    base = az.endpoint.rstrip("/") + location_prefix(az.subscription, az.location)
    q = f"?api-version={API_VERSION}"
    plan = Plan(provider="azure", lab=ctx.playbook.lab)
    for r in rep.results:
        action = Action(_ARM_ACTIONS[r["action"]])
        path = site_path(r["name"]) if r["resource"] == "site" else \
            sensor_path(az.site, r["name"])
        steps: tuple[Step, ...] = ()
        if action != "noop":
            steps = (Step(resource=f"azure.{r['resource']}:{r['name']}", action=action,
                          script=f"PUT {base}{path}{q}",
                          params={"properties": r["properties"]}, kind=StepKind.HTTP,
                          name=f"arm/{r['resource']}/put",
                          description=f"{action} the {r['resource']} {r['name']} in "
                                      f"Microsoft.IoTSecurity ({az.location})"),)
        before = r.get("before") if action == "update" else \
            (r["properties"] if action == "noop" else None)
        plan.changes.append(Change(
            resource=f"azure.{r['resource']}:{r['name']}", action=action,
            reason={"create": "absent in Azure", "update": "differs from the playbook",
                    "noop": "matches the playbook"}[action],
            before=before, after=None if action == "noop" else r["properties"],
            steps=steps))
    target = azure_activation_path(ctx.loaded)
    res = f"azure.activation:{az.sensor_name}"
    if rep.would_download:
        act = Action.UPDATE if target.is_file() else Action.CREATE
        plan.changes.append(Change(
            resource=res, action=act,
            reason="no activation file yet" if act == "create"
            else "the activation file is older than the warning age (or --refresh)",
            after={"file": str(target)},
            steps=(Step(resource=res, action=act,
                        script=f"POST {base}{activation_path(az.site, az.sensor_name)}{q}",
                        params={"into": str(target)}, kind=StepKind.HTTP,
                        name="arm/sensor/download-activation",
                        description=f"download the activation file into {target} (0600)"),)))
    else:
        plan.changes.append(Change(resource=res, action=Action.NOOP,
                                   reason="a fresh activation file is on disk",
                                   before={"file": str(target)}))
    return plan


@dataclass
class AzureStageReport:
    """`up`'s azure stage: the plan it read, and what applying it did."""

    plan: Plan
    applied: bool
    report: AzureReport | None = None
    dry_run: bool = False

    @property
    def action(self) -> str:
        if self.report is not None and self.applied:
            return self.report.action
        n = len(self.plan.steps)
        return "noop" if n == 0 else f"{n} Azure step(s)" + (" pending" if self.dry_run else "")

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "applied": self.applied, "dry_run": self.dry_run,
                "result": self.report.to_dict() if self.report is not None else None}


def azure_stage(ctx: LabContext, *, confirm: Callable[[Any], bool], dry_run: bool = False,
                credential: Any = None, verify: Any = True) -> AzureStageReport | None:
    """Plan the Azure changes, confirm them (``confirm(plan)``), apply through
    :func:`azure_onboard`, re-plan, and fail (exit 4) when Azure did not converge. None
    without ``sensor.azure``."""
    from labctl.core.errors import ConvergenceError, Interrupted

    s = ctx.playbook.sensor
    if s is None or s.azure is None:
        return None
    the_plan = azure_plan(ctx, credential=credential, verify=verify)
    if the_plan.empty or dry_run:
        return AzureStageReport(the_plan, applied=False, dry_run=dry_run)
    if not confirm(the_plan):
        raise Interrupted("nothing was changed in Azure (not confirmed)")
    rep = azure_onboard(ctx, credential=credential, verify=verify)
    again = azure_plan(ctx, credential=credential, verify=verify)
    if not again.empty:
        left = ", ".join(f"{c.resource} ({c.action})" for c in again.pending)
        raise ConvergenceError(f"Azure did not converge; still pending after apply: {left}",
                               hint="run `labctl plan` for details, then `labctl up` again")
    return AzureStageReport(the_plan, applied=True, report=rep)


# ---- waiting with progress: the phases of `up`'s sensor stage --------------------------------

#: the phases, in order, with their playbook key under sensor.phase_timeouts
PHASES: tuple[tuple[str, str, str], ...] = (
    ("vm-running", "vm_running", "the VM running"),
    ("installer", "installer", "the installer (auto-selects after 30 s)"),
    ("installing", "installing", "installing (20 to 30 minutes)"),
    ("web-ui", "web_ui", "the web UI answering"),
    ("signed-in", "signed_in", "signed in"),
)
PHASE_NAMES = tuple(p[0] for p in PHASES)
#: the installer's boot menu selects "Install iot-sensor-<version>" after this long
INSTALLER_AUTOSELECT = 30.0

PHASE_HINTS = {
    "vm-running": "the sensor VM did not start: check it in Hyper-V Manager (Get-VM), that "
                  "the host has its static memory free (8 GB for L100), and the VM's event "
                  "log",
    "installer": "open the VM console: the boot menu should select 'Install iot-sensor-"
                 "<version>' by itself after 30 s. No boot device: check the boot order (DVD "
                 "first, Set-VMFirmware -FirstBootDevice) and the secure boot template "
                 "(Set-VMFirmware -EnableSecureBoot Off, or the "
                 "MicrosoftUEFICertificateAuthority template)",
    "installing": "the install takes 20 to 30 minutes; look at the VM console for an error. "
                  "If it ended (it shows IP: 192.168.0.101) but port 443 stays closed, check "
                  "the management NIC order: adapter 1 must be the management NIC on the Core "
                  "switch (the installer takes the first interface it finds), and "
                  "sensor.access if labctl is not on the host",
    "web-ui": "port 443 is open but HTTPS does not answer: the web UI is still starting "
              "(wait and run `labctl up` again: it resumes here) or failed (VM console, "
              "`system sanity` over SSH)",
    "signed-in": "the sensor answers but the sign-in did not complete: check the sensor "
                 "admin password (admin/admin on 24.1.x, support/support on 23.x) in the web "
                 "UI",
}


@dataclass(frozen=True)
class PhaseEvent:
    """One observation of the sensor stage: ``kind`` is ``start`` (a phase began), ``tick``
    (still waiting), ``done`` (the phase is over), ``resume`` (skipped: reached before) or
    ``timeout``. Times are seconds on ``ctx.clock``."""

    kind: str
    phase: str
    index: int  # 1-based
    total: int
    title: str
    elapsed: float
    deadline: float
    observed: str = ""


#: what the CLI gives the stage to show progress; ``labctl.cli.sensor.phase_display``
PhaseProgressFn = Callable[[PhaseEvent], None]


@dataclass
class SensorObservation:
    vm_state: str | None = None  # None: not observable here (no VM, or the twin)
    tcp_open: bool = False
    http_answers: bool = False
    detail: str = ""


class SensorProbe:
    """What the stage looks at, in the order the issue names it: the VM's state (Hyper-V
    facts), then TCP 443, then HTTP. Tests replace it; this one looks at the real thing."""

    def __init__(self, ctx: LabContext, driver: SensorDriver, target: SensorTarget,
                 user: str, password: Secret) -> None:
        self.ctx, self.driver, self.target = ctx, driver, target
        self.user, self.password = user, password
        self._vm_cache: tuple[float, tuple[str | None, int | None, str]] | None = None

    #: Hyper-V facts are one full read of the host: not more often than this (seconds)
    VM_READ_INTERVAL = 30.0

    def vm(self) -> tuple[str | None, int | None, str]:
        """The sensor VM's state and Uptime (whole seconds) from Hyper-V facts, and what
        was seen; ``(None, None, why)`` when there is no VM to watch. A read is reused for
        :attr:`VM_READ_INTERVAL` seconds on the context's clock (a running VM's Uptime
        advanced by the time since)."""
        now = self.ctx.clock()
        cached = self._vm_cache
        if cached is not None and now - cached[0] < self.VM_READ_INTERVAL:
            state, up, seen = cached[1]
            if up is None or state != "Running":
                return cached[1]
            # between reads a running VM's Uptime advances with the clock
            up += int(now - cached[0])
            name = seen.split(":", 1)[0].removeprefix("VM ")
            return state, up, vm_seen(name, state, up)
        seen_now = self._read_vm()
        self._vm_cache = (now, seen_now)
        return seen_now

    def _read_vm(self) -> tuple[str | None, int | None, str]:
        s = self.ctx.playbook.sensor
        if self.ctx.playbook.provider != "hyperv" or not s.vm:
            return None, None, "no Hyper-V VM to watch"
        from labctl.app.providers import make_provider
        from labctl.core.errors import LabctlError

        try:
            provider = make_provider(self.ctx)
            try:
                facts = provider.read_facts()
            finally:
                provider.close()
        except LabctlError as e:
            return None, None, f"Hyper-V facts unreadable ({e.message})"
        for vm in getattr(facts, "vms", []):
            if str(vm.name).lower() == str(s.vm).lower():
                up = getattr(vm, "uptime_seconds", None)
                return str(vm.state), up, vm_seen(str(vm.name), str(vm.state), up)
        return "Absent", None, f"VM {s.vm}: not on the host"

    def vm_state(self) -> tuple[str | None, str]:
        state, _up, seen = self.vm()
        return state, seen

    def tcp_open(self) -> tuple[bool, str]:
        import socket

        from labctl.sensor.access import tunnel_probe
        from labctl.transport.http import host_port
        from labctl.transport.netns import netns_context

        through = tunnel_probe(self.target.base_url)
        if through is not None:  # ssh-tunnel: the port as the Hyper-V host sees it
            return through
        host, port = host_port(self.target.base_url)
        try:
            with netns_context(self.target.netns), \
                    socket.create_connection((host, port), timeout=3.0):
                return True, f"TCP {port}: open"
        except OSError as e:
            return False, f"TCP {port}: {e.strerror or type(e).__name__}"

    def http_answers(self) -> tuple[bool, str]:
        from labctl.core.errors import AuthError, TransportError
        from labctl.sensor.access import ensure_pinned

        client = _client(self.driver)
        if not ensure_pinned(self.target.base_url):  # ssh-tunnel: its certificate first
            return False, "HTTPS: no TLS answer through the SSH tunnel yet"
        try:
            client.validate_credentials(self.user, self.password)
        except AuthError:
            pass  # it answered
        except TransportError as e:
            return False, f"HTTPS: {e.message}"
        return True, "HTTPS: the sensor API answers"


def phase_state_path(loaded: LoadedPlaybook) -> Any:
    from labctl.core.state import lab_state_dir

    return lab_state_dir(loaded.model.lab) / "sensor-phase.json"


def _load_phase(loaded: LoadedPlaybook, url: str) -> int:
    import json

    try:
        doc = json.loads(phase_state_path(loaded).read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(doc, dict) or doc.get("url") != url or doc.get("phase") not in PHASE_NAMES:
        return 0
    return PHASE_NAMES.index(doc["phase"])


def _save_phase(loaded: LoadedPlaybook, url: str, index: int) -> None:
    import json
    import os

    from labctl.core.state import ensure_private_dir

    path = phase_state_path(loaded)
    ensure_private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"url": url, "phase": PHASE_NAMES[index]}))
    os.replace(tmp, path)


def wait_phases(ctx: LabContext, probe: Any, *, signed_in: Callable[[float], Any],
                progress: PhaseProgressFn | None = None, interval: float = 5.0,
                save: bool = True) -> tuple[Any, float]:
    """Walk the phases from the one a previous run reached; return what ``signed_in`` (the
    last phase: the first sign-in, given its deadline) returned and the seconds waited.

    Each phase has its deadline from ``sensor.phase_timeouts``; past it: ConvergenceError
    (exit 4) with that phase's hint. The whole wait is also bounded by ``sensor.wait_seconds``;
    when that budget ends first, the sensor never answered in time: TransportError (exit 5),
    as before the phases existed. Phases the probe cannot observe (no VM to watch) pass.
    """
    from labctl.core.errors import ConvergenceError, TransportError

    loaded = ctx.loaded
    s = ctx.playbook.sensor
    emit = progress or (lambda _e: None)
    url = s.base_url
    start_all = ctx.clock()
    budget = float(s.wait_seconds)
    first = _load_phase(loaded, url)
    if first > 0:
        # a VM that is off again (rebuilt, stopped) is not where the last run left it
        state, up, _seen = _vm_obs(probe)
        if state not in (None, "Running"):
            first = 0
        elif (up is not None and up < INSTALLER_AUTOSELECT
              and PHASE_NAMES.index("installer") < first <= PHASE_NAMES.index("installing")):
            # restarted since (its Uptime began again): the installer boots again too
            first = PHASE_NAMES.index("installer")
    total = len(PHASES)
    for i in range(first):
        name, _key, title = PHASES[i]
        emit(PhaseEvent("resume", name, i + 1, total, title, 0.0, 0.0,
                        "reached in an earlier run"))
    vm_up_at: float | None = None
    result: Any = None
    for i in range(first, total):
        name, key, title = PHASES[i]
        limit = float(getattr(s.phase_timeouts, key))
        t0 = ctx.clock()
        left = max(0.0, budget - (t0 - start_all))
        deadline = min(limit, left)
        emit(PhaseEvent("start", name, i + 1, total, title, 0.0, deadline))
        if save:
            _save_phase(loaded, url, i)
        if name == "signed-in":
            result = signed_in(deadline)
            emit(PhaseEvent("done", name, i + 1, total, title, ctx.clock() - t0, deadline,
                            str(getattr(result, "action", ""))))
            break
        while True:
            done, seen, into = _phase_done(name, probe, ctx.clock(), vm_up_at)
            if name == "vm-running" and done:
                vm_up_at = ctx.clock()
            elapsed = ctx.clock() - t0
            if into is not None:  # the VM's Uptime knows better (a resumed run)
                elapsed = max(elapsed, into)
            if done:
                emit(PhaseEvent("done", name, i + 1, total, title, elapsed, deadline, seen))
                break
            if elapsed >= deadline:
                emit(PhaseEvent("timeout", name, i + 1, total, title, elapsed, deadline, seen))
                if deadline < limit:
                    raise TransportError(
                        f"the sensor at {url} did not answer within {budget:g} s (phase "
                        f"{i + 1}/{total}, {title}; last seen: {seen})",
                        hint="a fresh D4IoT install takes 20-30 minutes; raise "
                             f"sensor.wait_seconds, and: {PHASE_HINTS[name]}")
                raise ConvergenceError(
                    f"the sensor stage gave up in phase {i + 1}/{total} ({title}) after "
                    f"{elapsed:.0f} s (sensor.phase_timeouts.{key} is {limit:g}); last "
                    f"seen: {seen}", hint=PHASE_HINTS[name] + "; `labctl up` again resumes "
                                                            "at this phase")
            emit(PhaseEvent("tick", name, i + 1, total, title, elapsed, deadline, seen))
            ctx.sleep(max(0.0, min(interval, deadline - elapsed)))
    if save:
        _save_phase(loaded, url, total - 1)
    return result, ctx.clock() - start_all


def vm_seen(name: str, state: str, uptime: int | None) -> str:
    """``VM d4iot-sensor: Running, up 12m03s`` (the VM's state and Uptime as observed)."""
    if uptime is None or state == "Off":
        return f"VM {name}: {state}"
    m, sec = divmod(int(uptime), 60)
    h, m = divmod(m, 60)
    up = f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"
    return f"VM {name}: {state}, up {up}"


def _vm_obs(probe: Any) -> tuple[str | None, int | None, str]:
    """The VM's state, Uptime (None: not known) and what was seen, from any probe (test
    probes may only have ``vm_state``)."""
    fn = getattr(probe, "vm", None)
    if fn is not None:
        state, up, seen = fn()
        return state, up, seen
    state, seen = probe.vm_state()
    return state, None, seen


def _phase_done(name: str, probe: Any, now: float, vm_up_at: float | None
                ) -> tuple[bool, str, float | None]:
    """Whether phase ``name`` is over, what was seen, and how far into the phase the VM's
    Uptime says it is (None when the Uptime is not known): the installer phase counts from
    the VM's start, installing from the installer's auto-select, so a resumed run does not
    start the install's deadline over."""
    if name == "vm-running":
        state, _up, seen = _vm_obs(probe)
        if state is None:
            return True, seen, None
        return state == "Running", seen, None
    if name == "installer":
        state, up, seen = _vm_obs(probe)
        if state is None or (vm_up_at is None and up is None):
            return True, seen, None
        if state != "Running":
            return False, seen, None
        opened, tcp_seen = probe.tcp_open()
        if opened:  # already installed: the web UI port is open
            return True, tcp_seen if up is None else f"{seen}; {tcp_seen}", None
        if up is not None:
            return up >= INSTALLER_AUTOSELECT, seen, float(up)
        assert vm_up_at is not None
        running = now - vm_up_at
        return running >= INSTALLER_AUTOSELECT, f"{seen}, running for {running:.0f} s", None
    if name == "installing":
        opened, seen = probe.tcp_open()
        state, up, vm_seen_ = _vm_obs(probe)
        if up is None:
            return opened, seen, None
        into = max(0.0, up - INSTALLER_AUTOSELECT) if state == "Running" else None
        return opened, f"{vm_seen_}; {seen}", None if opened else into
    if name == "web-ui":
        ok, seen = probe.http_answers()
        return ok, seen, None
    raise AssertionError(name)  # pragma: no cover
