"""Preference pairs for stages dpo, orpo and simpo: `load_preferences()` keeps records with a chosen and a rejected
answer, and `tokenize_preferences()` turns each into prompt/chosen/rejected token ids, rendered with lorakit's own
chat template (the one inference uses), exactly as SFT renders a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.data.load import LoadSummary, keep_records, load_conversations
from lorakit.data.tokenize import TokenizeSummary, shared_system
from lorakit.errors import DataError
from lorakit.templates import Template, render_supervised

COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def load_preferences(config: DataConfig) -> tuple[list[Conversation], LoadSummary]:
    """Read `config.paths` like SFT does, but every record must be a preference pair (chosen and rejected).

    A record without a rejected answer raises DataError naming its file and line (or is skipped and counted
    with `data.skip_bad`).
    """
    conversations, summary = load_conversations(config)
    pairs = keep_records(conversations, summary, config, lambda c: c.rejected is not None, not_a_pair)
    if not pairs:
        raise DataError(f"{', '.join(config.paths)}: no preference pairs (records with chosen and rejected) to "
                        "train a pairwise preference stage (dpo, orpo, simpo) on.")
    summary.used = len(pairs)
    return pairs, summary


def not_a_pair(conversation: Conversation, stage: str = "dpo") -> str:
    """The problem of an ordinary (SFT) record met where `stage` (dpo, orpo, simpo) needs a preference pair."""
    return (f"{conversation.origin}: no rejected answer. Stage {stage} trains on preference pairs: each record needs "
            "'chosen' and 'rejected' (LLaMA-Factory ranking records, or prompt/chosen/rejected).")


@dataclass(frozen=True)
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def encode_pair(conversation: Conversation, tokenizer: PreTrainedTokenizerBase, template: Template,
                config: DataConfig) -> EncodedPair:
    """Prompt ids (through the assistant's generation prompt) and the two answers' ids, each ending at its
    end-of-turn marker, from one rendering of each whole conversation."""
    messages = _with_system(conversation, config)
    rejected = [*messages[:-1], {"role": "assistant", "content": conversation.rejected}]
    tools = list(conversation.tools) if conversation.tools else None
    chosen_prompt, chosen_ids = _split_last_answer(messages, tokenizer, template, tools, config.thinking)
    rejected_prompt, rejected_ids = _split_last_answer(rejected, tokenizer, template, tools, config.thinking)
    shared = _common_prefix(chosen_prompt, rejected_prompt)
    # Tokens merging across the answer's start could differ between the two; what differs belongs to the answers.
    return EncodedPair(chosen_prompt[:shared], chosen_prompt[shared:] + chosen_ids,
                       rejected_prompt[shared:] + rejected_ids)


def encode_answer(conversation: Conversation, tokenizer: PreTrainedTokenizerBase, template: Template,
                  config: DataConfig) -> tuple[list[int], list[int]]:
    """Prompt ids (through the assistant's generation prompt) and the last answer's ids (to its end-of-turn marker)
    of one conversation, rendered once as SFT renders it."""
    tools = list(conversation.tools) if conversation.tools else None
    return _split_last_answer(_with_system(conversation, config), tokenizer, template, tools, config.thinking)


def _with_system(conversation: Conversation, config: DataConfig) -> list[dict[str, Any]]:
    messages = list(conversation.messages)
    if config.system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": config.system})
    return messages


def _split_last_answer(messages: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, template: Template,
                       tools: list[dict[str, Any]] | None, thinking: bool | None) -> tuple[list[int], list[int]]:
    text, spans = render_supervised(template, tokenizer, messages, tools=tools, thinking=thinking)
    start, end = spans[-1]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    prompt, answer = [], []
    for token, (token_start, token_end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        if token_start < start:
            prompt.append(token)
        elif token_start < end:
            answer.append(token)
    return prompt, answer


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def tokenize_preferences(pairs: list[Conversation], tokenizer: PreTrainedTokenizerBase, template: Template,
                         config: DataConfig) -> tuple[Dataset, TokenizeSummary]:
    """A Dataset of prompt_ids/chosen_ids/rejected_ids, the pair cut to `config.max_seq_len` (answers shortened,
    the prompt kept) or dropped as `config.overlong` says.

    The summary counts both answers as supervised tokens; `lengths` holds each pair's longer side. Raises DataError
    when no pair keeps an answer token.
    """
    summary = TokenizeSummary()
    rows: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for pair in pairs:
        encoded = encode_pair(pair, tokenizer, template, config)
        prompt, chosen, rejected = encoded.prompt_ids, encoded.chosen_ids, encoded.rejected_ids
        longest = len(prompt) + max(len(chosen), len(rejected))
        summary.lengths.append(longest)
        if longest > config.max_seq_len:
            room = config.max_seq_len - len(prompt)
            if config.overlong == "drop" or room <= 0:
                summary.dropped_overlong += 1
                continue
            chosen, rejected = chosen[:room], rejected[:room]
            summary.truncated += 1
        for name, ids in zip(COLUMNS, (prompt, chosen, rejected)):
            rows[name].append(ids)
        summary.tokens += 2 * len(prompt) + len(chosen) + len(rejected)
        summary.supervised_tokens += len(chosen) + len(rejected)
    summary.examples = len(rows["prompt_ids"])
    summary.shared_system = shared_system(pairs, config)
    if pairs and summary.examples == 0:
        raise DataError(f"All {len(pairs)} preference pairs have prompts of data.max_seq_len={config.max_seq_len} "
                        f"tokens or more, or were dropped as too long, leaving no answer to compare. Raise "
                        f"data.max_seq_len (longest pair: {max(summary.lengths)} tokens) or shorten the prompts.")
    return Dataset.from_dict(rows), summary
