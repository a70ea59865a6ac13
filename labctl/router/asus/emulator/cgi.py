"""How ASUSWRT's httpd reads request fields: one form parser and json-c's lenient JSON.

Why not :func:`urllib.parse.parse_qs`: the firmware does it differently, and clients rely
on the difference. asuswrt-merlin.ng ``release/src/router/httpd/cgi.c``:

* ``init_cgi`` splits the query on ``&`` **and** ``;`` (``strsep(&q, "&;")``), then calls
  ``unescape`` on each assignment *as a whole* (``%XX`` decoded, ``+`` becomes a space),
  and only then splits name from value on the first ``=`` (``strsep(&value, "=")``). So
  ``login_authorization%3DYWRtaW46YWRtaW4%3D`` is the field ``login_authorization`` with the
  value ``YWRtaW46YWRtaW4=``, and an assignment without any ``=`` is dropped.
* ``set_cgi`` finds an existing name and replaces its value: the last assignment wins.

The query string and the POST body both go through this one parser; the handlers read
fields from both (``get_cgi``/``websGetVar`` look in one table), the body last.

``applyapp.cgi`` bodies are JSON first: json-c's ``json_tokener_parse`` (non-strict mode)
also accepts single-quoted strings; a body that is not such JSON goes to the form path.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JsonError", "form_fields", "lenient_json", "merged_fields", "unescape"]

_HEX = "0123456789abcdefABCDEF"


def unescape(raw: bytes) -> str:
    """cgi.c ``unescape``: ``%XX`` to its byte and ``+`` to a space, in one pass.

    A ``%`` not followed by two hex digits stays as it is (the firmware's ``sscanf`` would
    read garbage there; keeping it is the harmless reading of the same input)."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25 and i + 2 < n and chr(raw[i + 1]) in _HEX and chr(raw[i + 2]) in _HEX:
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B else c)
        i += 1
    return out.decode("utf-8", "replace")


def form_fields(raw: bytes | str, into: dict[str, str] | None = None) -> dict[str, str]:
    """cgi.c ``init_cgi``: split on ``&`` and ``;``, unescape each assignment whole, split
    on the first ``=``; assignments without ``=`` are dropped, the last one of a name wins."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    fields: dict[str, str] = {} if into is None else into
    for part in data.replace(b";", b"&").split(b"&"):
        if not part:
            continue
        text = unescape(part)
        name, eq, value = text.partition("=")
        if eq:
            fields[name] = value
    return fields


def merged_fields(query: str, body: bytes) -> dict[str, str]:
    """The fields a handler sees: the query string's, then the body's on top."""
    return form_fields(body, form_fields(query))


class JsonError(ValueError):
    """Not JSON as json-c reads it."""


class _Reader:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self, ch: str) -> None:
        if self.peek() != ch:
            raise JsonError(f"expected {ch!r} at {self.i}")
        self.i += 1

    def value(self, depth: int = 0) -> Any:
        if depth > 64:
            raise JsonError("nested too deeply")
        c = self.peek()
        if c == "{":
            return self.obj(depth)
        if c == "[":
            return self.arr(depth)
        if c in ("'", '"'):
            return self.string()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return val
        return self.number()

    def obj(self, depth: int) -> dict[str, Any]:
        self.take("{")
        out: dict[str, Any] = {}
        if self.peek() == "}":
            self.i += 1
            return out
        while True:
            if self.peek() not in ("'", '"'):
                raise JsonError(f"expected a key at {self.i}")
            key = self.string()
            self.take(":")
            out[key] = self.value(depth + 1)
            if self.peek() == ",":
                self.i += 1
                continue
            self.take("}")
            return out

    def arr(self, depth: int) -> list[Any]:
        self.take("[")
        out: list[Any] = []
        if self.peek() == "]":
            self.i += 1
            return out
        while True:
            out.append(self.value(depth + 1))
            if self.peek() == ",":
                self.i += 1
                continue
            self.take("]")
            return out

    def string(self) -> str:
        quote = self.s[self.i]
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            self.i += 1
            if c == quote:
                return "".join(out)
            if c == "\\":
                if self.i >= len(self.s):
                    break
                e = self.s[self.i]
                self.i += 1
                simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f",
                          "/": "/", "\\": "\\", '"': '"', "'": "'"}
                if e in simple:
                    out.append(simple[e])
                elif e == "u" and self.i + 4 <= len(self.s):
                    try:
                        out.append(chr(int(self.s[self.i:self.i + 4], 16)))
                    except ValueError:
                        raise JsonError("bad \\u escape") from None
                    self.i += 4
                else:
                    raise JsonError(f"bad escape \\{e}")
                continue
            out.append(c)
        raise JsonError("unterminated string")

    def number(self) -> int | float:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in "+-0123456789.eE":
            self.i += 1
        text = self.s[start:self.i]
        try:
            return int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            raise JsonError(f"unexpected {self.s[start:start + 1]!r} at {start}") from None


def lenient_json(text: str) -> Any:
    """Parse ``text`` as json-c does outside strict mode: standard JSON, plus strings in
    single quotes. Raises :class:`JsonError` otherwise (trailing text included)."""
    r = _Reader(text)
    if not r.peek():
        raise JsonError("empty")
    value = r.value()
    if r.peek():
        raise JsonError(f"trailing text at {r.i}")
    return value
