"""The ASUS router emulator's state and behaviour: nvram, sessions, lockout, faults.

Why apart from the HTTP side (:mod:`.httpd`): everything a test asserts on (the nvram, the
request log, the injected faults) lives here, with no socket in sight, so it can be driven
and inspected directly; the httpd emulation only translates requests into calls on it.

It behaves like ASUSWRT 3.0.0.6 (asuswrt-merlin.ng ``release/src/router/httpd``): lockout
after 5 failed logins (``DEFAULT_LOGIN_MAX_NUM``, httpd.h) for 300 s, counted like the
firmware in two counters, one for LAN clients and one for everyone else (``send_login_page``
increments ``HTTPD_LOGIN_FAIL_LAN`` or ``HTTPD_LOGIN_FAIL_WAN`` by
``check_current_ip_is_lan_or_wan()``, httpd.c), not per client address: five failures from
one LAN client lock every LAN client out; token expiry, ``applyapp.cgi`` writing only
changed, known keys (unknown ones are silently ignored). Every request is recorded in
:attr:`RouterEmulator.log` (method, path, hooks, posted keys, outcome) so tests can assert,
e.g., that validation errors made zero requests or that no login was attempted after a
lockout.

With ``iot_interfaces={vid: ifname}`` and an ``address_sync`` callback, applying an enabled
SDN network on that VLAN moves its gateway address onto ``ifname`` and deleting it removes
the address. The emulator never runs a command itself: ``labctl twin serve-router`` passes
``labctl.netns.ifaddr.move_address`` (the netns twin runs it in its router namespace).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import secrets as pysecrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import Field

from labctl.core.assets import asset_path
from labctl.core.errors import UsageError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate
from labctl.router.asus import codec

log = logging.getLogger("labctl.router.emulator")

LOGIN_MAX_FAIL = 5  # DEFAULT_LOGIN_MAX_NUM
LOCK_SECONDS = 300  # MAX_LOGIN_BLOCK_TIME
#: send_headers' values for FROM_DUTUtil: EXTEND_AIHOME_API_LEVEL and EXTEND_HTTPD_AIHOME_VER
#: as asuswrt-merlin.ng ``release/src/router/shared/shared.h`` defines them for 3004/3006
AIHOME_API_LEVEL = 21
HTTPD_AIHOME_VER = 0
APG_MAXINUM = 16
APP_FRAMEWORKS = ("DUTUtil", "ASSIA", "IFTTT", "Alexa", "WebView")
FAULT_KINDS = ("drop", "5xx", "slow", "mangle", "badecho")
_APG_RE = re.compile(r"^apg(\d+)_(.+)$")


#: ``address_sync(ifname, old, new)``: move an interface address (``ip/prefix`` or None)
AddressSync = Callable[[str, str | None, str | None], None]


class EmulatorNvram(Model):
    model: str = "ZenWiFi Pro ET12"
    nvram: dict[str, str] = Field(default_factory=dict)


def initial_nvram() -> dict[str, str]:
    doc = load_yaml(asset_path("router", "asus", "emulator-nvram.yaml"))
    return dict(validate(EmulatorNvram, doc).nvram)


def is_app_user_agent(ua: str) -> bool:
    """httpd's check_user_agent: ``asusrouter-<platform>-<framework>-<ver>`` is an app."""
    parts = ua.split("-")
    return len(parts) >= 3 and parts[0] == "asusrouter"


def is_dututil(ua: str) -> bool:
    """The app framework ``FROM_DUTUtil``: the third ``-``-separated token of an app
    User-Agent is exactly ``DUTUtil`` (``asusrouter--DUTUtil-`` counts, ``DUTUtilX`` not);
    only then does ``send_headers`` (httpd.c) add ``AiHOMEAPILevel``, ``Httpd_AiHome_Ver``
    and ``Model_Name``."""
    parts = ua.split("-")
    return is_app_user_agent(ua) and parts[2] == "DUTUtil"


def char_to_ascii(value: str) -> str:
    """nvram_char_to_ascii: everything but letters and digits as %XX (UTF-8 bytes)."""
    return quote(value, safe="")


