"""The sensor driver interface: what labctl needs from any sensor, and the plain records
it gets back.

Why one interface: ``labctl up`` signs a sensor in, and verify-alerts and the twin read its
alerts, devices and connections, whatever the sensor is (a real Defender for IoT OT sensor
or the twin's embedded one). A driver implements :class:`SensorDriver`; the registry
(:mod:`labctl.sensor.registry`) finds it by the playbook's ``sensor.kind``; the contract
suite (``tests/contract``) runs every driver against its emulator.

Why separate :class:`AlertSource`: alerts can come from more than a sensor (a SIEM such as
Microsoft Sentinel). Whatever reads alerts (verify-alerts, traffic export) asks for an
``AlertSource`` and never for a vendor's client.

Records are vendor-neutral and frozen: a driver translates its API's shapes (for D4IoT: the
v1 and v2 alert objects, keys in any letter case) into them at the boundary. Times are epoch
milliseconds, as the D4IoT API gives them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from labctl.core.emulator import EmulatorProcess, EmulatorRequest
from labctl.core.errors import AuthError
from labctl.core.secrets import Secret


@dataclass(frozen=True)
class SensorTarget:
    """Where a sensor is and how to reach it (what a driver factory is given)."""

    base_url: str
    #: API access token; None is enough for :meth:`SensorDriver.prepare`
    token: Secret | None = None
    #: pinned SHA-256 certificate fingerprint; None: pin on first use
    fingerprint: str | None = None
    #: network namespace to connect from (the twin's lab host), if any
    netns: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class Alert:
    """One alert as a sensor (or another alert source) reported it."""

    id: int
    time: int  # epoch ms of the first detection
    title: str
    message: str
    severity: str
    engine: str
    source_address: str | None = None
    destination_address: str | None = None
    handled: bool = False
    #: the source's own alert object, as received (keys canonicalised)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Device:
    """One device in a sensor's inventory."""

    id: int
    name: str
    ip_addresses: tuple[str, ...] = ()
    mac_addresses: tuple[str, ...] = ()
    vendor: str | None = None
    authorized: bool = False
    scanner: bool = False
    protocols: tuple[str, ...] = ()


@dataclass(frozen=True)
class Connection:
    """Traffic a sensor saw between two devices."""

    first_device_id: int | None
    second_device_id: int | None
    discovered: int | None  # epoch ms
    last_seen: int | None  # epoch ms
    ports: tuple[int, ...] = ()
    protocols: tuple[str, ...] = ()


@dataclass(frozen=True)
class Flow:
    """One bidirectional flow a sensor keeps (the embedded sensor's flow store; a real
    Defender for IoT sensor has no flow API).

    ``src`` is the side that opened the flow (the TCP SYN sender, else the first packet's
    source); ``*_out`` counts ``src -> dst`` and ``*_in`` counts ``dst -> src``. Bytes are wire
    (original) lengths. ``seq`` grows each time the sensor stores new counters for the flow:
    a reader that remembers the highest ``seq`` it has seen asks for ``after_seq`` next time
    and gets every flow changed since, once (the cursor of ``labctl traffic export
    --follow``). The counters are cumulative, so the newest record of a flow ``id`` wins.
    """

    id: int
    seq: int
    vlan: int
    proto: int  # IP protocol number: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...
    src: str
    sport: int  # -1 when the protocol has no ports
    dst: str
    dport: int
    packets_out: int
    bytes_out: int
    packets_in: int
    bytes_in: int
    first: int  # epoch ms
    last: int  # epoch ms
    #: epoch minute -> packets (both directions) in that minute, within the store's window
    minutes: Mapping[int, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SensorStatus:
    """What a sensor says about itself; counters are None where it does not report them."""

    url: str
    reachable: bool
    learning_mode: bool | None = None
    packets: int | None = None
    devices: int | None = None
    alerts: int | None = None
    kernel_drops: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PrepareResult:
    """What :meth:`SensorDriver.prepare` did: ``noop``, ``set-password`` or
    ``would-set-password`` (dry run), and how long it waited for the sensor to answer."""

    action: str
    applied: bool
    waited_seconds: float


class CredentialsRejected(AuthError):
    """Neither the desired password nor a factory default signs in."""


@runtime_checkable
class AlertSource(Protocol):
    """Anything labctl can read alerts from: a sensor's API, later a SIEM."""

    @property
    def name(self) -> str:
        """A short name for messages and reports, e.g. ``d4iot https://192.168.0.101``."""
        ...

    def alerts(self, since: int | None = None) -> list[Alert]:
        """Alerts first detected at or after ``since`` (epoch ms; None: all)."""
        ...


@runtime_checkable
class SensorDriver(AlertSource, Protocol):
    """One sensor: first sign-in and configuration, then its alerts, devices, connections."""

    @property
    def base_url(self) -> str: ...

    def prepare(self, user: str, password: Secret, *, wait_seconds: float,
                dry_run: bool = False, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> PrepareResult:
        """Wait (bounded) until the sensor answers, then make ``password`` sign ``user`` in.

        A sensor still on its factory default gets ``password`` set (not with ``dry_run``).
        Raises CredentialsRejected when neither works, TransportError when it never answers.
        A second call on a prepared sensor changes nothing.
        """
        ...

    def devices(self) -> list[Device]: ...

    def connections(self) -> list[Connection]: ...

    def status(self) -> SensorStatus: ...

    @classmethod
    def emulator_process(cls, req: EmulatorRequest) -> EmulatorProcess:
        """The labctl command the twin runs to emulate this kind of sensor."""
        ...


@runtime_checkable
class FlowSource(Protocol):
    """A sensor that keeps per-flow records (the embedded sensor). A driver of a sensor
    without a flow API (a real D4IoT sensor) raises
    :class:`~labctl.core.errors.UnsupportedError` from :meth:`flows`, and callers fall back
    to the coarse devices/connections view."""

    def flows(self, after_seq: int = 0, limit: int = 10_000) -> list[Flow]:
        """Flows whose ``seq`` is greater than ``after_seq``, in ``seq`` order, at most
        ``limit`` of them (ask again from the last ``seq`` for more)."""
        ...
