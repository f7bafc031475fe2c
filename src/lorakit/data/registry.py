"""LLaMA-Factory's `dataset_info.json` as a dataset registry: a dataset name -> its file, format and columns."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.data.formats import Tags
from lorakit.errors import DataError

REGISTRY_FILE = "dataset_info.json"

# LLaMA-Factory column names -> lorakit's canonical field names, per formatting.
_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                   "system": "system", "chosen": "chosen", "rejected": "rejected", "kto_tag": "label"}
_SHAREGPT_COLUMNS = {"messages": "messages", "system": "system", "tools": "tools", "chosen": "chosen",
                     "rejected": "rejected", "kto_tag": "label"}
_TAG_NAMES = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
              "system_tag": "system", "observation_tag": "observation", "function_tag": "function"}


@dataclass(frozen=True)
class DatasetEntry:
    """One resolved dataset: where to read it and how its records are spelled."""

    name: str
    source: str
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    tags: Tags = Tags()


def lookup(name: str, dataset_dir: Path) -> DatasetEntry | None:
    """The registry entry for `name` in `dataset_dir/dataset_info.json`, or None when there is no registry."""
    registry_path = dataset_dir / REGISTRY_FILE
    if not registry_path.is_file():
        return None
    registry = _read_registry(registry_path)
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"Dataset '{name}' is neither a file in {dataset_dir} nor an entry of {registry_path}.{hint}")
    return _to_entry(name, registry[name], dataset_dir, registry_path)


def _read_registry(path: Path) -> dict[str, dict]:
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}).") from None
    if not isinstance(registry, dict):
        raise DataError(f"{path}: expected an object mapping dataset names to entries.")
    return registry


def _to_entry(name: str, info: dict, dataset_dir: Path, registry_path: Path) -> DatasetEntry:
    where = f"{registry_path}, entry '{name}'"
    if "file_name" in info:
        source = str(dataset_dir / info["file_name"])
        if not Path(source).exists():
            raise DataError(f"{where}: file_name '{info['file_name']}' does not exist in {dataset_dir}.")
    elif "hf_hub_url" in info:
        source = info["hf_hub_url"] + (f":{info['split']}" if "split" in info else "")
    else:
        raise DataError(f"{where}: needs 'file_name' (a local file) or 'hf_hub_url'; lorakit does not read "
                        f"{', '.join(k for k in info if k.endswith('_url')) or 'this kind of entry'}.")
    formatting = info.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(f"{where}: formatting '{formatting}' is not alpaca or sharegpt.")
    raw_columns = info.get("columns", {})
    table = _ALPACA_COLUMNS if formatting == "alpaca" else _SHAREGPT_COLUMNS
    columns = {table[key]: value for key, value in raw_columns.items() if key in table}
    fmt = formatting
    if formatting == "alpaca" and set(raw_columns) == {"prompt"}:
        fmt, columns = "text", {"text": raw_columns["prompt"]}
    tags = Tags(**{_TAG_NAMES[key]: value for key, value in info.get("tags", {}).items() if key in _TAG_NAMES})
    return DatasetEntry(name, source, fmt, columns, tags)