@dataclass
class Fault:
    endpoint: str  # "apply", "appget", "login"
    kind: str  # drop | 5xx | slow | mangle
    count: int = 1


@dataclass
class Session:
    token: str
    ua: str
    ip: str
    issued: float


@dataclass
class RouterEmulator:
    """State and behaviour of the emulated router; :class:`~.httpd.EmulatorServer` serves
    it over HTTP(S)."""

    user: str = "admin"
    password: str = "admin"
    login_mode: str = "both"  # v1 | v2 | both
    model: str = "ZenWiFi Pro ET12"
    state_file: Path | None = None
    token_ttl: float = 3600.0
    slow_seconds: float = 3.0
    iot_interfaces: dict[int, str] = field(default_factory=dict)
    address_sync: AddressSync | None = None
    nvram: dict[str, str] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.sessions: dict[str, Session] = {}
        self.nonces: dict[str, str] = {}
        # the firmware's two counters, "lan" and "wan" (see lock_scope)
        self.fail_count: dict[str, int] = {}
        self.locked_until: dict[str, float] = {}
        self.applied_addrs: dict[int, str] = {}
        self._started = time.monotonic()
        if not self.nvram:
            if self.state_file and Path(self.state_file).exists():
                try:
                    self.nvram = {str(k): str(v) for k, v in
                                  json.loads(Path(self.state_file).read_text()).items()}
                except (OSError, ValueError) as e:
                    raise UsageError(f"cannot read the router emulator's state "
                                     f"{self.state_file}: {e}",
                                     hint="fix or delete the file to start from defaults"
                                     ) from None
            else:
                self.nvram = initial_nvram()
                self.save()

    # -- state ---------------------------------------------------------------------------
    def save(self) -> None:
        if not self.state_file:
            return
        p = Path(self.state_file)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nvram.", dir=str(p.parent))
        with os.fdopen(fd, "w") as f:
            json.dump(self.nvram, f, indent=1, sort_keys=True)
        os.replace(tmp, p)

    def get(self, key: str) -> str:
        return self.nvram.get(key, "")

    def sdn_snapshot(self) -> dict[str, str]:
        """Every SDN-related key (tables and apg0..15 fields), unset keys as ""."""
        with self.lock:
            keys = list(codec.SDN_TABLE_KEYS) + [f"apg{n}_{f}" for n in range(APG_MAXINUM)
                                                  for f in codec.APG_FIELDS]
            return {k: self.nvram.get(k, "") for k in keys}

    def add_fault(self, endpoint: str, kind: str, count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise UsageError(f"unknown fault {kind!r}", hint=f"one of {', '.join(FAULT_KINDS)}")
        with self.lock:
            self.faults.append(Fault(endpoint, kind, count))

    def take_fault(self, endpoint: str) -> str | None:
        with self.lock:
            for f in self.faults:
                if f.endpoint == endpoint and f.count > 0:
                    f.count -= 1
                    if f.count == 0:
                        self.faults.remove(f)
                    return f.kind
        return None

    def record(self, **entry: Any) -> dict[str, Any]:
        entry.setdefault("t", time.time())
        with self.lock:
            self.log.append(entry)
        return entry

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.log if e.get("path") == path]

    # -- app-mode hooks ------------------------------------------------------------------
    def cpu_usage(self) -> dict[str, str]:
        """``cpu_usage(appobj)`` (web.c ej_cpu_usage, app object form): per core
        ``cpu<N>_total`` and ``cpu<N>_usage`` jiffy counters, as strings, rising over time."""
        ticks = int((time.monotonic() - self._started) * 100)
        out: dict[str, str] = {}
        for core in range(1, 5):
            total = 100000 + ticks * 4 + core
            out[f"cpu{core}_total"] = str(total)
            out[f"cpu{core}_usage"] = str(total // 10)
        return out

    def memory_usage(self) -> dict[str, str]:
        """``memory_usage(appobj)`` (web.c ej_memory_usage): kB as strings."""
        total = 1048576
        free = 524288
        return {"mem_total": str(total), "mem_free": str(free), "mem_used": str(total - free)}

    # -- auth ----------------------------------------------------------------------------
    @property
    def product_id(self) -> str:
        """get_productid(): ``odmpid`` if set, else ``productid`` (Model_Name header)."""
        return self.get("odmpid") or self.get("productid") or self.model

    def lock_scope(self, ip: str) -> str:
        """check_current_ip_is_lan_or_wan() (httpd.c): "lan" when the client is in
        ``lan_ipaddr``/``lan_netmask``, else "wan" (loopback included)."""
        try:
            lan = ipaddress.IPv4Network(f"{self.get('lan_ipaddr')}/{self.get('lan_netmask')}",
                                        strict=False)
            return "lan" if ipaddress.ip_address(ip) in lan else "wan"
        except ValueError:
            return "wan"

    def lock_remaining(self, ip: str) -> int:
        until = self.locked_until.get(self.lock_scope(ip), 0.0)
        return max(0, int(until - time.time() + 0.999))

    def login_failed(self, ip: str) -> None:
        scope = self.lock_scope(ip)
        n = self.fail_count.get(scope, 0) + 1
        self.fail_count[scope] = n
        if n >= LOGIN_MAX_FAIL:
            self.locked_until[scope] = time.time() + LOCK_SECONDS
            self.fail_count[scope] = 0

    def new_session(self, ua: str, ip: str) -> str:
        token = pysecrets.token_hex(16)  # 32 characters, like httpd's token[33]
        self.sessions[token] = Session(token, ua, ip, time.time())
        self.fail_count[self.lock_scope(ip)] = 0
        return token

    def check_token(self, token: str | None) -> int:
        """0 if valid, else the error_status: 1 no token, 2 bad or expired token."""
        if not token:
            return 1
        s = self.sessions.get(token)
        if s is None:
            return 2
        if time.time() - s.issued > self.token_ttl:
            del self.sessions[token]
            return 2
        return 0

    def expire_all_tokens(self) -> None:
        with self.lock:
            for s in self.sessions.values():
                s.issued = 0.0

    # -- apply ---------------------------------------------------------------------------
    def accepts_key(self, key: str) -> bool:
        """validate_apply(): known defaults or an apg<N>_<field> instance; else ignored."""
        m = _APG_RE.match(key)
        if m:
            return int(m.group(1)) < APG_MAXINUM and m.group(2) in codec.APG_FIELDS
        return key in self.nvram or key in codec.SDN_TABLE_KEYS

    def write(self, values: dict[str, str]) -> list[str]:
        """Write accepted keys whose value differs (strcmp guard); return the changed keys."""
        changed = []
        with self.lock:
            for k, v in values.items():
                if self.accepts_key(k) and self.nvram.get(k, "") != v:
                    self.nvram[k] = v
                    changed.append(k)
            if changed:
                self.save()
        return changed

    def sync_interfaces(self) -> None:
        """Move IoT gateway addresses on the configured interfaces (through address_sync)."""
        if not self.iot_interfaces or self.address_sync is None:
            return
        with self.lock:
            want = self._gateway_addrs()
        for vid, ifname in self.iot_interfaces.items():
            old, new = self.applied_addrs.get(vid), want.get(vid)
            if old == new:
                continue
            self.address_sync(ifname, old, new)
            if new:
                self.applied_addrs[vid] = new
            else:
                self.applied_addrs.pop(vid, None)

    def _gateway_addrs(self) -> dict[int, str]:
        sdn = codec.parse_sdn(self.get("sdn_rl"))
        vlans = codec.parse_vlan(self.get("vlan_rl"))
        subnets = codec.parse_subnet(self.get("subnet_rl"))
        out: dict[int, str] = {}
        for row in sdn:
            if row["idx"] == "0" or row["enable"] != "1" or row["vlan_idx"] in ("", "0"):
                continue
            v = vlans.find("vlan_idx", row["vlan_idx"])
            s = subnets.find("subnet_idx", row["subnet_idx"])
            if v is None or s is None:
                continue
            try:
                vid = int(v["vid"])
                iface = ipaddress.IPv4Interface(f"{s['addr']}/{s['netmask']}")
            except ValueError:
                continue
            out[vid] = str(iface)
        return out
