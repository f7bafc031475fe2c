"""Load, validate, mix and split datasets into canonical conversations, before any model is loaded."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation, Tags, detect_format, to_conversation
from lorakit.data.read import Record, read_records
from lorakit.data.registry import DatasetEntry, lookup
from lorakit.errors import DataError


@dataclass
class LoadSummary:
    """What happened to every record read: nothing is dropped without being counted here."""

    read: int = 0
    skipped: int = 0
    used: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Splits:
    train: list[Conversation]
    validation: list[Conversation]


def resolve_entries(config: DataConfig) -> list[DatasetEntry]:
    """Each name in `data.paths` as a dataset entry: a file, a registry name, a saved folder or a hub id."""
    if not config.paths:
        raise DataError("No dataset given: set data.paths (or LLaMA-Factory's `dataset`) to a file, a name in "
                        "dataset_info.json, or a hub id.")
    entries = []
    for name in config.paths:
        entry = _resolve(name, config)
        entries.append(replace(entry, format=config.format if config.format != "auto" else entry.format,
                               columns={**entry.columns, **config.columns}))
    return entries


def _resolve(name: str, config: DataConfig) -> DatasetEntry:
    if config.dataset_dir is not None:
        candidate = config.dataset_dir / name
        if candidate.exists():
            return DatasetEntry(name, str(candidate))
        entry = lookup(name, config.dataset_dir)
        if entry is not None:
            return entry
    return DatasetEntry(name, name)


def load_conversations(config: DataConfig) -> tuple[list[Conversation], LoadSummary]:
    """Read every dataset in `config.paths`, convert and validate each record, then mix by `mix_ratios`.

    Raises DataError on the first bad record unless `config.skip_bad` (then the record is counted as skipped).
    """
    summary = LoadSummary()
    per_dataset = []
    for entry in resolve_entries(config):
        conversations = _load_entry(entry, config, summary)
        if not conversations:
            raise DataError(_no_usable_records(entry, summary))
        per_dataset.append(conversations)
        summary.per_source[entry.name] = len(conversations)
    conversations = _combine(per_dataset, config)
    summary.used = len(conversations)
    return conversations, summary


def keep_records(conversations: list[Conversation], summary: LoadSummary, config: DataConfig,
                 fits: Callable[[Conversation], bool], problem: Callable[[Conversation], str]) -> list[Conversation]:
    """The records that `fits` a stage: any other raises DataError with its `problem` (naming file and line), or
    with `data.skip_bad` is skipped and counted in `summary`."""
    kept = []
    for conversation in conversations:
        if fits(conversation):
            kept.append(conversation)
            continue
        message = problem(conversation)
        if not config.skip_bad:
            raise DataError(message + " Fix the record, set data.skip_bad=true, or train it with stage: sft.")
        summary.problems.append(message)
        summary.skipped += 1
    return kept


def validate_conversations(config: DataConfig) -> tuple[list[Conversation], LoadSummary]:
    """Like `load_conversations`, but read every record of every dataset to the end, whatever `data.skip_bad` says.

    Never stops at a bad record: each one is listed in `summary.problems` (a full message naming file and line), and
    a dataset with no usable record is one more problem. The returned conversations are those training would use
    with `data.skip_bad` on; `mix_ratios` apply only when every dataset has records. Still raises DataError where
    nothing can be read at all (a missing file, an unsupported type, a .json file that is not JSON).
    """
    config = replace(config, skip_bad=True)
    summary = LoadSummary()
    per_dataset, empty = [], []
    for entry in resolve_entries(config):
        problems_before = len(summary.problems)
        conversations = _load_entry(entry, config, summary)
        summary.per_source[entry.name] = len(conversations)
        per_dataset.append(conversations)
        if not conversations:
            bad = len(summary.problems) - problems_before
            empty.append(f"{entry.source}: no usable records"
                         + (": every record in it is bad (listed above)." if bad else ": the file is empty."))
    summary.problems += empty  # after the loop: `skipped` counts records, not these
    usable = [conversations for conversations in per_dataset if conversations]
    conversations = _combine(usable, config if len(usable) == len(per_dataset) else replace(config, mix_ratios=()))
    summary.used = len(conversations)
    return conversations, summary


def _no_usable_records(entry: DatasetEntry, summary: LoadSummary) -> str:
    return (f"{entry.source}: no usable records ({summary.skipped} skipped). "
            + (summary.problems[-1] if summary.problems else "The file is empty."))


def _combine(per_dataset: list[list[Conversation]], config: DataConfig) -> list[Conversation]:
    """One list from the datasets' conversations: mixed by `mix_ratios`, then cut at `max_samples`."""
    if not per_dataset:
        return []
    conversations = _mix(per_dataset, config) if len(per_dataset) > 1 else per_dataset[0]
    if config.max_samples is not None:
        conversations = conversations[: config.max_samples]
    return conversations


