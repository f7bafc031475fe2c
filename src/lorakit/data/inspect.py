"""Look at a dataset before training on it: `check_data`, `dataset_stats`, `preview` and `convert`.

These are the functions behind `lorakit data check|stats|preview|convert`. They return data or text and write
files only where asked (a histogram PNG, a converted dataset), atomically.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.data.load import split_validation, validate_conversations
from lorakit.data.preference import encode_pair, not_a_pair
from lorakit.data.text import not_text
from lorakit.data.tokenize import IGNORE_INDEX, encode
from lorakit.data.unpaired import is_labelled, not_labelled, one_sided
from lorakit.errors import ConfigError, DataError
from lorakit.files import save_figure, write_json, write_text
from lorakit.templates import Template, render_supervised

CONVERT_FORMATS = ("openai", "sharegpt", "alpaca", "text")
TRAINED_START, TRAINED_END = "«", "»"
# Han, kana and hangul: enough to tell a Chinese, Japanese or Korean record from a Latin-script one.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_DUPLICATES_SHOWN = 5


@dataclass
class CheckReport:
    """What `lorakit data check` found: every record read is counted as used or skipped, every problem listed."""

    read: int
    used: int
    skipped: int
    per_source: dict[str, int]
    formats: dict[str, str]
    problems: list[str]
    train: int
    validation: int
    conversations: list[Conversation] = field(default_factory=list, repr=False)
    skip_bad: bool = False
    pairs: int = 0
    desirable: int = 0
    undesirable: int = 0


def check_data(config: DataConfig, stage: str = "sft") -> CheckReport:
    """Read and validate every record in `config.paths` and split off the validation set, as training would.

    Does not stop at a bad record, whatever `data.skip_bad` says: each one (and a validation split that cannot be
    made) is listed in `problems`, so a file is fixed in one round. Counts and the split are those of a training
    run with `data.skip_bad` on. Preference records (chosen/rejected) are checked for a non-empty prompt and two
    different non-empty answers, KTO labels for being true or false. A record the `stage` cannot train is a problem
    too: not a pair (dpo, orpo, simpo), without a label (kto: also data of one kind only), not plain text (pt).
    Raises DataError only where a dataset cannot be read at all (e.g. a missing file).
    """
    conversations, summary = validate_conversations(config)
    problems = list(summary.problems)
    trainable, problem_of = _stage_records(stage)
    if trainable is not None:
        problems += [problem_of(conversation) for conversation in conversations if not trainable(conversation)]
        summary.skipped += len(problems) - len(summary.problems)
        conversations = [conversation for conversation in conversations if trainable(conversation)]
        summary.used = len(conversations)
    if stage == "kto" and conversations:
        problems += [problem for problem in [one_sided(conversations, ", ".join(config.paths))] if problem]
    train, validation = len(conversations), 0
    if conversations:
        try:
            splits = split_validation(conversations, config.val_size, config.seed)
            train, validation = len(splits.train), len(splits.validation)
        except DataError as err:
            problems.append(str(err))
    return CheckReport(read=summary.read, used=summary.used, skipped=summary.skipped,
                       per_source=dict(summary.per_source), formats=dict(summary.formats), problems=problems,
                       train=train, validation=validation, conversations=conversations, skip_bad=config.skip_bad,
                       pairs=sum(conversation.rejected is not None for conversation in conversations),
                       desirable=sum(conversation.desirable is True for conversation in conversations),
                       undesirable=sum(conversation.desirable is False for conversation in conversations))


def _stage_records(stage: str) -> tuple[Callable[[Conversation], bool] | None, Callable[[Conversation], str]]:
    """Which records `stage` trains on, and the problem of one it cannot (None: it trains on any)."""
    if stage in ("dpo", "orpo", "simpo"):
        return (lambda conversation: conversation.rejected is not None), lambda c: not_a_pair(c, stage)
    if stage == "kto":
        return is_labelled, not_labelled
    if stage == "pt":
        return (lambda conversation: conversation.text is not None), not_text
    return None, str


def format_check(report: CheckReport, shown: int = 10) -> str:
    """The check report as text: counts, the first `shown` problems in full, then every problem counted by kind."""
    lines = [f"Read {report.read} records: {report.used} used, {report.skipped} skipped."]
    for source, count in report.per_source.items():
        lines.append(f"  {source}: {count} records ({report.formats.get(source, 'unknown')} format)")
    if report.pairs:
        lines.append(f"Preference pairs (chosen and rejected): {report.pairs}.")
    if report.desirable or report.undesirable:
        lines.append(f"KTO labels: {report.desirable} desirable, {report.undesirable} undesirable.")
    if report.validation:
        lines.append(f"Split: {report.train} for training, {report.validation} for validation.")
    if not report.problems:
        return "\n".join(lines)
    lines.append(f"Problems ({len(report.problems)}):")
    lines += [f"  {problem}" for problem in report.problems[:shown]]
    if len(report.problems) > shown:
        lines.append(f"  ... and {len(report.problems) - shown} more.")
    kinds = problem_kinds(report.problems)
    if len(report.problems) > 1:
        lines.append("By kind:")
        width = len(str(max(kinds.values())))
        lines += [f"  {count:>{width}}  {kind}" for kind, count in kinds.items()]
    if report.skip_bad:
        lines.append(f"Training skips the {report.skipped} bad records (data.skip_bad is true).")
    else:
        lines.append("Training stops at the first bad record: fix them in the file, or set data.skip_bad=true to "
                     "skip (and count) them.")
    return "\n".join(lines)


# "data/train.jsonl, line 17: ", "data/train.json, record 3 (line 9): ", "x.parquet, row 2: " at a problem's start.
_ORIGIN = re.compile(r"^.*?, (?:line|record|row) \d+(?: \(line \d+\))?: ")


def split_origin(problem: str) -> tuple[str, str]:
    """A problem's origin ("data/train.jsonl, line 17") and the rest of its message; ("", problem) without one."""
    match = _ORIGIN.match(problem)
    return (match.group(0)[:-2], problem[match.end():]) if match else ("", problem)


