"""Scan profiles: an nmap argument list plus limits, loaded from ``scans/profiles/*.yaml``.

A profile is data, so it is validated like data: every nmap argument is checked against an
allow-list of options before it can reach a command line. Output options (``-o*``), input
lists (``-iL``/``-iR``), files that nmap would read (``--script-args-file``, ``--datadir``
...), targets hidden in the profile, shell metacharacters and values containing spaces are
refused with the file, key path and line, because labctl owns the output (``-oX -``), the
targets (after the scope guard) and the progress option (``--stats-every``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from labctl.core.errors import ConfigError, UsageError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate

# Options that take the next argv item as their value (``--opt VALUE``); ``--opt=VALUE``
# is accepted for the long ones too.
VALUE_OPTIONS = frozenset({
    "-p", "--exclude-ports", "--top-ports", "--port-ratio", "-e", "-S", "-g", "--source-port",
    "-D", "--min-rate", "--max-rate", "--max-retries", "--host-timeout", "--scan-delay",
    "--max-scan-delay", "--min-rtt-timeout", "--max-rtt-timeout", "--initial-rtt-timeout",
    "--min-hostgroup", "--max-hostgroup", "--min-parallelism", "--max-parallelism",
    "--script", "--script-args", "--script-timeout", "--version-intensity", "--data-length",
    "--ttl", "--mtu", "--spoof-mac", "--dns-servers", "--max-os-tries", "-T", "--scanflags",
    "--data-string", "--data", "--ip-options", "--exclude", "-sI", "-b", "--proxies",
})
# Options that stand alone.
FLAG_OPTIONS = frozenset({
    "-sS", "-sT", "-sA", "-sW", "-sM", "-sU", "-sN", "-sF", "-sX", "-sY", "-sZ", "-sO",
    "-sn", "-sL", "-sV", "-sC", "-sR", "-Pn", "-PE", "-PP", "-PM", "-PR", "-PO", "-n", "-R",
    "-F", "-r", "-O", "-A", "-6", "-v", "-vv", "-d", "-f", "--open", "--reason",
    "--traceroute", "--version-light", "--version-all", "--version-trace", "--osscan-limit",
    "--osscan-guess", "--system-dns", "--send-eth", "--send-ip", "--privileged",
    "--unprivileged", "--disable-arp-ping", "--badsum", "--allports", "--packet-trace",
    "--defeat-rst-ratelimit", "--defeat-icmp-ratelimit", "--nsock-engine=epoll",
    "--nsock-engine=poll", "--nsock-engine=select", "--discovery-ignore-rst", "-sCV", "-sVC",
    "--noninteractive",
})
# Short options whose value may be glued on: -T4, -p80,443, -PS22, -PA80, -PU53, -PY, -sV...
GLUED_PREFIXES = ("-T", "-p", "-PS", "-PA", "-PU", "-PY", "-PO", "-e", "-g", "-D", "-S", "-b")
# Refused outright, with the reason shown to the user.
FORBIDDEN = {
    "-o": "output options are managed by labctl (XML goes to the state directory; use "
          "--xml-out for a copy)",
    "--append-output": "output options are managed by labctl",
    "--stylesheet": "output options are managed by labctl",
    "--webxml": "output options are managed by labctl",
    "--no-stylesheet": "output options are managed by labctl",
    "-iL": "targets come from the command line so the scope guard can check them",
    "-iR": "random targets would bypass the scope guard",
    "--excludefile": "exclusions come from the playbook and --exclude",
    "--script-args-file": "nmap would read an arbitrary local file",
    "--datadir": "nmap would load data files from an arbitrary directory",
    "--servicedb": "nmap would read an arbitrary local file",
    "--versiondb": "nmap would read an arbitrary local file",
    "--resume": "a resumed scan bypasses the scope guard",
    "--stats-every": "progress reporting is managed by labctl",
    "--iflist": "not a scan",
    "--interactive": "not a scan",
}
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:/=+*\-\[\]@%()]+$")
_SHELL_META = set(";|&$`<>\\\"'!{}~#\n\r\t\0 ")
SCRIPT_OPTIONS = ("-sC", "-A", "--script", "-sCV", "-sVC")
UDP_OPTIONS = ("-sU", "-PU", "-sY", "-sZ")


def _forbidden_reason(arg: str) -> str | None:
    for key, why in FORBIDDEN.items():
        if key == "-o":
            if arg.startswith("-o") and not arg.startswith("--"):
                return why
            continue
        if arg == key or arg.startswith(key + "="):
            return why
    return None


def check_nmap_args(args: list[str], *, allow_scripts: bool = True,
                    allow_udp: bool = True) -> list[str]:
    """Validate a profile's nmap argument list; raise ValueError naming the bad item.

    The check is an allow-list, so an option labctl does not know is refused too: nmap's
    command line is where a hostile profile would try to write files or add targets.
    """
    out: list[str] = []
    expect_value_for: str | None = None
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise ValueError(f"item {i} ({arg!r}) must be a string")
        if arg == "" or any(c.isspace() for c in arg):
            raise ValueError(f"item {i} ({arg!r}) contains spaces: give each option and "
                             "value as its own list item, and no value may contain a space")
        bad = sorted(set(arg) & _SHELL_META)
        if bad:
            raise ValueError(f"item {i} ({arg!r}) contains {''.join(bad)!r}: shell "
                             "metacharacters are not allowed in nmap arguments")
        if expect_value_for is not None:
            if arg.startswith("-") and not re.match(r"^-\d", arg):
                raise ValueError(f"item {i}: option {expect_value_for} needs a value, got {arg!r}")
            if not _SAFE_VALUE.match(arg):
                raise ValueError(f"item {i}: value {arg!r} for {expect_value_for} has "
                                 "characters that are not allowed")
            out.append(arg)
            expect_value_for = None
            continue
        if not arg.startswith("-"):
            raise ValueError(f"item {i} ({arg!r}) is not an option: targets are given on the "
                             "command line, never in a profile")
        why = _forbidden_reason(arg)
        if why:
            raise ValueError(f"item {i}: {arg} is not allowed: {why}")
        name, eq, value = arg.partition("=")
        if arg in FLAG_OPTIONS:
            pass
        elif name in VALUE_OPTIONS and name.startswith("--") and eq:
            if not value or not _SAFE_VALUE.match(value):
                raise ValueError(f"item {i}: value {value!r} for {name} is not allowed")
        elif arg in VALUE_OPTIONS:
            expect_value_for = arg
        elif any(arg.startswith(p) and len(arg) > len(p) for p in GLUED_PREFIXES):
            if not _SAFE_VALUE.match(arg):
                raise ValueError(f"item {i}: {arg!r} has characters that are not allowed")
        else:
            raise ValueError(f"item {i}: {arg!r} is not an nmap option labctl knows "
                             "(see labctl/scans/profiles.py for the allowed list)")
        if not allow_scripts and (arg in SCRIPT_OPTIONS or name == "--script"):
            raise ValueError(f"item {i}: {arg} runs NSE scripts, which this profile forbids "
                             "(allow_scripts: false)")
        if not allow_udp and (arg in UDP_OPTIONS or any(arg.startswith(u) for u in UDP_OPTIONS)
                              or (arg.startswith("-p") and "U:" in arg)):
            raise ValueError(f"item {i}: {arg} scans UDP, which this profile forbids "
                             "(allow_udp: false)")
        out.append(arg)
    if expect_value_for is not None:
        raise ValueError(f"option {expect_value_for} at the end needs a value")
    if not allow_udp:
        for j, a in enumerate(out[:-1]):
            if a == "-p" and "U:" in out[j + 1]:
                raise ValueError(f"item {j + 1}: UDP ports are forbidden in this profile")
    return out


class ScanProfile(Model):
    """One scan profile. ``strategy: smart`` runs two passes (see labctl.scans.smart)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    description: str = ""
    strategy: Literal["oneshot", "smart"] = "oneshot"
    args: list[str] = Field(default_factory=list)  # oneshot
    discovery_args: list[str] = Field(default_factory=list)  # smart, pass 1
    service_args: list[str] = Field(default_factory=list)  # smart, pass 2
    allow_scripts: bool = True
    allow_udp: bool = True
    playbook_excludes: bool = True  # add the playbook's scanner.exclude to --exclude
    timeout: int = Field(default=1800, ge=5, le=86400)  # seconds for the whole scan
    max_addresses: int = Field(default=4096, ge=1, le=1 << 20)  # after expanding targets
    stats_every: str = Field(default="2s", pattern=r"^\d+(ms|s|m)?$")

    @field_validator("args", "discovery_args", "service_args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        return check_nmap_args(v)

    @model_validator(mode="after")
    def _shape(self) -> ScanProfile:
        for key in ("args", "discovery_args", "service_args"):
            try:
                check_nmap_args(getattr(self, key), allow_scripts=self.allow_scripts,
                                allow_udp=self.allow_udp)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        if self.strategy == "smart":
            if self.args:
                raise ValueError("a smart profile uses discovery_args and service_args, not args")
            if "-sn" in self.discovery_args:
                raise ValueError("discovery_args of a smart profile must find open ports; "
                                 "remove -sn")
        elif self.discovery_args or self.service_args:
            raise ValueError("discovery_args/service_args need strategy: smart")
        return self

    def all_args(self) -> list[str]:
        return [*self.args, *self.discovery_args, *self.service_args]


def profiles_dir() -> Path:
    from labctl.core.assets import asset_path

    return asset_path("scans", "profiles")


def list_profiles() -> list[str]:
    d = profiles_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_profile_file(path: str | Path) -> ScanProfile:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise ConfigError("a scan profile must be a YAML mapping", file=str(path), line=1)
    prof = validate(ScanProfile, doc)
    return prof


def load_profile(name: str) -> ScanProfile:
    """A profile by name (``scans/profiles/NAME.yaml``) or by path to a YAML file."""
    if "/" in name or name.endswith((".yaml", ".yml")):
        return load_profile_file(name)
    if not re.match(r"^[a-z][a-z0-9-]{0,31}$", name):
        raise UsageError(f"{name!r} is not a profile name",
                         hint=f"known profiles: {', '.join(list_profiles())}")
    path = profiles_dir() / f"{name}.yaml"
    if not path.is_file():
        raise UsageError(f"unknown scan profile {name!r}",
                         hint=f"known profiles: {', '.join(list_profiles()) or 'none'}; or "
                              "pass a path to a profile YAML file")
    doc = load_yaml(path)
    prof = load_profile_file(path)
    if prof.name != name:
        raise ConfigError(f"profile name {prof.name!r} differs from the file name {name!r}",
                          file=str(path), key="name", line=doc.line_of(("name",)))
    return prof
