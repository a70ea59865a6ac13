"""The scanner section: where nmap runs and what it may touch."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from labctl.core.playbook.common import Address, Model, Network

SPEC_RE = re.compile(r"^(local|netns:[A-Za-z0-9_.-]+|ssh://[A-Za-z0-9_.-]+@[A-Za-z0-9_.:\[\]-]+)$")


class ScannerSection(Model):
    spec: str = "local"  # local | ssh://user@host[:port] | netns:NAME
    profile: str = "smart"
    ssh_key: str | None = None
    ip: Address | None = None  # the scanner's own address in the lab (Kali)
    scope: list[Network] = Field(default_factory=list)  # extra networks it may scan
    exclude: list[Address] = Field(default_factory=list)  # never scanned (fragile OT devices)

    @field_validator("spec")
    @classmethod
    def _spec(cls, v: str) -> str:
        if not SPEC_RE.match(v):
            raise ValueError(f"{v!r} is not a scanner spec: use local, ssh://user@host[:port] "
                             "or netns:NAME")
        return v
