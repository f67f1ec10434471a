"""Build frozen dataclasses from ruamel.yaml nodes, with errors that name file, line and key.

One generic walker instead of hand-written checks per key: the dataclass field types are the
schema. Supported field types: str, int, float, bool, Path, Literal[...], X | None,
tuple[T, ...], dict[str, T] and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem located at file:line, naming the key."""

    def __init__(self, file: Path | str, line: int | None, key: str, message: str) -> None:
        self.file = str(file)
        self.line = line
        self.key = key
        self.message = message
        where = f"{self.file}:{line}" if line is not None else self.file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class Ctx:
    """Where we are in the document, for error messages and relative paths."""

    file: Path
    base_dir: Path
    key: str
    line: int | None

    def child(self, key: str | int, node: Any, parent: Any) -> Ctx:
        name = f"{self.key}[{key}]" if isinstance(key, int) else (f"{self.key}.{key}" if self.key else key)
        return Ctx(self.file, self.base_dir, name, _line_of(parent, key) or self.line)

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.file, self.line, self.key, message)


def _line_of(parent: Any, key: str | int) -> int | None:
    try:
        if isinstance(parent, CommentedMap):
            return int(parent.lc.key(key)[0]) + 1
        if isinstance(parent, CommentedSeq):
            return int(parent.lc.item(key)[0]) + 1
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return None


def load_yaml(path: Path) -> Any:
    """Parse a YAML file round-trip (keeps line numbers); syntax errors become ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, None, "", f"cannot read file: {e.strerror or e}") from e
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(path, line, "", f"YAML syntax error: {e.problem or e.context}") from e


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    if tp in names:
        return names[tp]
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (tuple, list):
        return "a list"
    if get_origin(tp) is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def build(tp: Any, node: Any, ctx: Ctx) -> Any:
    """Convert `node` to type `tp`, raising ConfigError with ctx's location on mismatch."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if node is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return build(arg, node, ctx)
            except ConfigError as e:
                errors.append(e)
        raise ctx.error(
            f"expected {' or '.join(_type_name(a) for a in args if a is not type(None))}, got {node!r}"
        )
    if origin is Literal:
        if node not in get_args(tp):
            raise ctx.error(f"expected {_type_name(tp)}, got {node!r}")
        return node
    if tp is bool:
        if not isinstance(node, bool):
            raise ctx.error(f"expected true or false, got {node!r}")
        return node
    if tp is int:
        if isinstance(node, bool) or not isinstance(node, int):
            raise ctx.error(f"expected an integer, got {node!r}")
        return int(node)
    if tp is float:
        if isinstance(node, bool) or not isinstance(node, int | float):
            raise ctx.error(f"expected a number, got {node!r}")
        return float(node)
    if tp is str:
        if isinstance(node, bool) or not isinstance(node, str | int | float):
            raise ctx.error(f"expected a string, got {node!r}")
        return str(node)
    if tp is Path:
        if not isinstance(node, str) or not node:
            raise ctx.error(f"expected a path, got {node!r}")
        p = Path(node).expanduser()
        return p if p.is_absolute() else (ctx.base_dir / p)
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(node, list):
            raise ctx.error(f"expected a list, got {node!r}")
        return tuple(build(item_tp, v, ctx.child(i, v, node)) for i, v in enumerate(node))
    if origin is dict:
        _k, val_tp = get_args(tp)
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise ctx.error(f"expected a mapping, got {node!r}")
        return {str(k): build(val_tp, v, ctx.child(str(k), v, node)) for k, v in node.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_dataclass(tp, node, ctx)
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in the schema, not the file


def build_dataclass(cls: type[T], node: Any, ctx: Ctx, extra: dict[str, Any] | None = None) -> T:
    """Build dataclass `cls` from a mapping; unknown keys and missing required keys are errors."""
    if node is None:
        node = CommentedMap()
    if not isinstance(node, dict):
        raise ctx.error(f"expected a mapping, got {node!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    values: dict[str, Any] = dict(extra or {})
    for key, value in node.items():
        key = str(key)
        sub = ctx.child(key, value, node)
        if key not in fields or key in values:
            known = ", ".join(sorted(k for k in fields if k not in (extra or {})))
            raise sub.error(f"unknown key (known keys here: {known})")
        values[key] = build(hints[key], value, sub)
    for name, f in fields.items():
        if (
            name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ctx.error(f"missing required key '{name}'")
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        problem = check()
        if problem:
            key, message = problem
            line = _line_of(node, key) if key in node else ctx.line
            raise ConfigError(ctx.file, line, f"{ctx.key}.{key}" if ctx.key else key, message)
    return obj
