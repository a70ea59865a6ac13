"""The twin's operations: typed, frozen, each knowing how to show itself and how to run.

A plan step of the netns provider holds a list of these in ``params["ops"]``. ``render()``
is the line shown in a plan (shell-quoted, or a ``# labctl: ...`` comment for the few
operations that are not one program); ``run(ctx)`` performs it; ``to_dict()`` is its plain
data form, which is what a plan serialises to (``Step.to_dict``).

:class:`Run` runs a program without a shell (optionally inside a namespace, with stdin);
the others are the lab's ownership marker (:class:`Mark`, :class:`Forget`), sysctls, the
resolver file, supervised processes (:class:`Spawn`, :class:`Stop`) and :class:`KillNetns`
(every process left in a namespace).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labctl.netns import supervisor
from labctl.netns.topology_model import ETC_NETNS
from labctl.transport import proc

MARKER = "twin-owner.json"  # the lab's ownership marker, in its state directory


@dataclass
class OpContext:
    """What running an operation may touch: the lab's state directory, the playbook's path
    (recorded in the marker), the environment of a child process by name, and the list of
    processes started so far (``up`` waits until they listen)."""

    state_dir: Path
    playbook_path: Path
    child_env: Callable[[str], dict[str, str]]
    started: list[Spawn] = field(default_factory=list)


class Op(Protocol):
    def render(self) -> str: ...

    def run(self, ctx: OpContext) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Run:
    """A program (no shell), optionally inside ``netns``, with ``input`` on stdin."""

    argv: tuple[str, ...]
    netns: str | None = None
    input: str | None = None

    def render(self) -> str:
        argv = list(self.argv)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        line = shlex.join(argv)
        if self.input:
            line += " <<'EOF'\n" + self.input.rstrip("\n") + "\nEOF"
        return line

    def run(self, ctx: OpContext) -> None:
        proc.run(list(self.argv), netns=self.netns, input=self.input)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"argv": list(self.argv)}
        if self.netns is not None:
            d["netns"] = self.netns
        if self.input is not None:
            d["input"] = self.input
        return d


def ip(ns: str, *args: str) -> Run:
    """``ip -n <ns> ...``"""
    return Run(("ip", "-n", ns, *args))


@dataclass(frozen=True)
class Sysctl:
    netns: str
    key: str
    value: str

    def render(self) -> str:
        return shlex.join(["ip", "netns", "exec", self.netns, "sysctl", "-qw",
                           f"{self.key}={self.value}"])

    def run(self, ctx: OpContext) -> None:
        from labctl.transport.netns import netns_context

        path = "/proc/sys/" + self.key.replace(".", "/")
        with netns_context(self.netns):
            if os.path.exists(path):
                with open(path, "w", encoding="ascii") as fh:
                    fh.write(str(self.value))

    def to_dict(self) -> dict[str, Any]:
        return {"op": "sysctl", "netns": self.netns, "key": self.key, "value": self.value}


@dataclass(frozen=True)
class Spawn:
    """Start a supervised process; ``ready`` is the (address, port) it will listen on."""

    name: str
    netns: str
    argv: tuple[str, ...]
    ready: tuple[str, int] | None = None

    def render(self) -> str:
        return (f"# labctl: start supervised process {self.name} in {self.netns}: "
                + shlex.join(self.argv))

    def run(self, ctx: OpContext) -> None:
        supervisor.spawn(ctx.state_dir, self.name, self.netns, list(self.argv),
                         env=ctx.child_env(self.name))
        ctx.started.append(self)

    def to_dict(self) -> dict[str, Any]:
        return {"op": "spawn", "name": self.name, "netns": self.netns, "argv": list(self.argv),
                "ready": list(self.ready) if self.ready else None}


@dataclass(frozen=True)
class Stop:
    name: str

    def render(self) -> str:
        return f"# labctl: stop supervised process {self.name}"

    def run(self, ctx: OpContext) -> None:
        supervisor.stop(ctx.state_dir, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"op": "stop", "name": self.name}


@dataclass(frozen=True)
class KillNetns:
    netns: str

    def render(self) -> str:
        return f"# labctl: kill every process in namespace {self.netns}"

    def run(self, ctx: OpContext) -> None:
        supervisor.kill_netns(self.netns)

    def to_dict(self) -> dict[str, Any]:
        return {"op": "kill-netns", "netns": self.netns}


@dataclass(frozen=True)
class Resolv:
    """Write the namespace's resolv.conf (``ip netns exec`` bind-mounts it)."""

    netns: str
    lab: str
    text: str

    def render(self) -> str:
        servers = [ln.split()[1] for ln in self.text.splitlines()
                   if ln.startswith("nameserver ")]
        return (f"# labctl: write {ETC_NETNS}/{self.netns}/resolv.conf "
                f"(nameserver {', '.join(servers)}: DNS stays inside the lab)")

    def run(self, ctx: OpContext) -> None:
        d = Path(ETC_NETNS) / self.netns
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(self.text, encoding="utf-8")

    def to_dict(self) -> dict[str, Any]:
        return {"op": "resolv", "netns": self.netns, "lab": self.lab, "text": self.text}


@dataclass(frozen=True)
class Unresolv:
    """Remove the resolv.conf the twin wrote (only its own), and the folder if empty."""

    netns: str

    def render(self) -> str:
        folder = f"{ETC_NETNS}/{self.netns}"
        return (shlex.join(["rm", "-f", f"{folder}/resolv.conf"]) + " && "
                + shlex.join(["rmdir", folder]))

    def run(self, ctx: OpContext) -> None:
        d = Path(ETC_NETNS) / self.netns
        conf = d / "resolv.conf"
        if conf.is_file() and conf.read_text(encoding="utf-8").startswith("# labctl twin"):
            conf.unlink()
            try:
                d.rmdir()
            except OSError:
                pass  # someone else put files there; leave them

    def to_dict(self) -> dict[str, Any]:
        return {"op": "unresolv", "netns": self.netns}


@dataclass(frozen=True)
class Mark:
    """Record (atomically) that this lab owns ``namespaces``."""

    lab: str
    namespaces: tuple[str, ...]

    def render(self) -> str:
        return (f"# labctl: record ownership of lab {self.lab} "
                f"({len(self.namespaces)} namespaces)")

    def run(self, ctx: OpContext) -> None:
        marker = {"lab": self.lab, "owner": "labctl", "provider": "netns",
                  "playbook": str(ctx.playbook_path.resolve()),
                  "namespaces": list(self.namespaces), "updated": time.time()}
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = ctx.state_dir / (MARKER + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2), encoding="utf-8")
        tmp.replace(ctx.state_dir / MARKER)

    def to_dict(self) -> dict[str, Any]:
        return {"op": "mark", "lab": self.lab, "namespaces": list(self.namespaces)}


@dataclass(frozen=True)
class Forget:
    """Stop every supervised process of the lab and remove its ownership marker."""

    lab: str

    def render(self) -> str:
        return f"# labctl: forget lab {self.lab} (ownership marker, pid files)"

    def run(self, ctx: OpContext) -> None:
        for p in supervisor.read_all(ctx.state_dir):
            supervisor.stop(ctx.state_dir, p)
        (ctx.state_dir / MARKER).unlink(missing_ok=True)

    def to_dict(self) -> dict[str, Any]:
        return {"op": "forget", "lab": self.lab}


def render(ops: list[Op]) -> str:
    """The display text of a step: one line (or here-document) per operation."""
    return "\n".join(op.render() for op in ops)
