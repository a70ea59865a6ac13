"""Shared pydantic types for labctl's data files."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from labctl.core.secrets import PromptFn, Secret, resolve_secret


class Model(BaseModel):
    """Base of every data-file model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _network(v: Any) -> Any:
    if isinstance(v, ipaddress.IPv4Network):
        return v
    try:
        return ipaddress.IPv4Network(str(v), strict=True)
    except ValueError as e:
        raise ValueError(f"{v!r} is not a valid IPv4 CIDR network ({e})") from None


def _interface(v: Any) -> Any:
    if isinstance(v, ipaddress.IPv4Interface):
        return v
    s = str(v)
    if "/" not in s:
        raise ValueError(f"{v!r} needs a prefix length, e.g. 192.168.0.1/24")
    try:
        return ipaddress.IPv4Interface(s)
    except ValueError as e:
        raise ValueError(f"{v!r} is not a valid IPv4 address/prefix ({e})") from None


def _address(v: Any) -> Any:
    if isinstance(v, ipaddress.IPv4Address):
        return v
    try:
        return ipaddress.IPv4Address(str(v))
    except ValueError:
        raise ValueError(f"{v!r} is not a valid IPv4 address") from None


def _vlan(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int):
        try:
            v = int(str(v), 10)
        except ValueError:
            raise ValueError(f"VLAN id must be a whole number, got {v!r}") from None
    if not 1 <= v <= 4094:
        raise ValueError(f"VLAN id {v} is outside 1-4094")
    return v


Network = Annotated[ipaddress.IPv4Network, BeforeValidator(_network)]
Interface = Annotated[ipaddress.IPv4Interface, BeforeValidator(_interface)]
Address = Annotated[ipaddress.IPv4Address, BeforeValidator(_address)]
VlanId = Annotated[int, BeforeValidator(_vlan)]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()\-]{0,63}$")


def _name(v: Any) -> Any:
    if not isinstance(v, str) or not NAME_RE.match(v):
        raise ValueError(
            f"{v!r} is not a valid name (1-64 letters, digits, space, . _ - ( ), starting with a "
            "letter or digit)"
        )
    return v


Name = Annotated[str, BeforeValidator(_name)]


def parse_vlan_list(spec: Any) -> list[int]:
    """Parse ``[52, "100-110"]`` or ``"1-4094"`` or ``"52,60"`` into sorted unique ids."""
    items: list[Any]
    if isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        items = str(spec).split(",")
    out: set[int] = set()
    for item in items:
        s = str(item).strip()
        if not s:
            continue
        if "-" in s:
            lo, _, hi = s.partition("-")
            a, b = _vlan(lo.strip()), _vlan(hi.strip())
            if a > b:
                raise ValueError(f"VLAN range {s!r} runs backwards")
            out.update(range(a, b + 1))
        else:
            out.add(_vlan(s))
    if not out:
        raise ValueError("VLAN list is empty")
    return sorted(out)


def format_vlan_list(ids: list[int]) -> str:
    """Compress ids into Hyper-V's AllowedVlanIdList form: ``1-10,52``."""
    ids = sorted(set(ids))
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(parts)


class SecretRef(Model):
    """Where a secret comes from. Secrets are never written inline in a playbook."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    prompt: bool = False

    @model_validator(mode="before")
    @classmethod
    def _no_inline(cls, v: Any) -> Any:
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            raise ValueError(
                "secrets are referenced, never written inline: use {env: VARIABLE} or "
                "{prompt: true}"
            )
        return v

    @model_validator(mode="after")
    def _some_source(self) -> SecretRef:
        if not self.env and not self.prompt:
            raise ValueError("a secret needs env: VARIABLE, prompt: true, or both")
        return self

    def resolve(self, label: str, prompt_fn: PromptFn | None = None,
                environ: Mapping[str, str] | None = None) -> Secret:
        return resolve_secret(self.env, prompt=self.prompt, label=label, prompt_fn=prompt_fn,
                              environ=environ)


def secret_env(name: str, prompt: bool = True) -> SecretRef:
    return SecretRef(env=name, prompt=prompt)
