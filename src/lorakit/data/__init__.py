"""Data stage: read any common dataset format, validate it, and tokenise it with the loss on assistant turns.

`load_conversations(config)` reads and validates; `tokenize_conversations(...)` turns the result into tokens.
"""

from lorakit.data.formats import Conversation, detect_format, to_conversation
from lorakit.data.load import LoadSummary, Splits, data_files, load_conversations, split_validation
from lorakit.data.tokenize import IGNORE_INDEX, TokenizeSummary, encode, pad_batch, tokenize_conversations

__all__ = ["IGNORE_INDEX", "Conversation", "LoadSummary", "Splits", "TokenizeSummary", "data_files",
           "detect_format", "encode", "load_conversations", "pad_batch", "split_validation", "to_conversation",
           "tokenize_conversations"]
