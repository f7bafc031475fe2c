"""Dataset tools: `dedupe`, `split`, `mix`, `sample` and `filter_records`, behind `lorakit data <tool>`.

Each reads its datasets as training does (any format, registry names, `data.skip_bad`), writes records that keep
their provenance (`_source`: the file they were first read from, `_index`: their place in it, from 0), and returns a
`ToolReport` of counts that is also written as JSON next to the output. Training reads the output as it is: the two
provenance fields are extra fields, which every format ignores.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig, DedupeConfig, FilterConfig, MixConfig, SampleConfig, SplitConfig
from lorakit.data.formats import Conversation
from lorakit.data.inspect import to_record
from lorakit.data.load import LoadSummary, read_entry, resolve_entries
from lorakit.errors import ConfigError, DataError
from lorakit.files import atomic_dir, write_json, write_text

SOURCE_FIELD, INDEX_FIELD = "_source", "_index"
# Views of a record that every format has, whatever its fields are called.
DERIVED_FIELDS = ("prompt", "response", "text")
SPLIT_PARTS = ("train", "validation", "test")


@dataclass(frozen=True)
class Item:
    """One record on its way through a tool: its raw fields (provenance added) and its validated conversation."""

    fields: dict[str, Any]
    conversation: Conversation
    dataset: str

    @property
    def source(self) -> str:
        return str(self.fields[SOURCE_FIELD])


@dataclass
class ToolReport:
    """What a tool did: records read, written and removed (by reason), per source; dedupe adds its clusters."""

    tool: str
    read: int = 0
    skipped: int = 0
    written: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    repeated: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    clusters: list[dict[str, Any]] = field(default_factory=list)


def load_items(data: DataConfig) -> tuple[list[list[Item]], LoadSummary]:
    """The usable records of each dataset in `data.paths`, with provenance; bad ones as `data.skip_bad` says."""
    summary = LoadSummary()
    per_dataset = []
    for entry in resolve_entries(data):
        items = []
        for index, record, conversation in read_entry(entry, data, summary):
            fields = dict(record.fields)
            fields.setdefault(SOURCE_FIELD, entry.source)
            fields.setdefault(INDEX_FIELD, index)
            items.append(Item(fields, conversation, entry.name))
        per_dataset.append(items)
    return per_dataset, summary


def field_text(item: Item, name: str) -> str:
    """A field as text: `prompt`, `response` and `text` are derived from the conversation, others read raw."""
    conversation = item.conversation
    if name in DERIVED_FIELDS:
        if conversation.text is not None:
            return conversation.text if name != "response" else ""
        roles = {"prompt": ("user",), "response": ("assistant",), "text": ("system", "user", "assistant", "tool")}
        return "\n".join(str(m.get("content") or "") for m in conversation.messages if m["role"] in roles[name])
    value = item.fields.get(name)
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def check_fields(items: Sequence[Item], names: Sequence[str], key: str) -> None:
    """ConfigError naming `key`, the field, and the fields the records do have, for a field no record has."""
    present = {name for item in items for name in item.fields}
    for name in names:
        if name not in DERIVED_FIELDS and name not in present:
            sources = sorted({item.source for item in items})
            found = ", ".join(sorted(present - {SOURCE_FIELD, INDEX_FIELD})) or "none"
            raise ConfigError(f"{key}: no record of {', '.join(sources) or 'the data'} has a field '{name}'. "
                              f"Fields found: {found}; and for every record: {', '.join(DERIVED_FIELDS)} (its "
                              "user turns, assistant turns, all of it).")


def write_items(items: Sequence[Item], path: Path, output_format: str) -> int:
    """Write the records to `path` (.jsonl or .json) as read (`keep`) or converted, provenance kept; the count."""
    records = [_output_record(item, output_format) for item in items]
    if path.suffix.lower() == ".jsonl":
        write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
    else:
        write_json(path, records)
    return len(records)


def _output_record(item: Item, output_format: str) -> dict[str, Any]:
    if output_format == "keep":
        return item.fields
    return {**to_record(item.conversation, output_format), SOURCE_FIELD: item.fields[SOURCE_FIELD],
            INDEX_FIELD: item.fields[INDEX_FIELD]}


def report_path(output: Path, tool: str) -> Path:
    """Where a tool's JSON report goes: inside a folder output, else `<stem>.<tool>.json` beside the file."""
    return output / f"{tool}.json" if not output.suffix else output.with_name(f"{output.stem}.{tool}.json")


