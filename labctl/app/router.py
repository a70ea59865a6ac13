"""Router use cases (no printing): iot-net, show, backup, restore, delete-net, up's stage.

Why here: the CLI and ``labctl up`` share these. Order matters and is the point: resolve
and validate everything that needs no request first (bad input exits 2 having contacted
nothing), then open the router driver (log in), take one fresh read, plan the edit from it,
ask, and apply it as a transaction (backup, apply, read back, automatic restore). The
driver always logs out, also on errors.

Concurrent runs: every write happens under the router's lock (:mod:`labctl.router.lock`,
one labctl run at a time per router), and the transaction compares the tables with the
read the edit was planned from just before writing. A run that finds the router changed
(:class:`~labctl.router.base.StaleRead`, nothing written) plans again from a fresh read,
up to :data:`PLAN_ATTEMPTS` times, asking again only if the change it would make differs.

Vendor-neutral: the driver comes from the registry by the playbook's ``router.kind``
(:func:`labctl.router.registry.get_router_driver`), or from ``LabContext
.router_driver_factory`` / the ``driver_factory`` argument when a caller injects one.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from labctl.core.context import LabContext
from labctl.core.errors import ConfigError, Interrupted, UsageError
from labctl.core.playbook import LoadedPlaybook
from labctl.core.playbook.router import (
    DEFAULT_KIND,
    ROUTER_SECTIONS,
    IotNetwork,
    RouterSection,
    check_no_control,
    check_router_url,
)
from labctl.core.secrets import PromptFn, Secret, resolve_secret
from labctl.router.base import (
    DesiredNetwork,
    NetworkEdit,
    RouterDriver,
    RouterTarget,
    StaleRead,
    TransactionReport,
    check_passphrase,
)
from labctl.router.lock import router_lock
from labctl.router.registry import get_router_driver

__all__ = ["DesiredNetwork", "IotNetReport", "RouterTarget", "backup", "delete_net",
           "desired_network", "ensure_loaded", "iot_net", "iot_net_stage", "network_warnings",
           "parse_overrides", "resolve_target", "restore", "show"]

log = logging.getLogger("labctl.app.router")

PASSWORD_ENV = "LABCTL_ROUTER_PASSWORD"
PASSPHRASE_ENV = "LABCTL_IOT_PASSPHRASE"

#: plans from a fresh read after a compare-and-swap failure, the first one included
PLAN_ATTEMPTS = 3

#: ``factory(target) -> RouterDriver``; None: the registry's driver for ``target.kind``
DriverFactory = Callable[[RouterTarget], RouterDriver]


def _router_section(loaded: LoadedPlaybook | None) -> RouterSection | None:
    if loaded is None:
        return None
    section: RouterSection | None = loaded.model.router
    return section


def _driver(target: RouterTarget, factory: DriverFactory | None) -> RouterDriver:
    if factory is not None:
        return factory(target)
    return get_router_driver(target.kind)(target)


def resolve_target(loaded: LoadedPlaybook | None, *, environ: Mapping[str, str],
                   url: str | None = None, user: str | None = None,
                   prompt_fn: PromptFn | None = None, timeout: float = 10.0) -> RouterTarget:
    """Build the target; fails (exit 2) before any request if something is missing."""
    r = _router_section(loaded)
    if r is None and not url:
        raise UsageError("no router to talk to",
                         hint="add a router: section to the playbook or pass --url")
    the_url = (url or (r.url if r else "")).rstrip("/")
    try:
        check_router_url(the_url, "--url" if url else "router.url")
        if user is not None:
            check_no_control("--user", user)
    except ValueError as e:
        raise UsageError(str(e)) from None
    allow_http = bool(r and r.allow_http)
    if the_url.startswith("http://") and not allow_http:
        raise UsageError(f"plain HTTP ({the_url}) is refused: the password would travel in "
                         "clear text", hint="use https://, or set router.allow_http: true in "
                                             "the playbook")
    kind = r.kind if r is not None else DEFAULT_KIND
    get_router_driver(kind)  # an unknown kind fails here, before any request
    if environ.get(PASSWORD_ENV):
        password = Secret(environ[PASSWORD_ENV], source=f"env:{PASSWORD_ENV}")
    elif r is not None and loaded is not None and loaded.model.provider == "netns":
        from labctl.netns.credentials import router_password

        password = router_password(loaded, environ)  # the twin's router: labctl made it
    elif r is not None:
        password = r.password.resolve("router password", prompt_fn=prompt_fn,
                                      environ=dict(environ))
    else:
        password = resolve_secret(PASSWORD_ENV, prompt=True, label="router password",
                                  prompt_fn=prompt_fn, environ=environ)
    netns = None
    if loaded is not None:
        from labctl.transport.netns import lab_host_netns

        netns = lab_host_netns(loaded.model)
    return RouterTarget(url=the_url, user=user or (r.user if r else "admin"), password=password,
                        kind=kind, allow_http=allow_http, netns=netns,
                        lan=r.lan if r else None, lab=loaded.model.lab if loaded else None,
                        timeout=timeout, section=r)


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _merged_network(r: RouterSection | None, overrides: dict[str, Any]) -> IotNetwork:
    """The playbook's router.iot_network with the flags on top, through the model."""
    base = r.iot_network if r is not None else None
    o = {k: v for k, v in overrides.items() if v is not None}
    doc: dict[str, Any] = base.model_dump() if base is not None else {}
    doc.update(o)
    missing = [k for k in ("ssid", "vlan", "subnet") if doc.get(k) is None]
    if missing:
        raise UsageError(f"the IoT network needs {', '.join(missing)}",
                         hint="set router.iot_network in the playbook or pass "
                              + " ".join(f"--{m}" for m in missing))
    # flags are parsed here (their own errors name the flag); the model checks the rest
    if "subnet" in o:
        try:
            subnet = ipaddress.IPv4Network(str(o["subnet"]), strict=True)
        except ValueError as e:
            raise UsageError(f"--subnet {o['subnet']!r} is not an IPv4 network ({e})") from None
        doc["subnet"] = subnet
        # the playbook's gateway and DHCP range belonged to the old subnet
        if "gateway" not in o and doc.get("gateway") is not None \
                and doc["gateway"] not in subnet:
            doc["gateway"] = None
        rng = doc.get("dhcp_range")
        if "dhcp_range" not in o and rng is not None and not all(a in subnet for a in rng):
            doc["dhcp_range"] = None
    if "vlan" in o:
        try:
            doc["vlan"] = int(o["vlan"])
        except (TypeError, ValueError):
            raise UsageError(f"--vlan {o['vlan']!r} is not a number") from None
    if "dns" in o:
        raw = o["dns"]
        if isinstance(raw, str):
            raw = [x for x in raw.split(",") if x.strip()]
        try:
            doc["dns"] = [ipaddress.IPv4Address(str(x).strip()) for x in raw]
        except ValueError as e:
            raise UsageError(f"--dns: {e}") from None
    if base is None:
        doc.setdefault("name", doc["ssid"])
    section_cls = type(r) if r is not None else ROUTER_SECTIONS[DEFAULT_KIND]
    try:
        net = IotNetwork.model_validate(doc)
        if r is not None:
            r.check_iot_network(net)
        else:
            section_cls.kind_rules(net)
    except ValidationError as e:
        raise UsageError(f"the IoT network is invalid: {_validation_message(e)}") from None
    except ValueError as e:
        raise UsageError(f"the IoT network is invalid: {e}") from None
    return net


