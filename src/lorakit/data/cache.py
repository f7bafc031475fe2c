"""On-disk cache of tokenised datasets, keyed by data bytes + tokenizer + template + every option that shapes tokens.

A second run with the same inputs loads the tokens and starts training at once; change any input and the key changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from lorakit.bundled import cache_root
from lorakit.config import DataConfig, to_dict
from lorakit.data.load import data_files, resolve_entries
from lorakit.files import atomic_dir, sha256_file, write_json

# Everything in DataConfig shapes the tokens except where the cache lives.
_KEY_FIELDS = tuple(name for name in to_dict(DataConfig()) if name not in ("dataset_dir", "cache_tokens"))


def datasets_cache_root() -> Path:
    return cache_root().parent / "datasets"


_FORMAT = 2  # raised whenever what is stored changes (2: TokenizeSummary.shared_system), so old entries are not read


def cache_key(config: DataConfig, tokenizer: Any, template_jinja: str, stage: str = "sft") -> str | None:
    """A hex key for these inputs, or None when a source is not a local file (a hub dataset: nothing to hash).

    `stage` is part of the key: the same file gives SFT examples or DPO pairs."""
    sources = [Path(entry.source) for entry in resolve_entries(config)]
    if not all(path.is_file() for path in sources):
        return None
    files = {str(path.resolve()): sha256_file(path) for path in data_files(config)}
    settings = {name: value for name, value in to_dict(config).items() if name in _KEY_FIELDS}
    settings.pop("paths")
    digest = hashlib.sha256()
    parts = [_FORMAT, files, settings, template_jinja, _tokenizer_fingerprint(tokenizer)]
    if stage != "sft":  # leaves the keys of SFT caches made before stages existed as they were
        parts.append(stage)
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((text + special + type(tokenizer).__name__).encode()).hexdigest()


def load_cached(key: str) -> tuple[dict[str, Dataset], dict[str, Any]] | None:
    """The cached splits and their saved summaries, or None on a miss."""
    folder = datasets_cache_root() / key
    if not (folder / "summary.json").is_file():
        return None
    splits = {path.name: load_from_disk(str(path)) for path in sorted(folder.iterdir()) if path.is_dir()}
    return splits, json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def store(key: str, splits: dict[str, Dataset], summary: dict[str, Any]) -> None:
    """Save the splits and summaries atomically: a crash leaves no half-written cache entry."""
    with atomic_dir(datasets_cache_root() / key) as tmp:
        for name, dataset in splits.items():
            dataset.save_to_disk(str(tmp / name))
        write_json(tmp / "summary.json", summary)
    os.utime(datasets_cache_root() / key)
