"""What a scan should raise on the sensor (``sensor/expectations/<name>.yaml``).

Why a data file: verify-alerts (a real D4IoT sensor or the embedded one) matches alerts on
title + engine + source IP, and the expected titles/engines/severities come from Microsoft's
alert reference, not from code. Loaded through :mod:`labctl.core.yamlfile`, so a mistake
names file, key and line.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from labctl.core.assets import asset_path
from labctl.core.errors import ConfigError
from labctl.core.playbook.common import Model
from labctl.core.yamlfile import load_yaml, validate
from labctl.sensor.config import EngineName, Severity


class Expectation(Model):
    title: str = Field(min_length=1)
    engine: EngineName
    severity: Severity | None = None
    source: Literal["scanner", "any"] = "scanner"  # "scanner": the playbook's scanner.ip
    when: str = ""


class ExpectationsFile(Model):
    expectations: list[Expectation] = Field(min_length=1)


def load_expectations(name_or_path: str) -> list[Expectation]:
    """By name (``nmap-default``) from the shipped assets, or by path to a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        path = name_or_path
    else:
        path = str(asset_path("sensor", "expectations", f"{name_or_path}.yaml"))
    doc = load_yaml(path)
    if doc.data is None:
        raise ConfigError("the file is empty", file=path)
    return validate(ExpectationsFile, doc).expectations
