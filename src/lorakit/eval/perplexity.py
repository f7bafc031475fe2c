"""Perplexity: `evaluate_perplexity()` measures how well a model predicts held-out answers, as training scores them.

The conversations are tokenised and masked exactly as for training (template, `train_on_prompt`, `max_seq_len`,
`overlong`), so the loss here is the validation loss a training run would report on the same data.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.data.tokenize import IGNORE_INDEX, pad_batch, pad_token_id, tokenize_conversations
from lorakit.errors import ConfigError, DataError
from lorakit.progress import ProgressTarget, track
from lorakit.templates import Template
from lorakit.train.loss import chunked_lm_loss


def evaluate_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
                        conversations: list[Conversation], data_config: DataConfig, batch_size: int = 8,
                        progress: ProgressTarget = True) -> dict[str, float]:
    """Mean negative log-likelihood per supervised token (`loss`, nats) and `perplexity` = exp(loss).

    The loss is summed over every supervised token and divided by their number (`tokens`), so long answers weigh
    more than short ones and the batch size does not change the result. Also returns `samples` (examples scored),
    `truncated` and `dropped` (too long, or no supervised token left) as the data stage counts them. `progress`
    counts samples (see lorakit.progress).
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    if not conversations:
        raise DataError("No conversations to measure perplexity on: the task's dataset is empty (check data.paths "
                        "and limit).")
    dataset, summary = tokenize_conversations(conversations, tokenizer, template, data_config)
    features = [{"input_ids": ids, "labels": labels} for ids, labels in zip(dataset["input_ids"], dataset["labels"])]
    # Longest first: batches of similar lengths waste less on padding, and an out-of-memory error comes at once.
    features.sort(key=lambda feature: len(feature["input_ids"]), reverse=True)
    total, count = summed_loss(model, tokenizer, features, batch_size, progress)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "tokens": float(count),
            "samples": float(len(features)), "truncated": float(summary.truncated),
            "dropped": float(summary.dropped_overlong + summary.dropped_no_labels)}


def summed_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, features: list[dict[str, list[int]]],
                 batch_size: int, progress: ProgressTarget) -> tuple[float, int]:
    """Summed next-token NLL (float32 logits, chunked as in training) and the number of supervised tokens."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    device = next(model.parameters()).device
    pad_id = pad_token_id(tokenizer)
    nothing = torch.empty(0, dtype=torch.long, device=device)  # no logits from the model: chunked_lm_loss makes them
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with track("perplexity", len(features), progress, unit="sample") as advance, torch.inference_mode():
            for start in range(0, len(features), batch_size):
                chunk = features[start:start + batch_size]
                batch = {name: tensor.to(device) for name, tensor in pad_batch(chunk, pad_id).items()}
                labels = batch.pop("labels")
                outputs = model(**batch, output_hidden_states=True, logits_to_keep=nothing, use_cache=False)
                # num_items=1 turns the mean into the sum, so batches add up exactly.
                total += chunked_lm_loss(outputs.hidden_states[-1], labels, head, softcap=softcap, num_items=1).item()
                count += int((labels[:, 1:] != IGNORE_INDEX).sum())
                advance(len(chunk))
    finally:
        model.train(was_training)
    return total, count
