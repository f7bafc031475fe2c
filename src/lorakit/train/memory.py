"""Memory before training: an estimate of what a run needs, and a smaller micro-batch when it would not fit.

The estimate counts frozen weights, the trainable parameters with their gradients and AdamW state, activations kept
for the backward pass (per token and layer, from the model's shapes) and the loss's logits chunk. It is a planning
figure, not a promise: allocator overhead and the Python process itself come on top (counted as a fixed reserve).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import psutil
import torch
from transformers import PreTrainedModel

from lorakit.config import TrainConfig
from lorakit.train.loss import CHUNK_TOKENS, uses_fused_loss
from lorakit.train.packing import attends_with_matmuls

GIB = 2**30
PROCESS_RESERVE = int(1.0 * GIB)  # python, torch, tokenizer, data, allocator slack


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed by one training run, by part."""

    weights: int
    trainable: int
    activations: int
    logits: int
    reserve: int
    batch_tokens: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.logits + self.reserve

    def describe(self) -> str:
        parts = (("weights", self.weights), ("trainable+grads+AdamW", self.trainable),
                 (f"activations ({self.batch_tokens} tokens)", self.activations), ("loss logits", self.logits),
                 ("process", self.reserve))
        return (f"memory estimate {self.total / GIB:.1f} GiB: "
                + ", ".join(f"{name} {size / GIB:.2f}" for name, size in parts))


def estimate_memory(model: PreTrainedModel, example_lengths: list[int], batch_size: int) -> MemoryEstimate:
    """What training `model` on micro-batches of `batch_size` examples needs at its largest batch."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * (4 + 4 + 8)
    longest = sorted(example_lengths, reverse=True)[:batch_size]
    tokens = sum(longest)
    compute_dtype = next((p.dtype for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)),
                         torch.float32)
    compute_bytes = compute_dtype.itemsize
    hidden, inner = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    # Kept for backward per token and layer: norm inputs (fp32), attention in/outs and the adapters' dropped
    # inputs (~9 x hidden), MLP activations and the down projection's dropped input (~5 x intermediate).
    per_token_layer = 2 * hidden * 4 + (9 * hidden + 5 * inner) * compute_bytes
    heads = config.num_attention_heads
    # CPU matmul attention keeps each layer's probabilities for backward; one layer's scores exist at a time.
    attention = sum(heads * length * length * compute_bytes
                    for length in longest if attends_with_matmuls(length, compute_dtype))
    activations = config.num_hidden_layers * (tokens * per_token_layer + attention) + attention
    fused_loss = uses_fused_loss(model.get_output_embeddings(), getattr(config, "final_logit_softcapping", None))
    # Fused loss: its workspace, one chunk of logits in fp32 plus one in the compute dtype when that is 16-bit.
    # Otherwise: the chunk's logits in the compute dtype, their fp32 copy and the fp32 log-softmax.
    per_logit = (4 + (compute_bytes if compute_bytes < 4 else 0)) if fused_loss else 8 + compute_bytes
    logits = min(tokens, CHUNK_TOKENS) * config.vocab_size * per_logit
    return MemoryEstimate(weights, trainable, activations, logits, PROCESS_RESERVE, tokens)


def available_memory(device: torch.device) -> int:
    """Bytes this process can still count on: free GPU memory, or free RAM plus what the process holds now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_allocated(device)
    return psutil.virtual_memory().available + psutil.Process().memory_info().rss


def fit_micro_batch(model: PreTrainedModel, example_lengths: list[int], config: TrainConfig,
                    available: int) -> tuple[TrainConfig, MemoryEstimate]:
    """Halve the micro-batch (doubling accumulation, so the effective batch stays) until the estimate fits."""
    estimate = estimate_memory(model, example_lengths, config.batch_size)
    while estimate.total > available and config.batch_size > 1:
        config = replace(config, batch_size=config.batch_size // 2,
                         gradient_accumulation=config.gradient_accumulation * 2)
        estimate = estimate_memory(model, example_lengths, config.batch_size)
    return config, estimate


@dataclass(frozen=True)
class MemoryPlan:
    """What a run of a config would need, said before it starts: the estimate at its batch size, what this machine
    has, and the micro-batch training would fall back to (the effective batch stays)."""

    estimate: MemoryEstimate
    available: int
    batch_size: int
    fitted_batch_size: int

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.available


def training_lengths(data, config: TrainConfig) -> list[int]:
    """The token count of each training example of `data` (a train.PreparedData), as the estimate counts them."""
    return [min(n, config.data.max_seq_len) for n in data.train_summary.lengths] or \
        [len(ids) for ids in data.train["input_ids"]]


def plan_memory(config: TrainConfig, lengths: list[int]) -> MemoryPlan:
    """The memory estimate of `config` for examples of `lengths` tokens, without loading its weights: the model is
    built on the meta device in its training dtype with its adapters attached.

    Quantized linear weights are counted at 4 or 8 bits, the rest of the model at the compute dtype.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorakit.model import prepare_for_training, resolve_dtype, resolve_device, resolve_model_path

    device = resolve_device(config.model.device)
    dtype = resolve_dtype(config.model.dtype, device)
    model_config = AutoConfig.from_pretrained(resolve_model_path(config.model.name),
                                              trust_remote_code=config.model.trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype,
                                                 trust_remote_code=config.model.trust_remote_code)
    quantized = config.model.quantization
    plain_config = replace(config, model=replace(config.model, quantization="none"))
    model = prepare_for_training(model, plain_config if quantized != "none" else config)
    saving = _quantization_saving(model, quantized) if quantized != "none" else 0
    available = available_memory(device)
    fitted, estimate = fit_micro_batch(model, lengths, config, available + saving)
    return MemoryPlan(replace(estimate, weights=estimate.weights - saving), available, config.batch_size,
                      fitted.batch_size)


def _quantization_saving(model: PreTrainedModel, quantization: str) -> int:
    """Bytes saved by storing the frozen linear weights of the decoder layers in 4 or 8 bits."""
    bits = 4 if quantization == "4bit" else 8
    saved = 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and weight is not None and not weight.requires_grad \
                and "lm_head" not in name and "lora_" not in name:
            saved += weight.numel() * weight.element_size() - weight.numel() * bits // 8
    return saved
