"""Expectation files (``sensor/expectations/*.yaml``): what `labctl verify-alerts` proves.

A file holds **cases**. Each case sends one stimulus (a scan through labctl's scanner, or a
packet recipe from a small built-in library) from the scanner's place, then checks the
sensor's alerts, in the style of suricata-verify's ``filter: {count, match}``:

.. code-block:: yaml

    cases:
      - id: port-zero
        description: a TCP connection attempt on port 0 of a pet feeder
        reference: "alert-engine-messages.md ... Illegal Connection Attempt on Port 0"
        requires: port_zero
        stimulus: {recipe: port-zero, host: "{device:feeder1}"}
        expect:
          - {title: Illegal Connection Attempt on Port 0, engine: Protocol Violation,
             source: "{scanner}", within: 15s}

``expect_none: true`` turns the case around: none of the ``expect`` matchers may match
(with an empty ``expect``, no alert from the scanner at all). Targets and addresses may use
the placeholders ``{scanner}``, ``{gateway}``, ``{iot_subnet}``, ``{device:NAME}`` (or
``{device:N}``, the lab's Nth device) and ``{wan:N}``, resolved from the playbook when the
case runs.

Why a model in core: ranges, types and placeholder rules are checked when the file is
loaded, so a bad file fails with file, key and line (exit 2) before anything is sent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from labctl.core.assets import asset_path
from labctl.core.errors import ConfigError, UsageError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate

Engine = Literal["Protocol Violation", "Policy Violation", "Malware", "Anomaly", "Operational"]
Severity = Literal["Warning", "Minor", "Major", "Critical"]
Recipe = Literal["tcp-connect", "port-zero", "arp-sweep", "icmp-burst", "syn-sweep",
                 "address-sweep", "new-mac", "udp-canary"]

PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDER_OK = re.compile(r"^(scanner|gateway|iot_subnet|device:[A-Za-z0-9._-]{1,64}|"
                             r"wan:[0-9]{1,2})$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, *, what: str = "duration", lo: float = 0.0,
                   hi: float = 86400.0) -> float:
    """``"30s"``, ``"2m"``, ``"1.5h"``, ``"250ms"`` or a number of seconds -> seconds.

    ASCII digits only; the result must lie in ``(lo, hi]``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration such as 30s or 2m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        m = _DURATION_RE.match(text) if text.isascii() else None
        if m is None:
            raise ValueError(f"{what} must be a duration such as 30s, 2m or 250ms, "
                             f"got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not lo < seconds <= hi:
        raise ValueError(f"{what} {value!r} is outside ({lo:g} s, {hi:g} s]")
    return seconds


def _duration(v: Any) -> float:
    return parse_duration(v, what="within")


Duration = Annotated[float, BeforeValidator(_duration)]


def _template(v: Any) -> Any:
    """A string that may hold placeholders; only the known ones are allowed."""
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("control characters are not allowed")
    for name in PLACEHOLDER_RE.findall(v):
        if not _PLACEHOLDER_OK.match(name):
            raise ValueError(f"unknown placeholder {{{name}}} (use {{scanner}}, {{gateway}}, "
                             "{iot_subnet}, {device:NAME} or {wan:N})")
    stray = PLACEHOLDER_RE.sub("", v)
    if "{" in stray or "}" in stray:
        raise ValueError(f"unbalanced braces in {v!r}")
    return v


Template = Annotated[str, BeforeValidator(_template)]


class ScanStimulus(Model):
    """Run a scan profile through labctl's scanner (and its scope guard)."""

    profile: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    targets: list[Template] = Field(min_length=1, max_length=16)


class Stimulus(Model):
    """Exactly one of ``scan`` or ``recipe`` (with that recipe's parameters)."""

    scan: ScanStimulus | None = None
    recipe: Recipe | None = None
    host: Template | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    ports: int | None = Field(default=None, ge=1, le=1024)
    count: int | None = Field(default=None, ge=1, le=1000)
    targets: list[Template] | None = Field(default=None, min_length=1, max_length=16)
    rate: float | None = Field(default=None, gt=0, le=10000)
    #: new-mac only: the unused lab address the new device appears with
    source_ip: Template | None = None

    @model_validator(mode="after")
    def _one(self) -> Stimulus:
        if (self.scan is None) == (self.recipe is None):
            raise ValueError("a stimulus is either scan: {profile, targets} or recipe: NAME")
        if self.scan is not None:
            extra = [k for k in ("host", "port", "ports", "count", "targets", "rate",
                                 "source_ip") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} belong to a recipe, not to a scan")
            return self
        need: dict[str, tuple[str, ...]] = {
            "tcp-connect": ("host", "port"), "port-zero": ("host",),
            "syn-sweep": ("host", "ports"), "address-sweep": ("targets",),
            "arp-sweep": ("targets",), "icmp-burst": ("host",),
            "new-mac": ("host", "source_ip"),
            "udp-canary": ("host",),
        }
        missing = [k for k in need[str(self.recipe)] if getattr(self, k) is None]
        if missing:
            raise ValueError(f"recipe {self.recipe} needs {', '.join(missing)}")
        if self.source_ip is not None and self.recipe != "new-mac":
            raise ValueError("source_ip belongs to the new-mac recipe only")
        return self


class AlertMatch(Model):
    """One check: alerts that match every given field; at least ``min_count`` of them."""

    title: str | None = Field(default=None, min_length=1, max_length=200)
    engine: Engine | None = None
    severity: Severity | None = None
    source: Template | None = None
    destination: Template | None = None
    min_count: int = Field(default=1, ge=1, le=1000)
    within: Duration = 15.0


class Case(Model):
    id: str = Field(pattern=_ID_RE.pattern)
    description: str = Field(default="", max_length=500)
    #: what the alert reference says about this case, with the source
    reference: str = Field(default="", max_length=2000)
    stimulus: Stimulus
    expect: list[AlertMatch] = Field(default_factory=list, max_length=16)
    expect_none: bool = False
    #: a detection key of sensor/engines.yaml (e.g. arp_scan)
    requires: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,64}$")
    #: how long a negative case watches (default: the longest ``within``, else 10 s)
    within: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> Case:
        if not self.expect and not self.expect_none:
            raise ValueError("a case needs expect: [...] (or expect_none: true)")
        return self

    @property
    def deadline(self) -> float:
        """Seconds after the stimulus ends that this case waits for its alerts."""
        if self.within is not None:
            return self.within
        return max((m.within for m in self.expect), default=10.0)