def desired_network(loaded: LoadedPlaybook | None, overrides: dict[str, Any], *,
                    environ: Mapping[str, str],
                    prompt_fn: PromptFn | None = None) -> DesiredNetwork:
    """The IoT network from the playbook's router.iot_network, flags overriding keys,
    validated once (the playbook model), its passphrase resolved and checked."""
    r = _router_section(loaded)
    net = _merged_network(r, overrides)
    base = r.iot_network if r is not None else None
    if environ.get(PASSPHRASE_ENV):
        psk = Secret(environ[PASSPHRASE_ENV], source=f"env:{PASSPHRASE_ENV}")
    elif base is not None and loaded is not None and loaded.model.provider == "netns":
        from labctl.netns.credentials import iot_passphrase

        psk = iot_passphrase(loaded, environ)  # the twin's Wi-Fi is simulated: labctl makes one
    elif base is not None:
        psk = base.passphrase.resolve("WPA passphrase", prompt_fn=prompt_fn,
                                      environ=dict(environ))
    else:
        psk = resolve_secret(PASSPHRASE_ENV, prompt=True, label="WPA passphrase",
                             prompt_fn=prompt_fn, environ=environ)
    check_passphrase(psk)
    desired = DesiredNetwork.from_model(net, psk)
    get_router_driver(r.kind if r is not None else DEFAULT_KIND).check_network(desired)
    return desired