def problem_kinds(problems: Sequence[str]) -> dict[str, int]:
    """How many problems of each kind, most frequent first: a problem's first sentence, without file and line,
    with positions and counts written as N (so 'turn messages[3] is empty' and '...[5]...' are one kind)."""
    counts: dict[str, int] = {}
    for problem in problems:
        text = _ORIGIN.sub("", problem, count=1)
        kind = re.split(r"\. | \(", text, maxsplit=1)[0].rstrip(".")
        kind = re.sub(r"\d+", "N", kind)
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def data_config_and_overrides(args: Sequence[str]) -> tuple[Path | None, list[str]]:
    """The YAML config (or None) and the key=value overrides in the arguments of a data command.

    The first argument is a YAML config when it ends in .yaml/.yml, an override when it holds '=', and otherwise a
    dataset (a file or a registry name), which becomes the override `data.paths=[<it>]` after the others; a YAML
    config may then follow it (`data check train.jsonl run.yaml`).
    """
    args = list(args)
    if args and "=" not in args[0] and not args[0].endswith((".yaml", ".yml")):
        config, overrides = _config_and_overrides(args[1:])
        return config, [*overrides, f"data.paths=[{args[0]!r}]"]
    return _config_and_overrides(args)


def _config_and_overrides(args: list[str]) -> tuple[Path | None, list[str]]:
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return None, args


@dataclass
class DataStats:
    """Token-level facts about a dataset under one template and `max_seq_len`: what training will see.

    Counts are of records; `tokens` and `supervised_tokens` are of the kept records after truncation, counted the
    way training counts them (the first token of a record is never predicted).
    """

    records: int
    max_seq_len: int
    overlong: str
    length_min: int
    length_median: int
    length_p90: int
    length_p95: int
    length_max: int
    truncated: int
    dropped_overlong: int
    dropped_no_labels: int
    tokens: int
    supervised_tokens: int
    turns_mean: float
    turns_max: int
    multi_turn: int
    with_tools: int
    text_records: int
    cjk: int
    duplicates: int
    duplicate_examples: list[tuple[str, str]] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list, repr=False)
    # Preference pairs only: token counts of each side's answer (its end-of-turn marker included).
    chosen_lengths: list[int] = field(default_factory=list, repr=False)
    rejected_lengths: list[int] = field(default_factory=list, repr=False)
    # KTO labels: records whose answer is labelled desirable, undesirable.
    desirable: int = 0
    undesirable: int = 0

    @property
    def truncated_share(self) -> float:
        return self.truncated / self.records

    @property
    def dropped(self) -> int:
        return self.dropped_overlong + self.dropped_no_labels

    @property
    def dropped_share(self) -> float:
        return self.dropped / self.records

    @property
    def supervised_share(self) -> float:
        return self.supervised_tokens / self.tokens if self.tokens else 0.0

    @property
    def cjk_share(self) -> float:
        return self.cjk / self.records