class ExpectationsFile(Model):
    cases: list[Case] = Field(min_length=1, max_length=200)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def expectations_path(name_or_path: str) -> Path:
    """A shipped set by name (``nmap-default``) or a file by path (ends in .yaml/.yml)."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return Path(name_or_path)
    if not _NAME_RE.match(name_or_path):
        raise UsageError(f"expectations name {name_or_path!r} is not a plain name",
                         hint="give a shipped name such as nmap-default, or a path to a "
                              ".yaml file")
    return asset_path("sensor", "expectations", f"{name_or_path}.yaml")


def load_expectations(name_or_path: str) -> ExpectationsFile:
    """Load and validate an expectation file; errors name file, key and line (exit 2)."""
    path = expectations_path(name_or_path)
    if not path.is_file():
        raise UsageError(f"no such expectations file: {path}",
                         hint="shipped sets are in sensor/expectations/; or give a path")
    doc = load_yaml(str(path))
    if doc.data is None:
        raise ConfigError("the file is empty", file=str(path))
    exp = validate(ExpectationsFile, doc)
    seen: dict[str, int] = {}
    for i, c in enumerate(exp.cases):
        if c.id in seen:
            raise ConfigError(f"duplicate case id {c.id!r} (also cases[{seen[c.id]}])",
                              file=str(path), key=f"cases[{i}].id",
                              line=doc.line_of(("cases", i, "id")))
        seen[c.id] = i
    return exp