def network_warnings(desired: DesiredNetwork) -> list[str]:
    """What is valid but worth a word before applying (AP isolation hides traffic)."""
    return desired.warnings()


@dataclass
class IotNetReport:
    network: dict[str, Any]
    action: str
    diff: list[dict[str, Any]]
    changed_keys: list[str]
    dry_run: bool = False
    applied: bool = False
    verified: bool = False
    warnings: list[str] = field(default_factory=list)
    transaction: dict[str, Any] | None = None
    login: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


ConfirmFn = Callable[["IotNetReport"], bool]


def iot_net(target: RouterTarget, desired: DesiredNetwork, *, confirm: ConfirmFn,
            dry_run: bool = False, driver_factory: DriverFactory | None = None
            ) -> IotNetReport:
    warnings = desired.warnings()
    with _driver(target, driver_factory) as driver:
        state = driver.read()
        edit = driver.plan_network(state, desired)
        report = IotNetReport(network=desired.to_public(), action=edit.action,
                              diff=list(edit.diff), changed_keys=edit.changed_keys,
                              dry_run=dry_run, warnings=warnings, login=driver.login_scheme)
        if edit.empty:
            report.verified = True
            return report
        if dry_run:
            return report
        if not confirm(report):
            raise Interrupted("nothing was changed (not confirmed)")

        def replan(state: dict[str, str]) -> NetworkEdit:
            return driver.plan_network(state, desired)

        def reconfirm(new: NetworkEdit) -> bool:
            report.diff, report.changed_keys = list(new.diff), new.changed_keys
            report.action = new.action
            return confirm(report)

        tx = _apply_locked(target, driver, edit, replan, reconfirm)
        if tx is None:  # somebody else made the router hold it meanwhile
            report.verified = True
            return report
        report.transaction = tx.to_dict()
        report.applied = tx.applied
        report.verified = tx.verified
        return report


def _apply_locked(target: RouterTarget, driver: RouterDriver, edit: NetworkEdit,
                  replan: Callable[[dict[str, str]], NetworkEdit],
                  reconfirm: Callable[[NetworkEdit], bool]) -> TransactionReport | None:
    """Apply under the router's lock; on StaleRead plan again from a fresh read (asking
    again when the new edit's diff differs). None: the fresh plan was empty."""
    for attempt in range(1, PLAN_ATTEMPTS + 1):
        try:
            with router_lock(target.url):
                return driver.apply(edit)
        except StaleRead as e:
            if attempt == PLAN_ATTEMPTS:
                raise
            log.info("%s; planning again from a fresh read (%d of %d)", e.message,
                     attempt + 1, PLAN_ATTEMPTS)
            with router_lock(target.url):
                new = replan(driver.read())
            if new.empty:
                return None
            if new.diff != edit.diff and not reconfirm(new):
                raise Interrupted("nothing was changed (not confirmed)") from None
            edit = new
    raise AssertionError("unreachable")  # pragma: no cover


