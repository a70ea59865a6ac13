"""The shipped, sourced port list (``sensor/ports.yaml``): service names, cleartext
protocols and named flags such as ``irc-like``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from labctl.core.errors import ConfigError


@dataclass(frozen=True)
class PortInfo:
    port: int
    service: str
    proto: str  # tcp, udp or both
    cleartext: bool
    flag: str | None
    source: str

    def applies(self, proto: int) -> bool:
        return self.proto == "both" or (self.proto == "tcp") == (proto == 6)


def load_ports(path: Path) -> dict[int, PortInfo]:
    """Read a port list through labctl's YAML loader (no aliases, bounded size and depth);
    a wrong key or value is a ConfigError naming the file, the port and its line."""
    from labctl.core.yamlfile import load_yaml

    loaded = load_yaml(str(path))
    doc = loaded.data
    if not isinstance(doc, dict) or not isinstance(doc.get("ports"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'ports' key")
    out: dict[int, PortInfo] = {}
    for port, spec in doc["ports"].items():
        line = loaded.line_of(("ports", port))
        where = f"{path}:{line}: ports.{port}" if line else f"{path}: ports.{port}"
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"{where}: a port is a number 1-65535")
        if not isinstance(spec, dict) or not isinstance(spec.get("service"), str) \
                or not isinstance(spec.get("source"), str):
            raise ConfigError(f"{where}: needs 'service' and 'source' strings")
        unknown = set(spec) - {"service", "proto", "cleartext", "flag", "source"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        proto = spec.get("proto", "both")
        if proto not in ("tcp", "udp", "both"):
            raise ConfigError(f"{where}.proto: tcp, udp or both")
        clear = spec.get("cleartext", False)
        if not isinstance(clear, bool):
            raise ConfigError(f"{where}.cleartext: true or false")
        flag = spec.get("flag")
        if flag is not None and not isinstance(flag, str):
            raise ConfigError(f"{where}.flag: a name")
        out[port] = PortInfo(port, spec["service"], proto, clear, flag, spec["source"])
    return out


@functools.lru_cache(maxsize=1)
def default_ports() -> dict[int, PortInfo]:
    from labctl.core.assets import asset_path

    return load_ports(asset_path("sensor", "ports.yaml"))
