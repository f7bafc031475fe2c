"""Unpaired preferences for stage kto: `load_unpaired()` keeps answers labelled desirable or undesirable, and
`tokenize_unpaired()` turns each into prompt_ids/completion_ids/label, rendered with lorakit's chat template as SFT
and DPO render them.

Layouts: LLaMA-Factory's `kto_tag` (a dataset_info.json column mapped to a boolean, as in kto_en_demo.json), TRL's
prompt/completion/label records (plain or conversational), and preference pairs, whose chosen answer counts as
desirable and rejected one as undesirable (TRL's unpairing).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.data.load import LoadSummary, keep_records, load_conversations
from lorakit.data.preference import encode_answer, encode_pair
from lorakit.data.tokenize import TokenizeSummary, shared_system
from lorakit.errors import DataError
from lorakit.templates import Template

COLUMNS = ("prompt_ids", "completion_ids", "label")


def load_unpaired(config: DataConfig) -> tuple[list[Conversation], LoadSummary]:
    """Read `config.paths` like SFT does, but every record must carry a KTO label (or be a chosen/rejected pair).

    A record without one raises DataError naming its file and line (or is skipped and counted with `data.skip_bad`).
    Raises DataError when the records are all desirable or all undesirable.
    """
    conversations, summary = load_conversations(config)
    labelled = keep_records(conversations, summary, config, is_labelled, not_labelled)
    problem = one_sided(labelled, ", ".join(config.paths))
    if problem:
        raise DataError(problem)
    summary.used = len(labelled)
    return labelled, summary


def is_labelled(conversation: Conversation) -> bool:
    return conversation.desirable is not None or conversation.rejected is not None


def not_labelled(conversation: Conversation) -> str:
    """The problem of a record without a label met where stage kto needs one."""
    return (f"{conversation.origin}: no desirable/undesirable label. Stage kto trains on answers labelled good or "
            "bad: each record needs a true/false 'label' (LLaMA-Factory's kto_tag column; another field with "
            "data.columns.label=<field>), or chosen and rejected answers (both are used).")


def one_sided(conversations: list[Conversation], where: str) -> str | None:
    """The problem of KTO data that has only desirable or only undesirable answers (or none), else None."""
    desirable = sum(c.desirable is True or c.rejected is not None for c in conversations)
    undesirable = sum(c.desirable is False or c.rejected is not None for c in conversations)
    if desirable and undesirable:
        return None
    if not desirable and not undesirable:
        return f"{where}: no labelled answers to train stage kto on."
    kind, other = ("desirable", "undesirable") if desirable else ("undesirable", "desirable")
    return (f"{where}: all {desirable + undesirable} labelled answers are {kind}, none {other}. KTO learns from the "
            f"contrast of the two kinds; add {other} examples (label {str(kind == 'undesirable').lower()}), or "
            "train the desirable answers with stage: sft.")


def tokenize_unpaired(conversations: list[Conversation], tokenizer: PreTrainedTokenizerBase, template: Template,
                      config: DataConfig) -> tuple[Dataset, TokenizeSummary]:
    """A Dataset of prompt_ids/completion_ids/label, a pair giving two rows; the answer is cut to
    `config.max_seq_len` (the prompt kept) or the row dropped, as `config.overlong` says.

    Raises DataError when no row keeps an answer token.
    """
    summary = TokenizeSummary()
    rows: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for conversation in conversations:
        for prompt, answer, desirable in _answers(conversation, tokenizer, template, config):
            summary.lengths.append(len(prompt) + len(answer))
            if len(prompt) + len(answer) > config.max_seq_len:
                room = config.max_seq_len - len(prompt)
                if config.overlong == "drop" or room <= 0:
                    summary.dropped_overlong += 1
                    continue
                answer = answer[:room]
                summary.truncated += 1
            for name, value in zip(COLUMNS, (prompt, answer, desirable)):
                rows[name].append(value)
            summary.tokens += len(prompt) + len(answer)
            summary.supervised_tokens += len(answer)
    summary.examples = len(rows["label"])
    summary.shared_system = shared_system(conversations, config)
    if conversations and summary.examples == 0:
        raise DataError(f"All {len(summary.lengths)} answers have prompts of data.max_seq_len={config.max_seq_len} "
                        f"tokens or more, or were dropped as too long. Raise data.max_seq_len (longest: "
                        f"{max(summary.lengths)} tokens) or shorten the prompts.")
    return Dataset.from_dict(rows), summary


def _answers(conversation: Conversation, tokenizer: PreTrainedTokenizerBase, template: Template,
             config: DataConfig) -> list[tuple[list[int], list[int], bool]]:
    if conversation.rejected is not None:
        pair = encode_pair(conversation, tokenizer, template, config)
        return [(pair.prompt_ids, pair.chosen_ids, True), (pair.prompt_ids, pair.rejected_ids, False)]
    prompt, answer = encode_answer(conversation, tokenizer, template, config)
    return [(prompt, answer, bool(conversation.desirable))]
