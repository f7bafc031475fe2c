"""Plain text for stage pt: `load_texts()` keeps the records that are documents, and `tokenize_texts()` turns them
into examples with the loss on every token.

`data.packing: blocks` joins the documents, each ending in EOS, into one stream and cuts it into `max_seq_len`
blocks (a block may hold the end of one document and the start of the next, as in pretraining); the last, shorter
block is kept. `documents` keeps each document an example of its own, cut into pieces of at most `max_seq_len`
tokens; padding-free batches (train/packing.py) then put several in one row, each attending only to itself.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.data.load import LoadSummary, keep_records, load_conversations
from lorakit.data.tokenize import TokenizeSummary, bos_prefix, encode
from lorakit.errors import DataError
from lorakit.templates import Template


def load_texts(config: DataConfig) -> tuple[list[Conversation], LoadSummary]:
    """Read `config.paths` like SFT does, but every record must be plain text (a document).

    A record that is a conversation raises DataError naming its file and line (or is skipped and counted with
    `data.skip_bad`).
    """
    conversations, summary = load_conversations(config)
    documents = keep_records(conversations, summary, config, lambda c: c.text is not None, not_text)
    if not documents:
        raise DataError(f"{', '.join(config.paths)}: no plain-text documents to train stage pt on.")
    summary.used = len(documents)
    return documents, summary


def not_text(conversation: Conversation) -> str:
    """The problem of a conversation met where stage pt needs plain text."""
    return (f"{conversation.origin}: not plain text. Stage pt trains on documents: lines of a .txt file, or records "
            "with a 'text' field (data.format: text; another field with data.columns.text=<field>).")


def document_ids(document: Conversation, tokenizer: PreTrainedTokenizerBase, template: Template,
                 config: DataConfig) -> list[int]:
    """One document's token ids: BOS where the tokenizer starts text with one, the text, then EOS."""
    return bos_prefix(tokenizer) + encode(document, tokenizer, template, config).input_ids


def tokenize_texts(documents: list[Conversation], tokenizer: PreTrainedTokenizerBase, template: Template,
                   config: DataConfig) -> tuple[Dataset, TokenizeSummary]:
    """A Dataset of input_ids/labels (labels = input_ids: every token is trained), cut as `config.packing` says.

    No token is dropped except a last piece of a single token (it has nothing to predict), counted in
    `dropped_no_labels`. `lengths` holds each example's length.
    """
    if tokenizer.eos_token_id is None:
        raise DataError("The tokenizer has no EOS token, so documents could not be told apart in training. Use a "
                        "model whose tokenizer defines one.")
    size = config.max_seq_len
    per_document = [document_ids(document, tokenizer, template, config) for document in documents]
    if config.packing == "blocks":
        stream = [token for ids in per_document for token in ids]
        pieces = [stream[start:start + size] for start in range(0, len(stream), size)]
    else:
        pieces = [ids[start:start + size] for ids in per_document for start in range(0, len(ids), size)]
    summary = TokenizeSummary()
    rows: dict[str, list[Any]] = {"input_ids": [], "labels": []}
    for piece in pieces:
        if len(piece) < 2:
            summary.dropped_no_labels += 1
            continue
        rows["input_ids"].append(piece)
        rows["labels"].append(list(piece))
        summary.lengths.append(len(piece))
        summary.tokens += len(piece)
        summary.supervised_tokens += len(piece) - 1
    summary.examples = len(rows["input_ids"])
    if documents and summary.examples == 0:
        raise DataError(f"The {len(documents)} documents hold no text to train on (each is empty after "
                        "tokenisation). Check data.paths and data.columns.text.")
    return Dataset.from_dict(rows), summary