def dataset_stats(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, template: Template,
                  config: DataConfig) -> DataStats:
    """Measure `conversations` as `tokenize_conversations` would cut them: lengths, truncation, loss share.

    Lengths are full token counts before truncation; percentiles are by nearest rank (each is a real record's
    length). Raises DataError when there is nothing to measure.
    """
    if not conversations:
        raise DataError("No records to measure: the dataset is empty. Check data.paths.")
    lengths: list[int] = []
    truncated = dropped_overlong = dropped_no_labels = tokens = supervised = 0
    for conversation in conversations:
        encoded = encode(conversation, tokenizer, template, config)
        lengths.append(encoded.full_length)
        labels = encoded.labels
        if len(labels) > config.max_seq_len:
            if config.overlong == "drop":
                dropped_overlong += 1
                continue
            labels = labels[: config.max_seq_len]
            truncated += 1
        if all(label == IGNORE_INDEX for label in labels[1:]):
            dropped_no_labels += 1
            continue
        tokens += len(labels)
        supervised += sum(label != IGNORE_INDEX for label in labels[1:])
    turns = [sum(m["role"] == "user" for m in c.messages) for c in conversations]
    chosen_lengths, rejected_lengths = _answer_lengths(conversations, tokenizer, template, config)
    ordered = sorted(lengths)
    duplicates, examples = _duplicates(conversations)
    return DataStats(
        records=len(conversations), max_seq_len=config.max_seq_len, overlong=config.overlong,
        length_min=ordered[0], length_median=_percentile(ordered, 50), length_p90=_percentile(ordered, 90),
        length_p95=_percentile(ordered, 95), length_max=ordered[-1], truncated=truncated,
        dropped_overlong=dropped_overlong, dropped_no_labels=dropped_no_labels, tokens=tokens,
        supervised_tokens=supervised, turns_mean=sum(turns) / len(turns), turns_max=max(turns),
        multi_turn=sum(t > 1 for t in turns), with_tools=sum(_has_tools(c) for c in conversations),
        text_records=sum(c.text is not None for c in conversations),
        cjk=sum(bool(_CJK.search(_all_text(c))) for c in conversations), duplicates=duplicates,
        duplicate_examples=examples, lengths=lengths, chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths, desirable=sum(c.desirable is True for c in conversations),
        undesirable=sum(c.desirable is False for c in conversations))


def _answer_lengths(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, template: Template,
                    config: DataConfig) -> tuple[list[int], list[int]]:
    """Token counts of the chosen and of the rejected answer of each preference pair among `conversations`."""
    chosen, rejected = [], []
    for conversation in conversations:
        if conversation.rejected is not None:
            pair = encode_pair(conversation, tokenizer, template, config)
            chosen.append(len(pair.chosen_ids))
            rejected.append(len(pair.rejected_ids))
    return chosen, rejected


def _describe_lengths(lengths: Sequence[int]) -> str:
    ordered = sorted(lengths)
    return (f"min {ordered[0]}, median {_percentile(ordered, 50)}, p90 {_percentile(ordered, 90)}, "
            f"max {ordered[-1]}")


def _percentile(ordered: list[int], percent: float) -> int:
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _has_tools(conversation: Conversation) -> bool:
    return bool(conversation.tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in conversation.messages)


def _all_text(conversation: Conversation) -> str:
    if conversation.text is not None:
        return conversation.text
    return "\n".join(str(m.get("content") or "") for m in conversation.messages)


def _canonical(conversation: Conversation) -> str:
    return json.dumps({"messages": conversation.messages, "tools": conversation.tools, "text": conversation.text,
                       "rejected": conversation.rejected, "desirable": conversation.desirable}, sort_keys=True,
                      ensure_ascii=False, default=str)


def _duplicates(conversations: Sequence[Conversation]) -> tuple[int, list[tuple[str, str]]]:
    """How many records repeat an earlier one exactly, and the first few as (repeat origin, first origin)."""
    first_seen: dict[str, str] = {}
    count, examples = 0, []
    for conversation in conversations:
        key = _canonical(conversation)
        if key in first_seen:
            count += 1
            if len(examples) < _DUPLICATES_SHOWN:
                examples.append((conversation.origin, first_seen[key]))
        else:
            first_seen[key] = conversation.origin
    return count, examples


