"""Padding-free batches: a micro-batch's examples concatenated into one row, each attending only to itself.

Positions restart at every example and attention runs per example (varlen), so the cost is the sum of each example's
own quadratic attention rather than that of one dense mask over the whole row. The same examples make up each step
as in a padded batch, so the model learns exactly what it would have learned with padding, minus the padding work.
"""

from __future__ import annotations

import functools
import inspect

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
    """Causal attention within each example of a concatenated row (query: [1, heads, total, head_dim]).

    On CUDA, torch's varlen flash kernel takes all examples at once; elsewhere (CPU, fp32, dropout) each example
    is attended on its own, since that kernel is CUDA-only and this must run on laptops' CPUs. Without boundaries
    (generation, evaluation of padded batches) it is plain SDPA.
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
    fused = _flash_varlen(query, key, value, kwargs, window, scaling, dropout)
    if fused is not None:
        return fused, None
    # One output per example, joined by cat: its backward is a few views, where assigning slices of a preallocated
    # output made a full-size gradient buffer per example.
    output = torch.cat([_attend(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], window,
                                scaling, dropout) for start, end in zip(boundaries[:-1], boundaries[1:])], dim=2)
    return output.transpose(1, 2).contiguous(), None


def _flash_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kwargs: dict, window: int | None,
                  scaling: float, dropout: float) -> torch.Tensor | None:
    """All examples in one call of torch's varlen flash kernel (CUDA sm80+, 16-bit), or None where it does not apply.

    Measured on an H100 (SmolLM2's heads, 8 examples of 53-498 tokens, fwd+bwd): 0.9 ms against 5.7 ms for the
    per-example loop. The function's keywords changed between torch releases (is_causal in 2.10, scale and
    window_size from 2.11, enable_gqa from 2.12), so they are read from its signature.
    """
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    head_dim = query.shape[-1]
    if (cu_seq_lens is None or dropout or query.shape[0] != 1 or query.dtype not in (torch.float16, torch.bfloat16)
            or head_dim > 256 or head_dim % 8 or not query.is_cuda or torch.version.hip is not None
            or torch.cuda.get_device_capability(query.device) < (8, 0)):
        return None  # outside what the flash kernel takes (head sizes, ROCm, pre-Ampere): the per-example loop
    parameters = _varlen_kernel_parameters()
    if parameters is None or "scale" not in parameters or ("window_size" not in parameters and window):
        return None
    from torch.nn.attention.varlen import varlen_attn

    options: dict = {"scale": scaling}
    if "window_size" in parameters:
        options["window_size"] = (window - 1 if window else -1, 0)  # (left, right): causal; a window counts itself
    else:
        options["is_causal"] = True
    if "enable_gqa" in parameters:
        options["enable_gqa"] = key.shape[1] != query.shape[1]
    cu_seq_lens = cu_seq_lens.to(query.device, torch.int32)
    longest = int(kwargs.get("max_length_q") or (cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    output = varlen_attn(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu_seq_lens,
                         cu_seq_lens, longest, longest, **options)
    return output[None]


@functools.cache
def _varlen_kernel_parameters() -> frozenset[str] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return frozenset(inspect.signature(varlen_attn).parameters)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, scaling: float,
            dropout: float) -> torch.Tensor:
    """Causal attention of one example: plain matmuls for short 16-bit examples on CPU, else SDPA's kernels.

    Only 16-bit: in float32 torch's CPU flash kernel is the faster one (fwd+bwd, SmolLM2's heads, 100-450 tokens:
    3-35% faster than the matmul path on two AVX-512 Xeons, also when held to AVX2), in bf16 it is 2-3x slower.
    `bench/attention_cpu.py` measures both on the machine at hand.
    """
    length = q.shape[2]
    windowed = window is not None and length > window
    if q.device.type == "cpu" and dropout == 0.0 and attends_with_matmuls(length, q.dtype):
        return _matmul_attention(q, k, v, window if windowed else length, scaling)
    mask = _sliding_causal_mask(length, window, q.device) if windowed else None
    # Not cuDNN: it builds a plan for every new length (~2.4 ms of CPU per call on an H100), and here every example
    # has its own length; flash and memory-efficient kernels start at once.
    with sdpa_kernel(_VARLEN_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=dropout,
                                              scale=scaling, enable_gqa=k.shape[1] != q.shape[1])


def attends_with_matmuls(length: int, dtype: torch.dtype) -> bool:
    """Whether a CPU example of `length` tokens in `dtype` takes the matmul path, which keeps its attention
    probabilities for backward (the memory estimate counts them)."""
    return dtype in (torch.bfloat16, torch.float16) and length <= MATMUL_ATTENTION_MAX_TOKENS


def _matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                      scaling: float) -> torch.Tensor:
    """softmax(q k^T * scaling + causal bias) v in the compute dtype, for q [batch, heads, length, head_dim].

    Measured against torch's CPU flash kernel (fwd+bwd, bf16, 150-450 tokens, SmolLM2's heads): 4-5x faster, at a
    memory cost (scores and probabilities: 4 bytes per head per token pair in bf16) kept small by the length cap.
    The query heads that share a key/value head are stacked into one matmul, so keys and values are never repeated
    for GQA. baddbmm adds the causal bias and applies the scaling inside the matmul, and softmax takes bf16 scores
    (torch accumulates in fp32 inside the kernel): no fp32 copy of the scores and no separate passes for scaling and
    masking, 2-2.5x faster than doing those steps one by one in fp32.
    """
    batch, heads, length, head_dim = q.shape
    kv_heads = k.shape[1]
    groups = heads // kv_heads
    allowed = _sliding_causal_mask(length, window, q.device)
    bias = torch.zeros(length, length, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
    stacked_queries = q.reshape(batch * kv_heads, groups * length, head_dim)
    keys = k.reshape(batch * kv_heads, length, head_dim)
    scores = torch.baddbmm(bias.repeat(groups, 1).expand(batch * kv_heads, -1, -1), stacked_queries,
                           keys.transpose(1, 2), alpha=scaling)
    probabilities = torch.softmax(scores, dim=-1)
    return (probabilities @ v.reshape(batch * kv_heads, length, head_dim)).view(batch, heads, length, head_dim)


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