def _load_entry(entry: DatasetEntry, config: DataConfig, summary: LoadSummary) -> list[Conversation]:
    return [conversation for _, _, conversation in read_entry(entry, config, summary)]


def read_entry(entry: DatasetEntry, config: DataConfig,
               summary: LoadSummary) -> Iterator[tuple[int, Record, Conversation]]:
    """Each usable record of one dataset as (its index among the records read, the raw record, its conversation).

    Bad records raise DataError, or with `config.skip_bad` are counted in `summary` and skipped (their index too).
    """
    fmt = None if entry.format == "auto" else entry.format
    problems_before, bad_records = len(summary.problems), 0
    for index, record in enumerate(read_records(entry.source, config.skip_bad, summary.problems)):
        summary.read += 1
        try:
            if fmt is None:
                try:
                    fmt = detect_format(record.fields, entry.columns)
                except DataError as err:
                    raise DataError(f"{record.origin}: {err}") from None
                summary.formats[entry.name] = fmt
            conversation = to_conversation(record.origin, record.fields, fmt, entry.columns, entry.tags,
                                           config.replace)
        except DataError as err:
            if not config.skip_bad:
                raise
            summary.problems.append(str(err))
            bad_records += 1
            continue
        yield index, record, conversation
    summary.read += len(summary.problems) - problems_before - bad_records  # unreadable lines never became records
    summary.skipped = len(summary.problems)
    if fmt is not None:
        summary.formats[entry.name] = fmt


def _mix(per_dataset: list[list[Conversation]], config: DataConfig) -> list[Conversation]:
    """Concatenate datasets, or sample them by `mix_ratios` (with repetition only where a set is too small)."""
    rng = random.Random(config.seed)
    if not config.mix_ratios:
        return [c for conversations in per_dataset for c in conversations]
    total = sum(len(c) for c in per_dataset)
    weight = sum(config.mix_ratios)
    mixed: list[Conversation] = []
    for conversations, ratio in zip(per_dataset, config.mix_ratios):
        wanted = round(total * ratio / weight)
        pool = list(conversations)
        while wanted > 0:
            rng.shuffle(pool)
            mixed.extend(pool[:wanted])
            wanted -= min(wanted, len(pool))
    rng.shuffle(mixed)
    return mixed


def split_validation(conversations: list[Conversation], val_size: float, seed: int) -> Splits:
    """Hold out `val_size` (a fraction below 1, else a count) of the records, reproducibly for `seed`."""
    if val_size <= 0:
        return Splits(conversations, [])
    count = round(len(conversations) * val_size) if val_size < 1 else int(val_size)
    if not 0 < count < len(conversations):
        raise DataError(f"data.val_size={val_size} holds out {count} of {len(conversations)} records; it must leave "
                        "at least one record on each side. Use a fraction such as 0.1 or a smaller count.")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return Splits([c for i, c in enumerate(conversations) if i not in held],
                  [c for i, c in enumerate(conversations) if i in held])


def data_files(config: DataConfig) -> list[Path]:
    """The local files behind `config.paths`, for hashing into the run manifest (none for data built in Python)."""
    if not config.paths:
        return []
    return [Path(entry.source) for entry in resolve_entries(config) if Path(entry.source).is_file()]


__all__ = ["LoadSummary", "Splits", "Tags", "data_files", "load_conversations", "read_entry", "resolve_entries",
           "split_validation", "validate_conversations"]
