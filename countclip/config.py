"""Typed configuration: dataclasses with a docstring per field, YAML in and out, CLI overrides.

Every job's config is a dataclass tree built from ``ConfigBase``. YAML only serialises it: loading
checks every key against the dataclass, coerces scalars to the declared type, and fails with a message
that names the dotted field, what was given and what was expected. Field-level rules live in each
class's ``__post_init__`` and raise ``ConfigError`` saying how to fix the value.

    cfg = ExperimentConfig.load("configs/experiment.yaml", ["finetune.steps=100", "seed=3"])
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import reprlib
import textwrap
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T", bound="ConfigBase")


MAX_MESSAGE = 500
"""Longest error message a config check gives (the field comes first, so the start names the problem)."""
MAX_VALUES = 100_000
"""Most values (scalars, lists, mappings) a config may expand to: far above any real config, far below
what a few hundred bytes of YAML anchors and aliases expand to (an "alias bomb": 9 aliases of 9 aliases
of ... reach billions of values)."""

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def excerpt(value: Any, limit: int = 80) -> str:
    """A repr of ``value`` for messages: at most ``limit`` characters however large or deeply nested
    the value is (its cost is bounded too: reprlib never walks past a few levels and items), with
    control characters escaped as repr escapes them."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str, limit: int = 200) -> str:
    """``text`` for a one-line message: whitespace runs as one space, other control characters
    escaped (a terminal never sees them raw), at most ``limit`` characters."""
    text = " ".join(str(text).split())
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConfigError(ValueError):
    """A configuration value is missing, unknown, ill-typed or out of range."""

    def __init__(self, message: str):
        message = str(message)
        super().__init__(message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "...")


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (for ``__post_init__`` checks)."""
    if not condition:
        raise ConfigError(message)


class ConfigBase:
    """Mixin for config dataclasses: dict/YAML conversion with strict validation."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where or cls.__name__}: unknown field(s) {excerpt(unknown, 200)}; valid fields are {sorted(fields)}"
            )
        hints = get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            # A nested section given in part keeps the defaults of its parent's default_factory
            # (an experiment's pretrain stage differs from a plain TrainConfig).
            factory = fields[name].default_factory
            if isinstance(value, dict) and factory is not dataclasses.MISSING:
                default = factory()
                if isinstance(default, ConfigBase):
                    value = _merge(default.to_dict(), value)
            kwargs[name] = _coerce(value, hints[name], _join(where, name))
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
        """Read ``path`` (YAML; None for defaults), apply ``key.sub=value`` overrides, validate."""
        data: dict[str, Any] = {}
        if path is not None:
            data = _read_yaml_file(Path(path))
        for item in overrides or []:
            apply_override(data, item)
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


MAX_CONFIG_BYTES = 1 << 20
"""Largest config file read (real ones are a few KB)."""


def _read_yaml_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file, with one-line errors for everything else."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    with path.open("rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        data = _safe_load(raw.decode("utf-8"), f"config file {path}") or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _safe_load(text: str, what: str) -> Any:
    """yaml.safe_load (no object tags), bounded: deep nesting and alias bombs are refused."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to be a config") from None
    # safe_load builds an alias once and shares it, so loading is cheap; anything walking the value
    # (type checks, messages) would pay for every repetition. Count what it expands to, up to a cap.
    stack, seen = [value], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"{what} expands to more than {MAX_VALUES:,} values (YAML aliases repeated "
                              "within aliases?); a config holds far fewer")
        if isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, (list, tuple)):
            stack += node
    return value


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as a YAML scalar or list."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {excerpt(item)} must look like field.subfield=value")
    try:
        value = _safe_load(raw, f"override {excerpt(item)}") if raw.strip() else ""
    except ConfigError as exc:
        if "not valid YAML" not in str(exc):
            raise
        value = raw  # not YAML: the text itself (e.g. a caption template holding ": ")
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {excerpt(item)}: {excerpt(part)} is not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type hint, converting YAML scalars where that is lossless."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {excerpt(value)} matches none of {hint}")
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {excerpt(value)} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {excerpt(value)}")
        args = get_args(hint)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {excerpt(value)}")
        key_t, val_t = get_args(hint) or (Any, Any)
        return {
            _coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in value.items()
        }
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and issubclass(hint, ConfigBase):
        return hint.from_dict(value, where)
    return _coerce_scalar(value, hint, where)


def _coerce_scalar(value: Any, hint: Any, where: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {excerpt(value)}")
    if hint is int:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            number = int(value)
        if number is None:
            raise ConfigError(f"{where}: expected an integer, got {excerpt(value)}")
        if not -(2**63) <= number < 2**63:  # numpy, sockets and file reads take 64-bit integers
            raise ConfigError(f"{where}: {excerpt(number)} is out of range (64-bit integers only)")
        return number
    if hint is float:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if isinstance(value, str):
            try:
                number = float(value)  # YAML reads "1e-3" as a string
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {excerpt(value)}")
        if not math.isfinite(number):  # .inf passes every >= check and breaks arithmetic much later
            raise ConfigError(f"{where}: expected a finite number, got {excerpt(value)}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {excerpt(value)}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {excerpt(value)}")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of its dataclass bases), by name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. a frozen app): no comments
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def commented_yaml(cfg: ConfigBase) -> str:
    """``cfg`` as YAML, each field preceded by its docstring as a comment; loads back to ``cfg``."""
    return "\n".join(_commented_lines(cfg, 0)) + "\n"


def _commented_lines(cfg: ConfigBase, depth: int) -> list[str]:
    pad, lines = "  " * depth, []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        lines += [f"{pad}# {line}".rstrip() for line in docs.get(f.name, "").splitlines()]
        if isinstance(value, ConfigBase):
            lines.append(f"{pad}{f.name}:")
            lines += _commented_lines(value, depth + 1)
        else:
            lines.append(f"{pad}{f.name}: {_flow(_plain(value))}")
    return lines


def _flow(value: Any) -> str:
    """One YAML value on one line ("[0.9, 0.98]", "null", "'a: b'")."""
    return yaml.safe_dump([value], default_flow_style=True, width=2**31).strip()[1:-1]


__all__ = ["ConfigBase", "ConfigError", "apply_override", "commented_yaml", "excerpt", "field_docs", "one_line", "require"]
