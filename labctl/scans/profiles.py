"""Scan profiles: an nmap argument list plus limits, loaded from ``scans/profiles/*.yaml``.

A profile is data, so it is validated like data: every nmap argument (``args``, and both
passes of a smart profile, ``discovery_args`` and ``service_args``) is checked against the
allow-list in :mod:`labctl.scans.nmapargs`, scripts against nmap's script database
(:mod:`labctl.scans.scriptdb`). A bad profile is refused with the file, key path and line.
The same check runs for bundled profiles, profiles given by path, ScanProfile objects
built in code (:func:`revalidate`), and once more on the argv a scanner is about to run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from labctl.core.errors import ConfigError, UsageError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate
from labctl.scans.nmapargs import check_nmap_args, scan_letters

__all__ = ["ScanProfile", "check_nmap_args", "revalidate", "load_profile",
           "load_profile_file", "list_profiles", "profiles_dir"]


class ScanProfile(Model):
    """One scan profile. ``strategy: smart`` runs two passes (see labctl.scans.passes)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    description: str = ""
    strategy: Literal["oneshot", "smart"] = "oneshot"
    args: list[str] = Field(default_factory=list)  # oneshot
    discovery_args: list[str] = Field(default_factory=list)  # smart, pass 1
    service_args: list[str] = Field(default_factory=list)  # smart, pass 2
    # strict: a YAML number or boolean, never a string that looks like one ("٦٠", "1_0")
    allow_scripts: bool = Field(default=True, strict=True)
    allow_udp: bool = Field(default=True, strict=True)
    # add the playbook's scanner.exclude to --exclude
    playbook_excludes: bool = Field(default=True, strict=True)
    # seconds for the whole scan
    timeout: int = Field(default=1800, ge=5, le=86400, strict=True)
    # after expanding targets
    max_addresses: int = Field(default=4096, ge=1, le=1 << 20, strict=True)
    stats_every: str = Field(default="2s", pattern=r"^[0-9]{1,6}(ms|s|m)?$")

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
            if "n" in scan_letters(self.discovery_args):
                raise ValueError("discovery_args of a smart profile must find open ports; "
                                 "remove -sn")
        elif self.discovery_args or self.service_args:
            raise ValueError("discovery_args/service_args need strategy: smart")
        return self

    def all_args(self) -> list[str]:
        return [*self.args, *self.discovery_args, *self.service_args]


def revalidate(profile: ScanProfile) -> ScanProfile:
    """Validate a ScanProfile object again from its data.

    pydantic's ``model_copy(update=...)`` and ``model_construct`` skip validation, so a
    profile built in code is checked like a file before it is used.
    """
    try:
        return ScanProfile.model_validate(profile.model_dump())
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        msg = str(first["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"scan profile {profile.name!r}: {loc + ': ' if loc else ''}{msg}",
                         hint="see docs/scan.md for the options a profile may use") from None


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
