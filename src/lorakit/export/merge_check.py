"""The merge check: a merged model must give the logits of base + adapter, or it is not written.

`check_merge()` renders a few short chat prompts with the training template, runs base + adapter (through PEFT; the
base in 4/8-bit when a QLoRA merge replays that quantisation) and then the merged folder, one model in memory at a
time, and compares their logits.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorakit.config.export import MergeConfig
from lorakit.errors import LorakitError
from lorakit.templates import Template, render

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Conversations the merge check renders with the training template: short, with and without a system message.
_CHECK_CONVERSATIONS = (
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Name a primary colour."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Count to three."}],
)
CHECK_PROMPTS = len(_CHECK_CONVERSATIONS)


def check_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path, tokenizer: PreTrainedTokenizerBase,
                template: Template, quantization: str | None, config: MergeConfig) -> tuple[float, float]:
    """(max abs logit diff, mean KL(base+adapter || merged) per token) on rendered chat prompts.

    The two models are loaded one after the other, so memory holds one at a time. Raises LorakitError when the KL
    exceeds `check_tolerance`: a merged folder that answers differently must not be left behind.
    """
    from transformers import AutoModelForCausalLM

    from lorakit.model import resolve_device

    device = resolve_device(config.device)
    prompts = [torch.tensor([ids], device=device) for ids in _check_prompts(tokenizer, template)]
    reference = _logits(lambda: _reference_model(base_dir, adapter_dir, quantization, device), prompts)
    merged = _logits(lambda: AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).to(device),
                     prompts)
    max_abs_diff = max((a - b).abs().max().item() for a, b in zip(reference, merged))
    log_p = torch.cat([logits.log_softmax(-1) for logits in reference])
    log_q = torch.cat([logits.log_softmax(-1) for logits in merged])
    kl = max((log_p.exp() * (log_p - log_q)).sum(-1).mean().item(), 0.0)  # rounding can dip below 0
    if not kl <= config.check_tolerance:
        raise LorakitError(f"Merge check failed: the merged model's logits differ from base + adapter by up to "
                           f"{max_abs_diff:.3g} (KL {kl:.3g} nats per token, above check_tolerance "
                           f"{config.check_tolerance}). Nothing was written to {config.output}. Check that base is "
                           "the model the adapter was trained on; with dtype float16 or bfloat16, try float32.")
    return max_abs_diff, kl


def _check_prompts(tokenizer: PreTrainedTokenizerBase, template: Template) -> list[list[int]]:
    from lorakit.errors import DataError

    prompts = []
    for messages in _CHECK_CONVERSATIONS:
        try:
            text = render(template, tokenizer, messages, add_generation_prompt=True)
        except DataError:  # a template without, say, a system role: the other prompts still check the merge
            continue
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not prompts:
        prompts.append(tokenizer(_CHECK_CONVERSATIONS[0][0]["content"], add_special_tokens=False)["input_ids"])
    return prompts


def _reference_model(base_dir: Path, adapter_dir: Path, quantization: str | None,
                     device: torch.device) -> PreTrainedModel:
    """Base + adapter through PEFT, the base in 4/8-bit when the merge replays QLoRA's quantisation."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.model import bitsandbytes_config

    if quantization:
        base = AutoModelForCausalLM.from_pretrained(
            str(base_dir), dtype=torch.float32, quantization_config=bitsandbytes_config(quantization, torch.float32),
            device_map={"": device.index or 0} if device.type == "cuda" else {"": device.type})
    else:
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).to(device)
    return PeftModel.from_pretrained(base, str(adapter_dir))


@torch.inference_mode()
def _logits(load: Callable[[], PreTrainedModel], prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each prompt's logits (float32, on the CPU) from the model `load` returns, released before this returns."""
    model = load().eval()
    logits = [model(input_ids=ids).logits[0].float().cpu() for ids in prompts]
    del model
    gc.collect()
    return logits


__all__ = ["CHECK_PROMPTS", "check_merge"]