def show(target: RouterTarget, *, driver_factory: DriverFactory | None = None
         ) -> list[dict[str, Any]]:
    with _driver(target, driver_factory) as driver:
        return driver.networks(driver.read())


def backup(target: RouterTarget, out: Path | None, *,
           driver_factory: DriverFactory | None = None) -> dict[str, Any]:
    with _driver(target, driver_factory) as driver:
        done = driver.backup(Path(out) if out is not None else None)
    return {"file": str(done.path), "keys": done.keys, "networks": done.networks}


def restore(target: RouterTarget, path: Path, *, confirm: Callable[[list[str]], bool],
            driver_factory: DriverFactory | None = None) -> dict[str, Any]:
    # a bad file exits 2 before any request
    values = get_router_driver(target.kind).load_backup(Path(path))
    with _driver(target, driver_factory) as driver:
        current = driver.read()
        differing = sorted(k for k, v in values.items() if current.get(k, "") != v)
        if differing and not confirm(differing):
            raise Interrupted("nothing was changed (not confirmed)")
        with router_lock(target.url):
            report = driver.restore(Path(path))
    return report.to_dict()


def delete_net(target: RouterTarget, name: str, *, confirm: Callable[[dict[str, Any]], bool],
               driver_factory: DriverFactory | None = None) -> dict[str, Any]:
    section_cls = ROUTER_SECTIONS.get(target.kind)
    try:
        check_no_control("the network name", name)
        if section_cls is not None:
            section_cls.check_text("the network name", name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    with _driver(target, driver_factory) as driver:
        state = driver.read()
        edit = driver.plan_delete(state, name)
        if not confirm(edit.before or {}):
            raise Interrupted("nothing was changed (not confirmed)")
        tx = _apply_locked(target, driver, edit, lambda st: driver.plan_delete(st, name),
                           lambda new: confirm(new.before or {}))
    if tx is None:
        return {"deleted": name, "transaction": None}
    return {"deleted": name, "transaction": tx.to_dict()}


def iot_net_stage(ctx: LabContext, *, confirm: Callable[[Any], bool], dry_run: bool = False
                  ) -> IotNetReport | None:
    """`labctl up`'s router stage: apply router.iot_network (None when there is none).

    ``confirm`` receives the IotNetReport (its ``diff`` and ``changed_keys``) and returns
    whether to apply.
    """
    loaded: LoadedPlaybook = ctx.loaded
    r = _router_section(loaded)
    if r is None or r.iot_network is None:
        return None
    target = resolve_target(loaded, url=ctx.router_url, user=ctx.router_user,
                            prompt_fn=ctx.prompt_fn, environ=ctx.environ)
    desired = desired_network(loaded, {}, prompt_fn=ctx.prompt_fn, environ=ctx.environ)
    return iot_net(target, desired, confirm=confirm, dry_run=dry_run,
                   driver_factory=ctx.router_driver_factory)


def parse_overrides(**flags: Any) -> dict[str, Any]:
    """CLI flags -> desired_network overrides (None means: not given)."""
    out = {k: v for k, v in flags.items() if v is not None}
    if "dns" in out:
        parts = [p.strip() for p in str(out["dns"]).split(",") if p.strip()]
        if len(parts) > 2:
            raise UsageError(f"at most two DNS servers (got {len(parts)})")
        out["dns"] = parts
    return out


def ensure_loaded(path: str | None, *, url: str | None) -> LoadedPlaybook | None:
    """Load the playbook; with --url and no playbook anywhere, run without one."""
    from labctl.core.playbook import load_playbook

    try:
        return load_playbook(path)
    except ConfigError:
        raise
    except UsageError:
        if url and not path:
            return None
        raise