def format_stats(stats: DataStats) -> str:
    """The stats as an aligned block of text for a terminal or a log."""
    cut = "dropped" if stats.overlong == "drop" else "truncated"
    over = stats.dropped_overlong if stats.overlong == "drop" else stats.truncated
    lines = [
        f"Records          {stats.records} ({stats.multi_turn} multi-turn, {stats.with_tools} with tools, "
        f"{stats.text_records} plain text, {stats.cjk} with CJK text = {stats.cjk_share:.1%})",
        f"Token length     min {stats.length_min}, median {stats.length_median}, p90 {stats.length_p90}, "
        f"p95 {stats.length_p95}, max {stats.length_max}",
        f"max_seq_len      {stats.max_seq_len}: {over} {cut} ({over / stats.records:.1%}); "
        f"{stats.dropped_no_labels} dropped with no trained token left",
        f"Trained tokens   {stats.supervised_tokens} of {stats.tokens} ({stats.supervised_share:.1%}) carry loss",
        f"User turns       mean {stats.turns_mean:.1f}, max {stats.turns_max}",
        f"Duplicates       {stats.duplicates} exact repeats",
    ]
    if stats.chosen_lengths:
        longer = sum(c > r for c, r in zip(stats.chosen_lengths, stats.rejected_lengths))
        lines[2:2] = [f"Pairs            {len(stats.chosen_lengths)}; the chosen answer is the longer in {longer} "
                      f"({longer / len(stats.chosen_lengths):.1%})",
                      f"Chosen answer    {_describe_lengths(stats.chosen_lengths)} tokens",
                      f"Rejected answer  {_describe_lengths(stats.rejected_lengths)} tokens"]
    if stats.desirable or stats.undesirable:
        labelled = stats.desirable + stats.undesirable
        lines.insert(2, f"KTO labels       {stats.desirable} desirable ({stats.desirable / labelled:.1%}), "
                        f"{stats.undesirable} undesirable")
    lines += [f"  {repeat} repeats {first}" for repeat, first in stats.duplicate_examples]
    if stats.duplicates > len(stats.duplicate_examples):
        lines.append(f"  ... and {stats.duplicates - len(stats.duplicate_examples)} more.")
    return "\n".join(lines)


def plot_length_histogram(lengths: Sequence[int], max_seq_len: int, path: Path, overlong: str = "truncate") -> Path:
    """Draw a histogram of token lengths with the `max_seq_len` cut-off marked; write it to `path` as a PNG."""
    return save_figure(length_histogram(lengths, max_seq_len, overlong), path)


