"""Secrets: referenced in playbooks, resolved from the environment or a prompt, never printed.

A resolved secret is a :class:`Secret`. Its ``str``/``repr`` are a mask; the value is only
reachable through :meth:`Secret.reveal`. Every revealed value is registered with the
process-wide :data:`REDACTOR`, which log handlers and renderers use to scrub text.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from labctl.core.errors import UsageError

MASK = "********"


class Redactor:
    """Remembers secret values and replaces them in any text."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        # Very short values would scrub ordinary words; they are still never printed
        # directly because Secret masks itself.
        if value and len(value) >= 3:
            with self._lock:
                self._values.add(value)

    def scrub(self, text: str) -> str:
        if not self._values:
            return text
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for v in values:
            if v in text:
                text = text.replace(v, MASK)
        return text

    def scrub_obj(self, obj: Any) -> Any:
        if isinstance(obj, Secret):
            return MASK
        if isinstance(obj, str):
            return self.scrub(obj)
        if isinstance(obj, dict):
            return {k: self.scrub_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.scrub_obj(v) for v in obj)
        return obj

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


REDACTOR = Redactor()


class Secret:
    """A secret value that masks itself everywhere except :meth:`reveal`."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "") -> None:
        self._value = value
        self.source = source
        REDACTOR.add(value)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK}{', ' + self.source if self.source else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:  # never pickle a secret into a file by accident
        raise TypeError("Secret values cannot be pickled")


PromptFn = Callable[[str], str]


def resolve_secret(
    env: str | None,
    *,
    prompt: bool = False,
    label: str = "secret",
    prompt_fn: PromptFn | None = None,
    environ: Mapping[str, str] | None = None,
) -> Secret:
    """Resolve a secret reference: environment variable first, then an interactive prompt."""
    env_map: Mapping[str, str] = os.environ if environ is None else environ
    if env and env_map.get(env):
        return Secret(env_map[env], source=f"env:{env}")
    if prompt and prompt_fn is not None:
        value = prompt_fn(label)
        if value:
            return Secret(value, source="prompt")
    hint = f"export {env}=... before running labctl" if env else "run labctl interactively"
    if env and prompt:
        hint += ", or run it interactively to be prompted"
    raise UsageError(f"{label} is not set", hint=hint)


class RedactingFilter(logging.Filter):
    """Scrubs registered secret values from every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - malformed record; let logging report it
            return True
        record.msg = REDACTOR.scrub(msg)
        record.args = None
        return True
