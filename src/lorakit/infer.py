"""Inference stage: `generate()` answers conversations with a base model or base + adapter, batched.

The prompt is rendered with the template the adapter was trained with (saved in its tokenizer), so inference
sees exactly what training saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.errors import ConfigError
from lorakit.model import load_model, load_tokenizer
from lorakit.templates import Template, render, resolve_template


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; temperature 0 means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    batch_size: int = 8


def load_adapter(model: PreTrainedModel, adapter_dir: Path, base_name: str):
    """Put a saved PEFT adapter on `model`; refuse one whose adapter_config names another base model."""
    from peft import PeftModel

    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json). Point at the "
                          "`adapter/` folder inside a lorakit output directory.")
    _check_same_base(adapter_dir, model, base_name)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def _check_same_base(adapter_dir: Path, model: PreTrainedModel, base_name: str) -> None:
    """Shapes are the reliable signal: the same names with other sizes mean another base model."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    modules = dict(model.named_modules())
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            module = modules.get(module_name)
            shape = handle.get_slice(key).get_shape()
            expected = None
            if isinstance(module, torch.nn.Linear):
                expected = module.in_features if ".lora_A." in key else module.out_features
            found = shape[1] if ".lora_A." in key else shape[0]
            if module is None or (expected is not None and expected != found):
                trained_on = json.loads((adapter_dir / "adapter_config.json").read_text()).get(
                    "base_model_name_or_path") or "another model"
                raise ConfigError(f"Adapter {adapter_dir} was trained on {trained_on}, not on {base_name}: its "
                                  f"weight {key} does not fit this model. Load it with the base model it was "
                                  "trained on (see the adapter's README.md).")


def load_for_inference(model_config: ModelConfig, adapter_dir: Path | None = None,
                       template_name: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Template]:
    """Base model (plus adapter) with the tokenizer and template to talk to it; the adapter's own tokenizer wins."""
    tokenizer = load_tokenizer(model_config)
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    model = load_model(model_config)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir, model_config.name)
    model.eval()
    return model, tokenizer, resolve_template(template_name, tokenizer)


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
             conversations: list[list[dict]], config: GenerationConfig = GenerationConfig()) -> list[str]:
    """The assistant's reply to each conversation, generated in left-padded batches."""
    replies: list[str] = []
    device = next(model.parameters()).device
    stop_ids = _stop_token_ids(tokenizer, template)
    for start in range(0, len(conversations), config.batch_size):
        prompts = [render(template, tokenizer, messages, add_generation_prompt=True)
                   for messages in conversations[start:start + config.batch_size]]
        batch = _left_padded(tokenizer, prompts).to(device)
        sampling = {"do_sample": config.temperature > 0}
        if config.temperature > 0:
            sampling.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
        output = model.generate(**batch, max_new_tokens=config.max_new_tokens, eos_token_id=stop_ids,
                                pad_token_id=tokenizer.pad_token_id, repetition_penalty=config.repetition_penalty,
                                **sampling)
        for row in output[:, batch["input_ids"].shape[1]:]:
            replies.append(_strip_stops(tokenizer.decode(row, skip_special_tokens=True), template))
    return replies


def _left_padded(tokenizer: PreTrainedTokenizerBase, prompts: list[str]):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for word in template.stop_words:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(ids)


def _strip_stops(text: str, template: Template) -> str:
    for word in template.stop_words:
        if word and word in text:
            text = text[: text.index(word)]
    return text.strip()