def length_histogram(lengths: Sequence[int], max_seq_len: int, overlong: str = "truncate") -> Any:
    """The token-length histogram with the `max_seq_len` cut-off marked, as a matplotlib Figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    over = sum(length > max_seq_len for length in lengths)
    share = over / len(lengths) if lengths else 0.0
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)  # Figure without pyplot: no global state, no display backend needed.
    axes = figure.add_subplot()
    axes.hist(lengths, bins=min(50, max(1, len(set(lengths)))), color="tab:blue")
    axes.axvline(max_seq_len, color="tab:red", linestyle="--", label="max_seq_len (cutoff_len)")
    cut = "dropped" if overlong == "drop" else "truncated"
    axes.set_title(f"{share:.1%} of {len(lengths)} records {cut} at max_seq_len={max_seq_len}")
    axes.set_xlabel("tokens per record")
    axes.set_ylabel("records")
    axes.legend()
    figure.tight_layout()
    return figure


@dataclass(frozen=True)
class PreviewBlock:
    """One example as the model will see it: a header, the text in pieces each marked trained (loss-bearing) or
    not, and a note on what max_seq_len cut off. `marks` says whether the text form marks trained pieces."""

    header: str
    pieces: list[tuple[str, bool]]
    note: str = ""
    marks: bool = False

    def marked(self) -> str:
        """The block as text, trained pieces between «...»."""
        header = self.header
        if self.marks:
            header = header.removesuffix(" ===") + f", between {TRAINED_START} {TRAINED_END} ==="
        parts, inside = [], False
        for piece, trained in self.pieces:
            if trained != inside:
                parts.append(TRAINED_START if trained else TRAINED_END)
                inside = trained
            parts.append(piece)
        if inside:
            parts.append(TRAINED_END)
        return header + "\n" + "".join(parts) + self.note


def preview(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, template: Template,
            config: DataConfig, count: int) -> list[str]:
    """The first `count` examples as the model will see them, with the trained (loss-bearing) text in «...».

    The marks come from the token labels after truncation, so what is marked is exactly what trains.
    """
    return [block.marked() for block in preview_blocks(conversations, tokenizer, template, config, count)]


def preview_blocks(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, template: Template,
                   config: DataConfig, count: int) -> list[PreviewBlock]:
    """The first `count` examples as `preview` shows them, as pieces marked trained or not (for a page to colour)."""
    return [_preview_one(conversation, index, tokenizer, template, config)
            for index, conversation in enumerate(conversations[:count], start=1)]


def _preview_one(conversation: Conversation, index: int, tokenizer: PreTrainedTokenizerBase, template: Template,
                 config: DataConfig) -> PreviewBlock:
    encoded = encode(conversation, tokenizer, template, config)
    pieces = _token_pieces(conversation, encoded.input_ids, tokenizer, template, config)
    kept, labels = len(encoded.input_ids), encoded.labels
    note = ""
    if kept > config.max_seq_len:
        if config.overlong == "drop":
            header = (f"=== {index}. {conversation.origin}: {kept} tokens, longer than max_seq_len="
                      f"{config.max_seq_len}, so dropped; nothing in it trains ===")
            return PreviewBlock(header, [("".join(pieces), False)])
        kept, labels = config.max_seq_len, labels[: config.max_seq_len]
        note = (f"\n[... {encoded.full_length - kept} more tokens cut by max_seq_len={config.max_seq_len}; "
                "the model never sees them]")
    trained = sum(label != IGNORE_INDEX for label in labels)
    dropped = trained == 0 or all(label == IGNORE_INDEX for label in labels[1:])
    status = "no trained token left, so dropped" if dropped else f"{trained} trained"
    header = f"=== {index}. {conversation.origin}: {kept} tokens, {status} ==="
    pieces = [(piece, label != IGNORE_INDEX) for piece, label in zip(pieces[:kept], labels)]
    return PreviewBlock(header, pieces, note, marks=not dropped)


def _token_pieces(conversation: Conversation, ids: list[int], tokenizer: PreTrainedTokenizerBase,
                  template: Template, config: DataConfig) -> list[str]:
    """The text behind each token: slices of the rendered text by character offsets, so the pieces join up to it.

    Decoding tokens one by one would space out some tokenizers' output and split multi-byte characters.
    """
    text = _rendered_text(conversation, tokenizer, template, config)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    own = encoding["input_ids"]
    if own != ids[: len(own)]:
        return [tokenizer.decode([token]) for token in ids]
    starts, position = [], 0
    for start, _ in encoding["offset_mapping"]:
        position = max(position, start)
        starts.append(position)
    cuts = [0, *starts[1:], len(text)] if starts else [0, len(text)]
    pieces = [text[cuts[i]: cuts[i + 1]] for i in range(len(own))]
    return pieces + [tokenizer.decode([token]) for token in ids[len(own):]]  # the EOS that ends a text record


def _rendered_text(conversation: Conversation, tokenizer: PreTrainedTokenizerBase, template: Template,
                   config: DataConfig) -> str:
    """The text `encode` tokenises, rendered the same way (with `data.system` added where a record has none)."""
    if conversation.text is not None:
        return conversation.text
    messages = list(conversation.messages)
    if config.system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": config.system})
    text, _ = render_supervised(template, tokenizer, messages,
                                tools=list(conversation.tools) if conversation.tools else None,
                                thinking=config.thinking)
    return text


def convert(conversations: Sequence[Conversation], target_format: str, path: Path) -> int:
    """Write `conversations` to `path` in `target_format` (openai, sharegpt, alpaca or text); return the count.

    A `.jsonl` path gets one JSON object per line, a `.json` path one JSON array. Raises DataError, naming the
    record, for what the target format cannot hold (tool calls in alpaca, a chat as plain text, ...).
    """
    if target_format not in CONVERT_FORMATS:
        close = difflib.get_close_matches(target_format, CONVERT_FORMATS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Cannot convert to '{target_format}': choose one of {', '.join(CONVERT_FORMATS)}.{hint}")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise ConfigError(f"Cannot write {path}: name the output .jsonl (one record per line) or .json (an array).")
    records = [to_record(conversation, target_format) for conversation in conversations]
    if suffix == ".jsonl":
        write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    else:
        write_json(path, records)
    return len(records)


def to_record(conversation: Conversation, target_format: str) -> dict[str, Any]:
    """One conversation as a record of `target_format` (openai, sharegpt, alpaca or text); DataError where the
    format cannot hold it."""
    return _WRITERS[target_format](conversation)


def _refuse(conversation: Conversation, problem: str, fix: str) -> DataError:
    return DataError(f"{conversation.origin}: {problem}. {fix}")


def _chat(conversation: Conversation, target: str) -> tuple[str | None, list[dict[str, Any]], dict[str, Any]]:
    """A conversation's system prompt, its other messages and (for a preference pair) its chosen/rejected fields."""
    if conversation.text is not None:
        raise _refuse(conversation, f"is plain text with no conversation, which {target} cannot hold",
                      "Convert it to 'text' instead.")
    messages = list(conversation.messages)
    system = messages.pop(0)["content"] if messages[0]["role"] == "system" else None
    ranking: dict[str, Any] = {}
    if conversation.rejected is not None:
        ranking = {"chosen": messages.pop()["content"], "rejected": conversation.rejected}
    return system, messages, ranking