def _refuse_existing(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise ConfigError(f"{output} already exists. Choose another output, or set force=true to replace it.")


def _start(tool: str, data: DataConfig, output: Path, force: bool,
           output_format: str) -> tuple[list[list[Item]], ToolReport]:
    _refuse_existing(output, force)
    per_dataset, summary = load_items(data)
    report = ToolReport(tool, read=summary.read, skipped=summary.skipped, problems=list(summary.problems))
    if not any(per_dataset):
        raise DataError(f"{', '.join(data.paths)}: no usable records ({summary.skipped} skipped).")
    formats = sorted(set(summary.formats.values()))
    if output_format == "keep" and len(formats) > 1:
        raise ConfigError(f"output_format is keep, but the datasets are in different formats ({', '.join(formats)}) "
                          "and training reads one format per file. Set output_format to openai (or sharegpt, "
                          "alpaca) to write them all in one.")
    return per_dataset, report


def _finish(report: ToolReport, items: Sequence[Item], output: Path, output_format: str) -> ToolReport:
    report.written = write_items(items, output, output_format)
    report.outputs = {str(output): report.written}
    report.per_source = _count_sources(items)
    write_json(report_path(output, report.tool), asdict(report))
    return report


def _count_sources(items: Sequence[Item]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.source] = counts.get(item.source, 0) + 1
    return counts


# --- dedupe -------------------------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    """Text as compared: NFKC (full-width to half-width), case-folded, without punctuation, symbols or spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c)[0] not in "PSZC")


def shingles(text: str, ngram: int) -> set[str]:
    """Character n-grams of normalised text. Characters, not words, so Chinese needs no word segmentation."""
    if len(text) <= ngram:
        return {text}
    return {text[i:i + ngram] for i in range(len(text) - ngram + 1)}


def dedupe(config: DedupeConfig) -> ToolReport:
    """Write `config.output` without exact and (for `method: near`) near-duplicate records; return the report.

    The first record of each cluster is kept; the report (and `<stem>.dedupe.json`) lists every cluster with the
    kept record, the removed ones and their estimated similarity. Reads every dataset in `data.paths` as one pool.
    """
    per_dataset, report = _start("dedupe", config.data, config.output, config.force,
                              config.output_format)
    items = [item for items in per_dataset for item in items]
    check_fields(items, config.fields, "fields")
    kept, clusters = _find_duplicates(items, config)
    report.removed = {"exact": sum(1 for c in clusters.values() for _, how, _ in c if how == "exact"),
                      "near": sum(1 for c in clusters.values() for _, how, _ in c if how == "near")}
    report.clusters = [{"kept": _where(items[k]),
                        "removed": [{**_where(items[i]), "how": how, "similarity": round(s, 3)} for i, how, s in c]}
                       for k, c in clusters.items()]
    return _finish(report, [items[i] for i in kept], config.output, config.output_format)


def _where(item: Item) -> dict[str, Any]:
    return {"source": item.source, "index": item.fields[INDEX_FIELD], "origin": item.conversation.origin}


def _find_duplicates(items: Sequence[Item],
                     config: DedupeConfig) -> tuple[list[int], dict[int, list[tuple[int, str, float]]]]:
    """Indices of the records kept, and per kept record the (index, 'exact' or 'near', similarity) it stands for."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.permutations) if config.method == "near" else None
    exact: dict[str, int] = {}
    signatures: dict[int, MinHash] = {}
    kept: list[int] = []
    clusters: dict[int, list[tuple[int, str, float]]] = {}
    for position, item in enumerate(items):
        text = normalize("\n".join(field_text(item, name) for name in config.fields))
        key = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if key in exact:
            clusters.setdefault(exact[key], []).append((position, "exact", 1.0))
            continue
        if lsh is not None:
            signature = MinHash(num_perm=config.permutations, seed=config.seed)
            signature.update_batch([s.encode("utf-8") for s in shingles(text, config.ngram)])
            match = _closest(signature, lsh.query(signature), signatures, config.threshold)
            if match is not None:
                clusters.setdefault(match[0], []).append((position, "near", match[1]))
                continue
            lsh.insert(str(position), signature)
            signatures[position] = signature
        exact[key] = position
        kept.append(position)
    return kept, clusters


def _closest(signature: Any, candidates: list[str], signatures: dict[int, Any],
             threshold: float) -> tuple[int, float] | None:
    """The most similar kept record among LSH's candidates, if its estimated Jaccard reaches the threshold.

    LSH only proposes candidates (some below the threshold); the estimate decides.
    """
    best = max(((int(c), signature.jaccard(signatures[int(c)])) for c in candidates), key=lambda p: p[1],
               default=None)
    return best if best is not None and best[1] >= threshold else None


# --- split, mix, sample -------------------------------------------------------------------------------------------

def _count(size: float, total: int) -> int:
    return round(total * size) if size < 1 else int(size)


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into whole shares proportional to `weights` that sum exactly to `total` (largest remainder)."""
    weight = sum(weights)
    exact = [total * w / weight for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


def split(config: SplitConfig) -> ToolReport:
    """Write train.jsonl, validation.jsonl and test.jsonl (parts of size 0 are not written) into `config.output`.

    Parts keep the records' original order. With `stratify_by_source`, each source is cut by the same shares.
    Raises DataError when the parts asked for leave no record to train on.
    """
    per_dataset, report = _start("split", config.data, config.output, config.force,
                              config.output_format)
    items = [item for items in per_dataset for item in items]
    wanted = {"validation": _count(config.validation, len(items)), "test": _count(config.test, len(items))}
    if sum(wanted.values()) >= len(items):
        raise DataError(f"validation={config.validation} and test={config.test} take {sum(wanted.values())} of "
                        f"{len(items)} records, leaving none to train on. Use smaller fractions or counts.")
    groups = _groups(items, config.stratify_by_source)
    parts: dict[str, list[int]] = {part: [] for part in SPLIT_PARTS}
    shares = {part: allocate(count, [len(g) for g in groups]) for part, count in wanted.items()}
    rng = random.Random(config.seed)
    for number, group in enumerate(groups):
        order = list(group)
        rng.shuffle(order)
        validation, test = shares["validation"][number], shares["test"][number]
        parts["validation"] += order[:validation]
        parts["test"] += order[validation:validation + test]
        parts["train"] += order[validation + test:]
    with atomic_dir(config.output) as folder:
        for part, indices in parts.items():
            if indices:
                chosen = [items[i] for i in sorted(indices)]
                report.outputs[str(config.output / f"{part}.jsonl")] = write_items(
                    chosen, folder / f"{part}.jsonl", config.output_format)
        report.written = sum(report.outputs.values())
        report.per_source = _count_sources(items)
        write_json(folder / "split.json", asdict(report))
    return report


def _groups(items: Sequence[Item], by_source: bool) -> list[list[int]]:
    if not by_source:
        return [list(range(len(items)))]
    groups: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(item.source, []).append(position)
    return list(groups.values())


def mix(config: MixConfig) -> ToolReport:
    """Write a shuffled mix of the datasets in `data.paths` by `ratios` or `counts` (all of each when neither).

    A dataset asked for more records than it has is repeated whole, then topped up at random; `repeated` counts
    the extra copies.
    """
    per_dataset, report = _start("mix", config.data, config.output, config.force,
                              config.output_format)
    for path, items in zip(config.data.paths, per_dataset):
        if not items:
            raise DataError(f"{path}: no usable records to mix.")
    sizes = [len(items) for items in per_dataset]
    if config.counts:
        counts = list(config.counts)
    elif config.ratios:
        counts = allocate(config.size or sum(sizes), config.ratios)
    else:
        counts = sizes
    rng = random.Random(config.seed)
    mixed: list[Item] = []
    for items, count in zip(per_dataset, counts):
        chosen = _draw(items, count, rng)
        report.repeated += max(0, count - len(items))
        mixed += chosen
    rng.shuffle(mixed)
    report.removed = {"not drawn": sum(max(0, size - count) for size, count in zip(sizes, counts))}
    return _finish(report, mixed, config.output, config.output_format)


def _draw(items: Sequence[Item], count: int, rng: random.Random) -> list[Item]:
    whole, rest = divmod(count, len(items))
    return list(items) * whole + rng.sample(list(items), rest)


def sample(config: SampleConfig) -> ToolReport:
    """Write `config.size` records (a fraction or a count) drawn at random without repetition, in their order."""
    per_dataset, report = _start("sample", config.data, config.output, config.force,
                              config.output_format)
    items = [item for items in per_dataset for item in items]
    count = _count(config.size, len(items))
    if count > len(items):
        raise DataError(f"size={config.size:g} asks for {count} records but {', '.join(config.data.paths)} has "
                        f"{len(items)} usable ones. Ask for at most {len(items)}, or a fraction such as 0.5.")
    chosen = sorted(random.Random(config.seed).sample(range(len(items)), count))
    report.removed = {"not drawn": len(items) - count}
    return _finish(report, [items[i] for i in chosen], config.output, config.output_format)


# --- filter -------------------------------------------------------------------------------------------------------

# Kana, hangul and Han (with their compatibility and extension blocks), by Unicode range.
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


def detect_language(text: str) -> str:
    """zh, ja, ko, latin or other, from the share of each script among the letters.

    Script counting, not a statistical language identifier: it tells the Chinese and English records lorakit's
    users mix apart with no model to download; it cannot tell English from French (both `latin`). Han characters
    carry a word's worth each, so a record is CJK from 30% of its letters on.
    """
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "other"
    kana, hangul = len(_KANA.findall(text)), len(_HANGUL.findall(text))
    cjk = kana + hangul + len(_HAN.findall(text))
    if cjk >= 0.3 * len(letters):
        if kana > 0.1 * cjk:
            return "ja"
        return "ko" if hangul > 0.5 * cjk else "zh"
    latin = sum(1 for c in letters if c < "\u0250")
    return "latin" if latin >= 0.5 * len(letters) else "other"


def filter_records(config: FilterConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> ToolReport:
    """Write the records that pass every test in `config`; the report counts removals by their first failed test.

    `tokenizer` counts tokens for `min_tokens`/`max_tokens` (the CLI loads `config.tokenizer`). Raises DataError
    for a record whose `score_field` holds no number.
    """
    if (config.min_tokens is not None or config.max_tokens is not None) and tokenizer is None:
        raise ConfigError("min_tokens/max_tokens need a tokenizer: set tokenizer to a model name or folder.")
    per_dataset, report = _start("filter", config.data, config.output, config.force,
                              config.output_format)
    items = [item for items in per_dataset for item in items]
    check_fields(items, config.fields, "fields")
    if config.score_field:
        check_fields(items, [config.score_field], "score_field")
    texts = ["\n".join(field_text(item, name) for name in config.fields) for item in items]
    lengths = _token_counts(texts, tokenizer) if tokenizer is not None else [0] * len(items)
    include = re.compile(config.include) if config.include else None
    exclude = re.compile(config.exclude) if config.exclude else None
    kept = []
    for item, text, length in zip(items, texts, lengths):
        reason = _rejection(item, text, length, config, include, exclude)
        if reason is None:
            kept.append(item)
        else:
            report.removed[reason] = report.removed.get(reason, 0) + 1
    return _finish(report, kept, config.output, config.output_format)


def _token_counts(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _rejection(item: Item, text: str, length: int, config: FilterConfig, include: re.Pattern | None,
               exclude: re.Pattern | None) -> str | None:
    """The first test a record fails ('too short', 'language', ...), or None when it passes all."""
    if config.min_tokens is not None and length < config.min_tokens:
        return "too short"
    if config.max_tokens is not None and length > config.max_tokens:
        return "too long"
    if config.languages and detect_language(text) not in config.languages:
        return "language"
    if config.score_field:
        score = _score(item, config.score_field)
        if config.min_score is not None and score < config.min_score or \
                config.max_score is not None and score > config.max_score:
            return "score"
    if include is not None and not include.search(text):
        return "include"
    if exclude is not None and exclude.search(text):
        return "exclude"
    return None


def _score(item: Item, name: str) -> float:
    value = item.fields.get(name)
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{item.conversation.origin}: field '{name}' (score_field) holds {value!r}, not a number. "
                        "Give every record a numeric score, or filter without score_field.") from None


def format_report(report: ToolReport) -> str:
    """The counts of a report as a few lines of text."""
    lines = [f"{report.tool}: read {report.read} records ({report.skipped} skipped as bad), wrote {report.written}."]
    for reason, count in report.removed.items():
        lines.append(f"  removed ({reason}): {count}")
    if report.repeated:
        lines.append(f"  repeated to reach the counts asked: {report.repeated}")
    for path, count in report.outputs.items():
        lines.append(f"  {path}: {count} records")
    for source, count in report.per_source.items():
        lines.append(f"  from {source}: {count}")
    return "\n".join(lines)
