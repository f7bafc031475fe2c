"""Tokenise canonical conversations with a chat template, putting the loss only on what the assistant says.

The whole conversation is rendered once and tokenised once (exactly as inference will see it); the template's
assistant spans are mapped onto tokens through the tokenizer's character offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.errors import DataError
from lorakit.templates import Template, render_supervised

IGNORE_INDEX = -100


@dataclass
class TokenizeSummary:
    """Counts of what tokenisation did: truncated and dropped examples are reported, never silent."""

    examples: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_labels: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    lengths: list[int] = field(default_factory=list)
    # The system prompt every example opens with (a `system` column or data.system), None when they differ: a run
    # saves it and inference uses it by default, so the model is prompted as it was trained.
    shared_system: str | None = None


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    full_length: int


def encode(conversation: Conversation, tokenizer: PreTrainedTokenizerBase, template: Template,
           config: DataConfig) -> Encoded:
    """Token ids and labels (IGNORE_INDEX where no loss) for one conversation, before truncation."""
    if conversation.text is not None:
        ids = tokenizer(conversation.text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = [*ids, tokenizer.eos_token_id]
        return Encoded(ids, list(ids), len(ids))
    messages = list(conversation.messages)
    if config.system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": config.system})
    offset = len(messages) - len(conversation.messages)
    text, spans = render_supervised(template, tokenizer, messages,
                                    tools=list(conversation.tools) if conversation.tools else None,
                                    thinking=config.thinking)
    assistant_turns = [i - offset for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = [span for turn, span in zip(assistant_turns, spans) if turn not in conversation.untrained]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    if config.train_on_prompt:
        return Encoded(ids, list(ids), len(ids))
    labels = [token if _inside(start, end, spans) else IGNORE_INDEX
              for token, (start, end) in zip(ids, encoding["offset_mapping"])]
    return Encoded(ids, labels, len(ids))


def _inside(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    end = max(end, start + 1)
    return any(start < span_end and end > span_start for span_start, span_end in spans)


def tokenize_conversations(conversations: list[Conversation], tokenizer: PreTrainedTokenizerBase,
                           template: Template, config: DataConfig) -> tuple[Dataset, TokenizeSummary]:
    """A `datasets.Dataset` of input_ids/labels, cut to `config.max_seq_len` or dropped as `config.overlong` says.

    Raises DataError when no example keeps a single supervised token (it would only crash training later).
    """
    summary = TokenizeSummary()
    rows: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    for conversation in conversations:
        encoded = encode(conversation, tokenizer, template, config)
        summary.lengths.append(encoded.full_length)
        ids, labels = encoded.input_ids, encoded.labels
        if len(ids) > config.max_seq_len:
            if config.overlong == "drop":
                summary.dropped_overlong += 1
                continue
            ids, labels = ids[: config.max_seq_len], labels[: config.max_seq_len]
            summary.truncated += 1
        if all(label == IGNORE_INDEX for label in labels[1:]):
            summary.dropped_no_labels += 1
            continue
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        summary.tokens += len(ids)
        summary.supervised_tokens += sum(label != IGNORE_INDEX for label in labels[1:])
    summary.examples = len(rows["input_ids"])
    summary.shared_system = shared_system(conversations, config)
    if conversations and summary.examples == 0:
        raise DataError(
            f"All {len(conversations)} examples would train on nothing: every supervised (assistant) token falls "
            f"beyond data.max_seq_len={config.max_seq_len} ({summary.truncated} truncated, "
            f"{summary.dropped_overlong} dropped as too long). Raise data.max_seq_len (longest example: "
            f"{max(summary.lengths)} tokens), shorten the prompts, or set data.train_on_prompt=true.")
    return Dataset.from_dict(rows), summary


def shared_system(conversations: list[Conversation], config: DataConfig) -> str | None:
    """The system prompt all `conversations` open with (their own or `config.system`), else None."""
    systems = {conversation.messages[0]["content"] if conversation.messages[0]["role"] == "system" else config.system
               for conversation in conversations if conversation.messages}
    if len(systems) != 1 or any(conversation.text is not None for conversation in conversations):
        return None
    system = systems.pop()
    return system if isinstance(system, str) and system else None


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad with: the tokenizer's pad token, else its eos (masked out either way), else 0."""
    return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)


def left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token-id rows left-padded into input_ids / attention_mask, so every row's new tokens start at one column."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[index, width - len(row):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """[BOS] where the tokenizer puts one before text by itself (Llama), else nothing (SmolLM2, Qwen)."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("x")["input_ids"][:1] == [bos] else []


def pad_batch(features: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into input_ids / attention_mask / labels tensors."""
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        input_ids[row, :length] = torch.tensor(feature["input_ids"])
        labels[row, :length] = torch.tensor(feature["labels"])
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
