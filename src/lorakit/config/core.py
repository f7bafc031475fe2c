"""The machinery behind every config: build a frozen dataclass from nested YAML data, coerce values to the fields'
types, and say which key is wrong and what it may have meant. The configs themselves live in train.py,
evaluate.py and inference.py; load.py reads them from YAML and `key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from lorakit.errors import ConfigError

T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Fields holding a free mapping (not a section): an override `data.columns.prompt=q` sets one entry of it.
MAPPING_KEYS = ("data.columns", "data.replace", "columns", "replace")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """ConfigError naming `key` when `value` is not one of `choices`, suggesting the closest."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got '{value}'.{hint}")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Config key '{dotted}' conflicts with '{part}', which is a value, not a section.")
        node = child
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for key, sub in value.items():
            set_dotted(node[leaf], key, sub)
    else:
        node[leaf] = value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn a YAML or command-line value into the field's type, or say which key and type were expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, options[0], key)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(item):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"Config key '{key}' must be a list of sections, got {value!r}.")
            # A section may also be written as one string its class parses (an adapter as NAME=PATH).
            return tuple(item.from_text(entry) if isinstance(entry, str) and hasattr(item, "from_text")
                         else build(item, entry or {}, f"{key}[{index}].") for index, entry in enumerate(value))
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item, key) for v in items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key '{key}' must be a mapping (e.g. {{a: b}}), got {value!r}.")
        return {str(k): str(v) for k, v in value.items()}
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is Path:
            return Path(str(value)).expanduser()
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"Config key '{key}' must be {hint.__name__}, got {value!r}.") from None
    return value


def build(cls: type[T], raw: Mapping[str, Any], prefix: str = "", suggest: Sequence[str] = ()) -> T:
    """`cls` from nested data: unknown keys suggest the closest field (or one of `suggest`), missing required
    keys are named, nested sections recurse, values are coerced to the fields' types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"Config section '{prefix.rstrip('.')}' must be a mapping of keys, got {raw!r}.")
    hints = get_type_hints(cls)
    unknown = sorted(raw.keys() - hints.keys())
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(key, [*hints, *suggest], n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Known keys: {', '.join(hints)}."
            lines.append(f"Unknown config key '{prefix}{key}'.{hint}")
        raise ConfigError(" ".join(lines))
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"Config key{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(repr(prefix + name) for name in missing)} must be set.")
    values = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = build(hint, value or {}, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, hint, f"{prefix}{key}")
    return cls(**values)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["lora.rank=16", "dataset=a,b"]` -> a nested dict; values are read as YAML scalars (16 -> int)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override '{pair}' is not of the form key=value (e.g. lora.rank=16).")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        set_dotted(tree, key.strip(), value)
    return tree


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file."""
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(raw).__name__}.")
    return raw




def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested override data as dotted keys, free mappings (data.columns) kept whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix + key not in MAPPING_KEYS:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain YAML-ready data: Paths become strings, tuples lists."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(config)


def save_config(config: Any, path: Path) -> None:
    """Write the resolved config as YAML, atomically, so `lorakit train path` repeats the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
