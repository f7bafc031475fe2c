"""Padding-free batches: a micro-batch's examples concatenated into one row, each attending only to itself.

Positions restart at every example and attention runs per example (varlen), so the cost is the sum of each example's
own quadratic attention rather than that of one dense mask over the whole row. The same examples make up each step
as in a padded batch, so the model learns exactly what it would have learned with padding, minus the padding work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from lorakit.data.tokenize import IGNORE_INDEX

VARLEN_ATTENTION = "lorakit_varlen"
MATMUL_ATTENTION_MAX_TOKENS = 512
_VARLEN_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def concatenate_batch(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor | int]:
    """One [1, total] row of the examples, with position_ids restarting per example and the varlen boundaries.

    The first label of every example is masked: in the row it would be predicted from the previous example.
    """
    input_ids, labels, position_ids, boundaries = [], [], [], [0]
    for feature in features:
        length = len(feature["input_ids"])
        input_ids.extend(feature["input_ids"])
        labels.extend([IGNORE_INDEX, *feature["labels"][1:]])
        position_ids.extend(range(length))
        boundaries.append(boundaries[-1] + length)
    cu_seq_lens = torch.tensor(boundaries, dtype=torch.int32)
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    # The same boundaries as plain ints: reading them back from a GPU tensor in every layer would stall the GPU.
    return {"segment_bounds": tuple(boundaries), "input_ids": torch.tensor([input_ids]),
            "labels": torch.tensor([labels]),
            "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long),  # only counted, never a dense mask
            "position_ids": torch.tensor([position_ids]), "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest, "max_length_k": longest}


def _varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """Causal SDPA run separately on each example of a concatenated row (query: [1, heads, total, head_dim]).

    Own loop rather than flash-attn's varlen kernel: that kernel is CUDA-only, and this must run on laptops' CPUs.
    Without boundaries (generation, evaluation of padded batches) it is plain SDPA.
    """
    boundaries = kwargs.get("segment_bounds")
    if boundaries is None and kwargs.get("cu_seq_lens_q") is not None:
        boundaries = kwargs["cu_seq_lens_q"].tolist()
    if boundaries is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    dropout = dropout if module.training else 0.0
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    # One output per example, joined by cat: its backward is a few views, where assigning slices of a preallocated
    # output made a full-size gradient buffer per example.
    output = torch.cat([_attend(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], window,
                                scaling, dropout) for start, end in zip(boundaries[:-1], boundaries[1:])], dim=2)
    return output.transpose(1, 2).contiguous(), None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, scaling: float,
            dropout: float) -> torch.Tensor:
    """Causal attention of one example. On CPU, short examples use plain matmuls: measured 1.7-2.9x faster than
    torch's CPU flash kernel (fwd+bwd, bf16, 150-320 tokens) at a memory cost (6 bytes per head per token pair) kept small by the length cap."""
    length = q.shape[2]
    windowed = window is not None and length > window
    if q.device.type == "cpu" and length <= MATMUL_ATTENTION_MAX_TOKENS and dropout == 0.0:
        groups = q.shape[1] // k.shape[1]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        allowed = _sliding_causal_mask(length, window if windowed else length, q.device)
        scores = (q @ k.transpose(-1, -2)).float() * scaling
        probabilities = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).to(v.dtype)
        return probabilities @ v
    mask = _sliding_causal_mask(length, window, q.device) if windowed else None
    # Not cuDNN: it builds a plan for every new length (~2.4 ms of CPU per call on an H100), and here every example
    # has its own length; flash and memory-efficient kernels start at once.
    with sdpa_kernel(_VARLEN_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout,
                                              scale=scaling, enable_gqa=k.shape[1] != q.shape[1])


def _sliding_causal_mask(length: int, window: int, device: torch.device) -> torch.Tensor:
    positions = torch.arange(length, device=device)
    distance = positions[:, None] - positions[None, :]
    return (distance >= 0) & (distance < window)


def _no_mask(*args, **kwargs) -> None:
    """Masks come from the example boundaries, not from a dense [total x total] tensor."""
    return None


def use_varlen_attention(model: PreTrainedModel) -> str:
    """Switch `model` to per-example attention for padding-free batches; return the implementation it had."""
    AttentionInterface.register(VARLEN_ATTENTION, _varlen_attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _no_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(VARLEN_ATTENTION)
    return previous


def supports_padding_free(model: PreTrainedModel) -> bool:
    """Padding-free needs attention that takes position_ids and kwargs through (all current decoder-only LMs)."""
    config = model.config
    return (getattr(config, "attn_logit_softcapping", None) is None
            and config._attn_implementation in ("sdpa", "eager", VARLEN_ATTENTION))
