"""Load YAML data files with line numbers, and turn pydantic errors into ConfigErrors.

Every labctl data file (playbook, scan profile and baseline, sensor rules, engines and
expectations, persona, appliance sizes, emulator nvram) goes through :func:`load_yaml` so
that errors name the file, the key path and the line.

Limits, so that a hostile or broken file costs little: at most :data:`MAX_BYTES` bytes, no
anchors or aliases (``&a`` / ``*a``: an alias bomb of 9 levels of 10 aliases expands to a
billion nodes from a few hundred bytes, and labctl's files never need them), no merge keys,
and at most :data:`MAX_DEPTH` nested collections (PyYAML's composer recurses once per
level, so 10,000 nested brackets would otherwise end in a RecursionError).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from labctl.core.errors import ConfigError

Loc = tuple[str | int, ...]

#: the largest data file labctl reads (the shipped ones are under 20 KB)
MAX_BYTES = 1024 * 1024
#: the deepest nesting of mappings and sequences (the shipped files use fewer than 10)
MAX_DEPTH = 64


@dataclass
class YamlDoc:
    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), None)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _construct(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: str) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError("YAML merge keys (<<) are not supported", file=path,
                                  key=format_loc(loc), line=key_node.start_mark.line + 1)
            key = _construct(key_node, loc, {}, path)
            if not isinstance(key, (str, int)):
                raise ConfigError("mapping keys must be strings", file=path,
                                  key=format_loc(loc), line=key_node.start_mark.line + 1)
            if key in out:
                raise ConfigError(f"duplicate key {key!r}", file=path,
                                  key=format_loc(loc + (key,)), line=key_node.start_mark.line + 1)
            child = loc + (key,)
            lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, lines, path)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, loc + (i,), lines, path) for i, v in enumerate(node.value)]
    return _scalar(node)  # type: ignore[arg-type]


_SCALAR_LOADER = yaml.SafeLoader("")


def _scalar(node: yaml.ScalarNode) -> Any:
    return _SCALAR_LOADER.construct_object(node, deep=True)


class _LimitError(Exception):
    def __init__(self, msg: str, mark: Any) -> None:
        super().__init__(msg)
        self.line = mark.line + 1 if mark is not None else None


class _Loader(yaml.SafeLoader):
    """SafeLoader's composer without anchors or aliases, and with a depth limit."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise _LimitError("YAML aliases (*name) are not supported: write the value out",
                              event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _LimitError("YAML anchors (&name) are not supported: write the value out",
                              event.start_mark)
        nested = isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent))
        if nested:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _LimitError(f"YAML nested deeper than {MAX_DEPTH} levels",
                                  event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1


def _compose(text: str) -> Any:
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def parse_yaml(text: str, path: str = "<string>") -> YamlDoc:
    if len(text) > MAX_BYTES:
        raise ConfigError(f"file is larger than {MAX_BYTES} bytes", file=path)
    try:
        node = _compose(text)
    except _LimitError as e:
        raise ConfigError(str(e), file=path, line=e.line) from None
    except RecursionError:
        raise ConfigError(f"YAML nested too deeply (more than {MAX_DEPTH} levels)",
                          file=path) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"YAML syntax error: {e.problem or e}", file=path, line=line,
                          hint="check indentation and quoting near that line") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", file=path) from None
    if node is None:
        return YamlDoc(path, None, {})
    lines: dict[Loc, int] = {}
    try:
        data = _construct(node, (), lines, path)
    except RecursionError:
        raise ConfigError(f"YAML nested too deeply (more than {MAX_DEPTH} levels)",
                          file=path) from None
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        raise ConfigError(f"YAML error: {e.problem}", file=path,
                          line=mark.line + 1 if mark else None) from None
    return YamlDoc(path, data, lines)


def load_yaml(path: str | Path) -> YamlDoc:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ConfigError(f"file is larger than {MAX_BYTES} bytes (a labctl data file is "
                              "a few KB)", file=str(p))
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except UnicodeDecodeError:
        raise ConfigError("file is not UTF-8 text", file=str(p)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", file=str(p)) from None
    except OSError as e:
        raise ConfigError(f"cannot read file: {e.strerror}", file=str(p)) from None
    return parse_yaml(text, str(p))


M = TypeVar("M")


def validate(model: type[M], doc: YamlDoc, *, context: dict[str, Any] | None = None) -> M:
    """Validate ``doc.data`` with a pydantic model; the first error becomes a ConfigError."""
    from pydantic import ValidationError

    try:
        validated: M = model.model_validate(doc.data, context=context)  # type: ignore[attr-defined]
        return validated
    except ValidationError as e:
        raise config_error_from_validation(e, doc) from None


def config_error_from_validation(e: Any, doc: YamlDoc) -> ConfigError:
    errors = e.errors(include_url=False)
    first = errors[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # pydantic adds the tag of a discriminated union to the path; drop tags not in the doc
    clean: list[str | int] = []
    for part in loc:
        trial = tuple(clean) + (part,)
        if isinstance(part, str) and trial not in doc.lines and tuple(clean) in doc.lines and \
                first["type"] != "extra_forbidden" and first["type"] != "missing" and \
                part not in _keys_at(doc, tuple(clean)):
            continue
        clean.append(part)
    loc = tuple(clean)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, "):]
    more = len(errors) - 1
    hint = f"{more} more error(s) follow once this one is fixed" if more else None
    return ConfigError(msg, file=doc.path, key=format_loc(loc), line=doc.line_of(loc), hint=hint)


def _keys_at(doc: YamlDoc, loc: Loc) -> set[Any]:
    node: Any = doc.data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return set()
    return set(node.keys()) if isinstance(node, dict) else set()
