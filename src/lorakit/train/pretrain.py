"""Stage pt (continued pretraining): `heldout_perplexity()`, measured on the validation documents before and after
training; `train_sft()` (trainer.py) trains the blocks of data/text.py with the loss on every token.
"""

from __future__ import annotations

import math

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.eval.perplexity import summed_loss
from lorakit.progress import ProgressTarget


def heldout_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, validation: Dataset,
                       batch_size: int, progress: ProgressTarget = False) -> dict[str, float]:
    """`loss` (mean NLL per predicted token, nats) and `perplexity` = exp(loss) of `model` on `validation`'s
    input_ids/labels, summed over tokens as eval/perplexity.py does, so batch size and padding do not change it."""
    features = [{"input_ids": ids, "labels": labels}
                for ids, labels in zip(validation["input_ids"], validation["labels"])]
    total, count = summed_loss(model, tokenizer, features, batch_size, progress)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}
