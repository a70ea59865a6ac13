"""Router use cases (no printing): iot-net, show, backup, restore, delete-net, up's stage.

Why here: the CLI and ``labctl up`` share these. Order matters and is the point: resolve
and validate everything that needs no request first (bad input exits 2 having contacted
nothing), then log in, take one fresh read, plan the edit from it, ask, and apply it as a
transaction (labctl.router.asus.transaction). The client always logs out, also on errors.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from labctl.core.errors import ConfigError, Interrupted, UsageError
from labctl.core.playbook import LoadedPlaybook
from labctl.core.playbook.router import Router
from labctl.core.secrets import PromptFn, Secret, resolve_secret
from labctl.core.state import lab_state_dir, state_home
from labctl.router.asus import sdn, transaction
from labctl.router.asus.sdn import DesiredNetwork

log = logging.getLogger("labctl.app.router")

PASSWORD_ENV = "LABCTL_ROUTER_PASSWORD"
PASSPHRASE_ENV = "LABCTL_IOT_PASSPHRASE"

ClientFactory = Callable[["RouterTarget"], Any]


@dataclass
class RouterTarget:
    """Where and how to reach the router (playbook + --url/--user overrides)."""

    url: str
    user: str
    password: Secret
    allow_http: bool = False
    login: str = "auto"
    netns: str | None = None
    lan: ipaddress.IPv4Network | None = None
    lab: str | None = None
    timeout: float = 10.0
    pin_store: Path | None = None
    # Tests inject a client factory; by default an AsusClient over make_session.
    client_factory: ClientFactory | None = None

    def client(self) -> Any:
        if self.client_factory is not None:
            return self.client_factory(self)
        from labctl.router.asus.client import APP_USER_AGENT, AsusClient
        from labctl.transport.http import make_session

        session = make_session(self.url, pin_store=self.pin_store, user_agent=APP_USER_AGENT,
                               timeout=self.timeout, netns=self.netns,
                               allow_http=self.allow_http)
        return AsusClient(self.url, self.user, self.password, session=session,
                          login=self.login)

    @property
    def state_dir(self) -> Path:
        return lab_state_dir(self.lab) if self.lab else state_home() / "router"


def _router_section(loaded: LoadedPlaybook | None) -> Router | None:
    return loaded.model.router if loaded is not None else None


def resolve_target(loaded: LoadedPlaybook | None, *, url: str | None = None,
                   user: str | None = None, prompt_fn: PromptFn | None = None,
                   environ: dict[str, str] | None = None, timeout: float = 10.0) -> RouterTarget:
    """Build the target; fails (exit 2) before any request if something is missing."""
    env = os.environ if environ is None else environ
    r = _router_section(loaded)
    if r is None and not url:
        raise UsageError("no router to talk to",
                         hint="add a router: section to the playbook or pass --url")
    the_url = (url or (r.url if r else "")).rstrip("/")
    if not the_url.startswith(("https://", "http://")):
        raise UsageError(f"--url {the_url!r} must start with https://")
    allow_http = bool(r and r.allow_http)
    if the_url.startswith("http://") and not allow_http:
        raise UsageError(f"plain HTTP ({the_url}) is refused: the password would travel in "
                         "clear text", hint="use https://, or set router.allow_http: true in "
                                             "the playbook")
    if env.get(PASSWORD_ENV):
        password = Secret(env[PASSWORD_ENV], source=f"env:{PASSWORD_ENV}")
    elif r is not None and loaded is not None and loaded.model.provider == "netns":
        from labctl.netns.secrets import router_password

        password = router_password(loaded, env)  # the twin's router: labctl made it
    elif r is not None:
        password = r.password.resolve("router password", prompt_fn=prompt_fn, environ=env)
    else:
        password = resolve_secret(PASSWORD_ENV, prompt=True, label="router password",
                                  prompt_fn=prompt_fn, environ=env)
    netns = None
    if loaded is not None:
        from labctl.transport.netns import lab_host_netns

        netns = lab_host_netns(loaded.model)
    return RouterTarget(url=the_url, user=user or (r.user if r else "admin"), password=password,
                        allow_http=allow_http, login=r.login if r else "auto", netns=netns,
                        lan=r.lan if r else None, lab=loaded.model.lab if loaded else None,
                        timeout=timeout)


def desired_network(loaded: LoadedPlaybook | None, overrides: dict[str, Any], *,
                    prompt_fn: PromptFn | None = None,
                    environ: dict[str, str] | None = None) -> DesiredNetwork:
    """The IoT network from the playbook's router.iot_network, flags overriding keys."""
    env = os.environ if environ is None else environ
    r = _router_section(loaded)
    base = r.iot_network if r is not None else None
    o = {k: v for k, v in overrides.items() if v is not None}

    def pick(key: str, default: Any = None) -> Any:
        if key in o:
            return o[key]
        return getattr(base, key) if base is not None else default

    missing = [k for k in ("ssid", "vlan", "subnet") if pick(k) is None]
    if missing:
        raise UsageError(f"the IoT network needs {', '.join(missing)}",
                         hint="set router.iot_network in the playbook or pass "
                              + " ".join(f"--{m}" for m in missing))
    try:
        subnet = ipaddress.IPv4Network(str(pick("subnet")), strict=True)
    except ValueError as e:
        raise UsageError(f"--subnet {pick('subnet')!r} is not an IPv4 network ({e})") from None
    try:
        vlan = int(pick("vlan"))
    except (TypeError, ValueError):
        raise UsageError(f"--vlan {pick('vlan')!r} is not a number") from None
    dns_raw = pick("dns", [])
    if isinstance(dns_raw, str):
        dns_raw = [x for x in dns_raw.split(",") if x.strip()]
    try:
        dns = tuple(ipaddress.IPv4Address(str(x).strip()) for x in dns_raw)
    except ValueError as e:
        raise UsageError(f"--dns: {e}") from None
    gateway = pick("gateway")
    if "subnet" in o and "gateway" not in o and base is not None and base.gateway is not None \
            and base.gateway not in subnet:
        gateway = None  # the playbook's gateway belonged to the old subnet
    rng = pick("dhcp_range")
    if "subnet" in o and "dhcp_range" not in o and rng is not None and \
            not all(a in subnet for a in rng):
        rng = None
    if env.get(PASSPHRASE_ENV):
        psk = Secret(env[PASSPHRASE_ENV], source=f"env:{PASSPHRASE_ENV}")
    elif base is not None and loaded is not None and loaded.model.provider == "netns":
        from labctl.netns.secrets import iot_passphrase

        psk = iot_passphrase(loaded, env)  # the twin's Wi-Fi is simulated: labctl makes one
    elif base is not None:
        psk = base.passphrase.resolve("WPA passphrase", prompt_fn=prompt_fn, environ=env)
    else:
        psk = resolve_secret(PASSPHRASE_ENV, prompt=True, label="WPA passphrase",
                             prompt_fn=prompt_fn, environ=env)
    ssid = str(pick("ssid"))
    return DesiredNetwork(
        name=str(pick("name", ssid) or ssid), ssid=ssid, passphrase=psk, subnet=subnet,
        vlan=vlan, type=str(pick("type", "IoT")), band=str(pick("band", "2.4")),
        auth=str(pick("auth", "wpa2-personal")),
        gateway=ipaddress.IPv4Address(str(gateway)) if gateway else None,
        dhcp=bool(pick("dhcp", True)),
        dhcp_range=(ipaddress.IPv4Address(str(rng[0])), ipaddress.IPv4Address(str(rng[1])))
        if rng else None,
        lease_seconds=int(pick("lease_seconds", 86400)), dns=dns,
        ap_isolation=bool(pick("ap_isolation", False)), hidden=bool(pick("hidden", False)))


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
            dry_run: bool = False) -> IotNetReport:
    warnings = sdn.validate_static(desired, target.lan)
    with target.client() as client:
        state = sdn.read_state(client)
        edit = sdn.plan_iot_net(state, desired)
        after = dict(state)
        after.update(edit.values)
        diff = sdn.diff_networks(state, after, desired.ssid)
        if edit.action == "update" and sdn.passphrase_changed(state, after, desired.ssid) \
                and not any(d["field"] == "passphrase" for d in diff):
            diff.append({"field": "passphrase", "old": "********", "new": "******** (changed)"})
        report = IotNetReport(network=desired.to_public(), action=edit.action, diff=diff,
                              changed_keys=sorted(edit.values), dry_run=dry_run,
                              warnings=warnings, login=getattr(client, "login_scheme", None))
        if edit.empty:
            report.verified = True
            return report
        if dry_run:
            return report
        if not confirm(report):
            raise Interrupted("nothing was changed (not confirmed)")
        tx = transaction.run(client, state, edit, backup_dir=target.state_dir / "router-backups")
        report.transaction = tx.to_dict()
        report.applied = tx.applied
        report.verified = tx.verified
        return report