def _plain_tools(conversation: Conversation) -> list[dict[str, Any]]:
    return [tool.get("function", tool) for tool in conversation.tools or ()]


def _call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function", call)
    return {"name": function["name"], "arguments": function.get("arguments", {})}


def _to_openai(conversation: Conversation) -> dict[str, Any]:
    system, messages, ranking = _chat(conversation, "openai")
    offset = 1 if system is not None else 0
    out = [{"role": "system", "content": system}] if system is not None else []
    for index, message in enumerate(messages, start=offset):
        item: dict[str, Any] = {"role": message["role"], "content": message["content"]}
        if message.get("tool_calls"):
            item["tool_calls"] = [{"type": "function", "function": {
                "name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
                for call in map(_call, message["tool_calls"])]
        if index in conversation.untrained:
            item["loss_weight"] = 0.0
        out.append(item)
    record: dict[str, Any] = {"messages": out, **ranking}
    if conversation.tools:
        record["tools"] = list(conversation.tools)
    return record


_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "tool": "observation"}


def _to_sharegpt(conversation: Conversation) -> dict[str, Any]:
    system, messages, ranking = _chat(conversation, "sharegpt")
    _refuse_untrained(conversation, "sharegpt")
    turns = []
    for number, message in enumerate(messages, start=1):
        if message.get("tool_calls"):
            if message["content"].strip():
                raise _refuse(conversation, f"turn {number} has both text and tool calls, but a sharegpt "
                              "function_call turn holds only the calls", "Convert to 'openai' instead.")
            calls = [_call(call) for call in message["tool_calls"]]
            value = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            turns.append({"from": "function_call", "value": value})
        else:
            turns.append({"from": _SHAREGPT_ROLES[message["role"]], "value": message["content"]})
    record: dict[str, Any] = {"conversations": turns, **ranking}
    if system is not None:
        record["system"] = system
    if conversation.tools:
        record["tools"] = json.dumps(_plain_tools(conversation), ensure_ascii=False)  # LLaMA-Factory reads a string
    return record


def _to_alpaca(conversation: Conversation) -> dict[str, Any]:
    system, messages, ranking = _chat(conversation, "alpaca")
    _refuse_untrained(conversation, "alpaca")
    if _has_tools(conversation):
        raise _refuse(conversation, "uses tools, which alpaca records cannot hold",
                      "Convert to 'openai' or 'sharegpt' instead, or leave this record out.")
    pairs = [[messages[i]["content"], messages[i + 1]["content"]] for i in range(0, len(messages) - 1, 2)]
    if ranking:
        pairs.append([messages[-1]["content"], None])
    *history, (instruction, output) = pairs
    record: dict[str, Any] = {"instruction": instruction, "input": ""}
    record.update(ranking or {"output": output})
    if system is not None:
        record["system"] = system
    if history:
        record["history"] = history
    return record


def _to_text(conversation: Conversation) -> dict[str, Any]:
    if conversation.text is None:
        raise _refuse(conversation, "is a conversation; 'text' holds plain text only, and rendering a chat needs a "
                      "template", "Convert it to 'openai', 'sharegpt' or 'alpaca' instead.")
    return {"text": conversation.text}


def _refuse_untrained(conversation: Conversation, target: str) -> None:
    if conversation.untrained:
        raise _refuse(conversation, f"has assistant turns with loss_weight 0, which {target} cannot mark",
                      "Convert to 'openai' instead, which keeps loss_weight.")


_WRITERS = {"openai": _to_openai, "sharegpt": _to_sharegpt, "alpaca": _to_alpaca, "text": _to_text}
