"""Per-example causal attention on the CPU, forward + backward: lorakit's matmul path against torch's flash kernel
(SDPA), side by side in one process, in float32 and bf16, for SmolLM2's heads (9 query, 3 key/value, 64 wide).

train/packing.py takes the matmul path for 16-bit examples of up to 512 tokens and SDPA otherwise; this prints the
figures that choice rests on for the machine it runs on (hold it to AVX2 with ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2).

    python bench/attention_cpu.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import machine_line  # noqa: E402

from lorakit.model import cpu_supports_bf16  # noqa: E402
from lorakit.train.packing import _matmul_attention  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, SCALING = 9, 3, 64, 0.125


def milliseconds(attend, length: int, dtype: torch.dtype, repeats: int = 10) -> float:
    q = torch.randn(1, HEADS, length, HEAD_DIM, dtype=dtype, requires_grad=True)
    k = torch.randn(1, KV_HEADS, length, HEAD_DIM, dtype=dtype, requires_grad=True)
    v = torch.randn(1, KV_HEADS, length, HEAD_DIM, dtype=dtype, requires_grad=True)
    for _ in range(2):
        attend(q, k, v).sum().backward()
    started = time.perf_counter()
    for _ in range(repeats):
        attend(q, k, v).sum().backward()
    return (time.perf_counter() - started) / repeats * 1e3


def matmul_path(q, k, v):
    return _matmul_attention(q, k, v, q.shape[2], SCALING)


def flash_kernel(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=SCALING, enable_gqa=True)


def main() -> None:
    print(machine_line())
    print(f"{'dtype':15} {'tokens':>6} {'matmul ms':>10} {'flash ms':>9} {'flash/matmul':>13}")
    # bf16 only where the CPU computes it natively: elsewhere lorakit trains in float32 and bf16 would be emulated.
    for dtype in (torch.float32, torch.bfloat16) if cpu_supports_bf16() else (torch.float32,):
        for length in (100, 250, 450):
            # Alternated and repeated, so a neighbour slowing the host hits both paths alike; the medians are kept.
            pairs = [(milliseconds(matmul_path, length, dtype), milliseconds(flash_kernel, length, dtype))
                     for _ in range(3)]
            matmul, flash = (statistics.median(times) for times in zip(*pairs))
            print(f"{str(dtype):15} {length:6} {matmul:10.2f} {flash:9.2f} {flash / matmul:12.2f}x")


if __name__ == "__main__":
    main()