def show(target: RouterTarget) -> list[dict[str, Any]]:
    with target.client() as client:
        return sdn.decode_networks(sdn.read_state(client))


def backup(target: RouterTarget, out: Path | None) -> dict[str, Any]:
    with target.client() as client:
        state = sdn.read_state(client)
    keys = {k: state.get(k, "") for k in sdn.sdn_keys()}
    if out is None:
        path = transaction.write_backup(keys, target.state_dir / "router-backups", "backup")
    else:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"kind": "asus-sdn-nvram", "keys": keys}, f, indent=1, sort_keys=True)
        path = out
    return {"file": str(path), "keys": len(keys),
            "networks": [n["name"] for n in sdn.decode_networks(state) if n["idx"] != "0"]}


def restore(target: RouterTarget, path: Path, *, confirm: Callable[[list[str]], bool]
            ) -> dict[str, Any]:
    values = transaction.load_backup(Path(path))  # bad file: exit 2 before any request
    with target.client() as client:
        current = sdn.read_state(client)
        differing = sorted(k for k, v in values.items() if current.get(k, "") != v)
        if differing and not confirm(differing):
            raise Interrupted("nothing was changed (not confirmed)")
        report = transaction.restore_backup(client, values)
    return report.to_dict()


def delete_net(target: RouterTarget, name: str, *, confirm: Callable[[dict[str, Any]], bool]
               ) -> dict[str, Any]:
    if "<" in name or ">" in name:
        raise UsageError("the network name must not contain < or >")
    with target.client() as client:
        state = sdn.read_state(client)
        edit = sdn.plan_delete(state, name)
        net = sdn.find_network(state, name)
        if not confirm(net or {}):
            raise Interrupted("nothing was changed (not confirmed)")
        tx = transaction.run(client, state, edit, backup_dir=target.state_dir / "router-backups")
    return {"deleted": name, "transaction": tx.to_dict()}


def iot_net_stage(ctx: Any, *, confirm: Callable[[Any], bool], dry_run: bool = False
                  ) -> IotNetReport | None:
    """`labctl up`'s router stage: apply router.iot_network (None when there is none).

    ``ctx`` is a labctl.app.lab.LabContext; ``confirm`` receives the IotNetReport (its
    ``diff`` and ``changed_keys``) and returns whether to apply.
    """
    loaded: LoadedPlaybook = ctx.loaded
    r = loaded.model.router
    if r is None or r.iot_network is None:
        return None
    opts = getattr(ctx, "options", {}) or {}
    target = resolve_target(loaded, url=opts.get("router_url"), user=opts.get("router_user"),
                            prompt_fn=ctx.prompt_fn)
    if opts.get("router_client_factory") is not None:
        target.client_factory = opts["router_client_factory"]
    desired = desired_network(loaded, {}, prompt_fn=ctx.prompt_fn)
    return iot_net(target, desired, confirm=confirm, dry_run=dry_run)


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
