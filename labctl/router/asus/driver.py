"""The ASUS router driver: :class:`~labctl.router.base.RouterDriver` over the ASUSWRT 3006
web API.

It only wires the pieces together: :mod:`.client` (login, ``appGet.cgi``, ``applyapp.cgi``),
:mod:`.sdn` (nvram tables <-> networks, planning) and :mod:`.transaction` (backup, apply,
read back, automatic restore). The playbook model (``AsusRouter``) keeps ``<`` and ``>``
(nvram record delimiters) out of the network's name, SSID and type; the passphrase is not
in the model (it is resolved later, from the environment or a prompt), so
:meth:`AsusDriver.check_network` applies the same rule to it.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from labctl.core.emulator import EmulatorProcess, EmulatorRequest
from labctl.core.errors import UsageError
from labctl.core.playbook.router import AsusRouter
from labctl.router.asus import sdn, transaction
from labctl.router.base import (
    BackupFile,
    DesiredNetwork,
    NetworkEdit,
    RouterDriver,
    RouterState,
    RouterTarget,
)


class AsusDriver:
    """One logged-in conversation with an ASUS router; logs out on close."""

    kind: ClassVar[str] = "asus"

    def __init__(self, target: RouterTarget) -> None:
        self.target = target
        self._client: Any = None

    # -- lifetime ------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        if self._client is None:
            factory = self.target.client_factory or self.connect
            self._client = factory(self.target)

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.logout()

    @property
    def client(self) -> Any:
        """The API client (an AsusClient, or what the target's client_factory made)."""
        self.open()
        return self._client

    @property
    def login_scheme(self) -> str | None:
        if self._client is None:
            return None
        scheme = getattr(self._client, "login_scheme", None)
        return None if scheme is None else str(scheme)

    @staticmethod
    def connect(target: RouterTarget) -> Any:
        from labctl.router.asus.client import APP_USER_AGENT, AsusClient
        from labctl.transport.http import make_session

        session = make_session(target.url, pin_store=target.pin_store,
                               user_agent=APP_USER_AGENT, timeout=target.timeout,
                               netns=target.netns, allow_http=target.allow_http)
        login = target.section.login if isinstance(target.section, AsusRouter) else target.login
        return AsusClient(target.url, target.user, target.password, session=session,
                          login=login)

    # -- validation that needs no request ------------------------------------------------
    @staticmethod
    def check_network(desired: DesiredNetwork) -> None:
        try:
            AsusRouter.check_text("the passphrase", desired.passphrase.reveal())
        except ValueError as e:
            raise UsageError(str(e)) from None

    # -- reads and plans -----------------------------------------------------------------
    def read(self) -> RouterState:
        return sdn.read_state(self.client)

    def plan_network(self, state: RouterState, desired: DesiredNetwork) -> NetworkEdit:
        return sdn.plan_iot_net(state, desired)

    def plan_delete(self, state: RouterState, name: str) -> NetworkEdit:
        return sdn.plan_delete(state, name)

    def networks(self, state: RouterState) -> list[dict[str, Any]]:
        return sdn.decode_networks(state)

    # -- writes --------------------------------------------------------------------------
    def apply(self, edit: NetworkEdit) -> transaction.TxReport:
        return transaction.run(self.client, edit.basis, edit, backup_dir=self.target.backup_dir)

    def backup(self, file: Path | None = None, *, state: RouterState | None = None
               ) -> BackupFile:
        if state is None:
            state = self.read()
        keys = transaction.sdn_only(state)
        if file is None:
            path = transaction.write_backup(keys, self.target.backup_dir, "backup")
        else:
            path = transaction.write_backup_to(keys, Path(file))
        return BackupFile(path=path, keys=len(keys),
                          networks=[str(n["name"]) for n in sdn.decode_networks(state)
                                    if n["idx"] != "0"])

    @staticmethod
    def load_backup(file: Path) -> RouterState:
        return transaction.load_backup(Path(file))

    def restore(self, file: Path) -> transaction.TxReport:
        return transaction.restore_backup(self.client, self.load_backup(file))

    # -- the twin ------------------------------------------------------------------------
    @staticmethod
    def emulator_process(req: EmulatorRequest) -> EmulatorProcess:
        """``twin serve-router``: the ASUS emulator (labctl.router.asus.emulator)."""
        args = ["twin", "serve-router", "--listen", f"{req.listen_ip}:{req.port}"]
        if req.https:
            args.append("--https")
        args += ["--state", str(req.state_path)]
        for vlan, ifname in req.interfaces.items():
            args += ["--iot-interface", f"{vlan}={ifname}"]
        if req.password_env:
            args += ["--password-env", req.password_env]
        return EmulatorProcess(args=tuple(args), ready=(req.listen_ip, req.port))


def _conforms(cls: type[RouterDriver]) -> type[RouterDriver]:
    """Lets mypy prove AsusDriver implements RouterDriver (the contract suite runs it)."""
    return cls


_conforms(AsusDriver)
