"""The router driver interface: what labctl needs from any router, and the plain data it
passes around.

Why one interface: ``labctl router`` and ``labctl up`` do the same thing whatever the
vendor. Resolve and validate first, then open the driver (log in), take one fresh read,
plan an edit from it, show the edit's field-level diff, ask, and apply it as a transaction:
back up, apply, read back, and restore the backup automatically on any failure. A vendor
module implements :class:`RouterDriver`; the registry (:mod:`labctl.router.registry`) finds
it by the playbook's ``router.kind``; the contract suite (``tests/contract``) runs every
driver against its emulator.

The state a driver reads is a flat ``{setting: value}`` mapping (ASUS: nvram keys), so an
edit is plain data: the settings whose value changes, and what the router runs to take them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from labctl.core.emulator import EmulatorProcess, EmulatorRequest
from labctl.core.errors import LabctlError, UsageError
from labctl.core.playbook.router import IotNetwork, RouterSection
from labctl.core.secrets import MASK, Secret
from labctl.core.state import lab_state_dir, state_home

#: one fresh read of a router: setting -> value (secrets included: never print it)
RouterState = dict[str, str]

WPA_PRINTABLE = frozenset(chr(c) for c in range(32, 127))


def check_passphrase(psk: Secret) -> None:
    """WPA2/WPA3 personal: 8-63 printable ASCII characters, or 64 hex digits."""
    value = psk.reveal()
    hex64 = len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)
    if not hex64 and not (8 <= len(value) <= 63 and all(c in WPA_PRINTABLE for c in value)):
        raise UsageError("the WPA passphrase must be 8-63 printable ASCII characters or 64 hex "
                         f"digits (got {len(value)} characters)",
                         hint="set LABCTL_IOT_PASSPHRASE (or the playbook's passphrase source)")


@dataclass(frozen=True)
class DesiredNetwork:
    """The IoT network the user asked for (the playbook's, overridden by flags), resolved:
    a validated :class:`~labctl.core.playbook.router.IotNetwork` plus its passphrase."""

    name: str
    ssid: str
    passphrase: Secret
    subnet: ipaddress.IPv4Network
    vlan: int
    type: str = "IoT"
    band: str = "2.4"
    auth: str = "wpa2-personal"
    gateway: ipaddress.IPv4Address | None = None
    dhcp: bool = True
    dhcp_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None = None
    lease_seconds: int = 86400
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    ap_isolation: bool = False
    hidden: bool = False

    @classmethod
    def from_model(cls, net: IotNetwork, passphrase: Secret) -> DesiredNetwork:
        return cls(name=net.name, ssid=net.ssid, passphrase=passphrase, subnet=net.subnet,
                   vlan=net.vlan, type=net.type, band=net.band, auth=net.auth,
                   gateway=net.gateway, dhcp=net.dhcp, dhcp_range=net.dhcp_range,
                   lease_seconds=net.lease_seconds, dns=tuple(net.dns),
                   ap_isolation=net.ap_isolation, hidden=net.hidden)

    @property
    def gateway_ip(self) -> ipaddress.IPv4Address:
        return self.gateway or next(self.subnet.hosts())

    @property
    def range(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        if self.dhcp_range:
            return self.dhcp_range
        hosts = list(self.subnet.hosts()) if self.subnet.num_addresses <= 65536 else []
        gw = self.gateway_ip
        cands = [h for h in hosts if h != gw] or [gw]
        return cands[0], cands[-1]

    def warnings(self) -> list[str]:
        """Valid but worth a word before applying."""
        out = []
        if self.ap_isolation:
            out.append("AP isolation is on: wireless clients cannot talk to each other, so the "
                       "sensor loses sight of device-to-device traffic (the reference lab "
                       "keeps it off)")
        return out

    def to_public(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "ssid": self.ssid, "band": self.band,
                "auth": self.auth, "vlan": self.vlan, "subnet": str(self.subnet),
                "gateway": str(self.gateway_ip), "dhcp": self.dhcp,
                "dhcp_range": [str(a) for a in self.range] if self.dhcp else None,
                "dns": [str(d) for d in self.dns], "ap_isolation": self.ap_isolation,
                "hidden": self.hidden, "passphrase": MASK}


@dataclass
class NetworkEdit:
    """A planned change of one network: plain data, computed from one fresh read.

    ``values`` (the settings whose value changes) and ``basis`` (the read it was planned
    from, which :meth:`RouterDriver.apply` backs up) hold secrets and stay out of ``repr``.
    """

    #: the vendor's id of the network (ASUS: the SDN profile index)
    target: str
    values: dict[str, str] = field(default_factory=dict, repr=False)
    #: what the router runs to take the values (ASUS: the rc_service list)
    service: str = ""
    action: str = "noop"  # create | update | delete | noop
    basis: RouterState = field(default_factory=dict, repr=False)
    #: field-level differences of the network (secrets masked), for the user
    diff: list[dict[str, Any]] = field(default_factory=list)
    #: the decoded network as it is before the edit (None for a new one)
    before: dict[str, Any] | None = None

    @property
    def empty(self) -> bool:
        return not self.values

    @property
    def changed_keys(self) -> list[str]:
        return sorted(self.values)


class TransactionReport(Protocol):
    """What :meth:`RouterDriver.apply` and :meth:`RouterDriver.restore` return."""

    action: str
    changed_keys: list[str]
    applied: bool
    verified: bool
    restored: bool | None
    restore_verified: bool | None
    backup_file: str | None

    def to_dict(self) -> dict[str, Any]: ...


class TransactionFailed(LabctlError):
    """The apply failed; the report says whether the backup was restored and verified."""

    def __init__(self, message: str, report: TransactionReport, cause: LabctlError | None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.report = report
        self.cause = cause
        if cause is not None:
            self.exit_code = cause.exit_code


class StaleRead(LabctlError):
    """The router's settings changed between the read an edit was planned from and the
    write (compare-and-swap failed): nothing was written; plan again from a fresh read."""


@dataclass(frozen=True)
class BackupFile:
    """A backup written by :meth:`RouterDriver.backup`."""

    path: Path
    keys: int
    networks: list[str]


ClientFactory = Callable[["RouterTarget"], Any]


@dataclass
class RouterTarget:
    """Where and how to reach the router (the playbook's router section + --url/--user)."""

    url: str
    user: str
    password: Secret
    kind: str = "asus"
    allow_http: bool = False
    #: the ASUS login scheme when there is no playbook section (auto | v1 | v2)
    login: str = "auto"
    netns: str | None = None
    lan: ipaddress.IPv4Network | None = None
    lab: str | None = None
    timeout: float = 10.0
    pin_store: Path | None = None
    #: builds the driver's API client (tests wrap one); default: the driver's ``connect``
    client_factory: ClientFactory | None = None
    #: the playbook's router section, if any: a driver reads its kind's own settings here
    section: RouterSection | None = None

    @property
    def state_dir(self) -> Path:
        return lab_state_dir(self.lab) if self.lab else state_home() / "router"

    @property
    def backup_dir(self) -> Path:
        return self.state_dir / "router-backups"


@runtime_checkable
class RouterDriver(Protocol):
    """One router vendor. Use as a context manager: ``__enter__`` opens (logs in lazily),
    ``__exit__`` closes (logs out, also after errors)."""

    kind: ClassVar[str]

    def __init__(self, target: RouterTarget) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def open(self) -> None:
        """Connect (idempotent)."""
        ...

    def close(self) -> None:
        """Log out and disconnect; never raises for a failed logout."""
        ...

    @property
    def login_scheme(self) -> str | None:
        """How the driver logged in (for reports), None before it did."""
        ...

    @staticmethod
    def connect(target: RouterTarget) -> Any:
        """The vendor's API client for ``target``, not logged in yet (used unless
        ``target.client_factory`` is set)."""
        ...

    @staticmethod
    def check_network(desired: DesiredNetwork) -> None:
        """This vendor's limits on a resolved network that need no request (the passphrase
        included); raises UsageError."""
        ...

    def read(self) -> RouterState:
        """One fresh read of everything the driver plans from and backs up."""
        ...

    def plan_network(self, state: RouterState, desired: DesiredNetwork) -> NetworkEdit:
        """The edit that makes the router hold ``desired`` (empty when it already does)."""
        ...

    def plan_delete(self, state: RouterState, name: str) -> NetworkEdit:
        """The edit that removes the network ``name``; UsageError when there is none."""
        ...

    def apply(self, edit: NetworkEdit) -> TransactionReport:
        """Back up ``edit.basis``, apply, read back; on any failure restore the backup,
        verify it and raise :class:`TransactionFailed` (or Interrupted on Ctrl-C)."""
        ...

    def networks(self, state: RouterState) -> list[dict[str, Any]]:
        """The networks in ``state``, decoded, secrets masked."""
        ...

    def backup(self, file: Path | None = None, *, state: RouterState | None = None
               ) -> BackupFile:
        """Write every setting :meth:`restore` puts back to ``file`` (0600; default: the
        lab's backup directory), from ``state`` or a fresh read."""
        ...

    @staticmethod
    def load_backup(file: Path) -> RouterState:
        """The settings in a backup ``file``; ConfigError (no request) when it is not one."""
        ...

    def restore(self, file: Path) -> TransactionReport:
        """Put every setting of the backup ``file`` back, verified by a read-back."""
        ...

    @staticmethod
    def emulator_process(req: EmulatorRequest) -> EmulatorProcess:
        """The labctl command the netns twin runs to emulate this kind of router."""
        ...
