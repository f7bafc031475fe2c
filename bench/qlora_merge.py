"""What merging a QLoRA adapter costs: held-out perplexity of base(4-bit) + adapter against the merged folders.

A short QLoRA run (lorakit's own training, base loaded in 4-bit NF4 through bitsandbytes) on the bench set, then
`merge_adapter` twice: onto dequant(quant(W)), the weights the adapter was trained against (`onto=quantized`), and
onto the original weights (`onto=full`). All models are scored in float32 on the same held-out records (the last
ones of the set, never trained on) by `lorakit.eval.perplexity`, as training scores validation data.

    python bench/qlora_merge.py                                    # gemma3-270m, 30 steps
    python bench/qlora_merge.py --model smollm2-135m --steps 20

On an AMD EPYC (family 25, model 1), 2 vCPUs (KVM, avx2 fma, shared with other jobs), torch 2.13 CPU, bitsandbytes
0.50.2, `--steps 24 --train-records 96 --heldout-records 16` (the bundled tokenizer has no chat template, so lorakit's
`default` one), held-out perplexity: base fp32 299.7, base 4-bit 457.2, base 4-bit + adapter 5.8402, merged onto
dequant(W4) 5.8402, merged onto W 6.2076 (train 850 s, each merge 32-47 s with its check). After only 4 steps the
order flips (66.0 as trained and onto=quantized, 56.6 onto=full): an adapter that has not yet learned around the
4-bit rounding loses less than the rounding costs.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import torch

from allocator import machine

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "bench" / "bench_alpaca.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-records", type=int, default=120)
    parser.add_argument("--heldout-records", type=int, default=24)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--work-dir", type=Path, default=None, help="Keep the run and merged folders here.")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="qlora-merge-"))
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    started = time.time()
    run_dir = _train(args, work / "run")
    print(f"QLoRA run: {args.steps} steps on {args.train_records} records in {time.time() - started:.0f} s")
    merged = {onto: _merge(run_dir, work / f"merged-{onto}", onto) for onto in ("quantized", "full")}
    for name, load in _models(args.model, run_dir, merged).items():
        print(f"{name:<40} perplexity {_perplexity(load(), run_dir, args):.4f}")


def _train(args: argparse.Namespace, run_dir: Path) -> Path:
    from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
    from lorakit.train import run_training

    config = TrainConfig(model=ModelConfig(name=args.model, quantization="4bit", device="cpu", dtype="float32"),
                         data=DataConfig(paths=(str(DATA),), max_samples=args.train_records,
                                         max_seq_len=args.max_seq_len),
                         lora=LoraConfig(rank=16, alpha=32, dropout=0.0), output_dir=run_dir, max_steps=args.steps,
                         batch_size=4, learning_rate=1e-3, logging_steps=10, save_total_limit=1)
    run_training(config, progress=False)
    return run_dir


def _merge(run_dir: Path, output: Path, onto: str) -> Path:
    from lorakit.config.export import MergeConfig
    from lorakit.export.merge import merge_adapter

    started = time.time()
    report = merge_adapter(MergeConfig(source=run_dir, output=output, onto=onto, force=True))
    print(f"merge onto={onto}: merged onto {report.merged_onto} in {time.time() - started:.0f} s (check included); "
          f"check vs its base + adapter: max abs diff {report.max_abs_diff:.3g}, KL {report.kl_divergence:.3g}")
    return output


def _models(model: str, run_dir: Path, merged: dict[str, Path]) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.config import ModelConfig
    from lorakit.model import load_model

    def quantized(adapter: bool):
        base = load_model(ModelConfig(name=model, quantization="4bit", device="cpu", dtype="float32"))
        return PeftModel.from_pretrained(base, str(run_dir / "adapter")) if adapter else base

    def full_base():
        return load_model(ModelConfig(name=model, device="cpu", dtype="float32"))

    def folder(path: Path):
        return lambda: AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)

    return {"base, full precision (no adapter)": full_base,
            "base 4-bit (no adapter)": lambda: quantized(False),
            "base 4-bit + adapter (as trained)": lambda: quantized(True),
            "merged onto dequant(W4) (onto=quantized)": folder(merged["quantized"]),
            "merged onto W (onto=full)": folder(merged["full"])}


def _perplexity(model, run_dir: Path, args: argparse.Namespace) -> float:
    from transformers import AutoTokenizer

    from lorakit.config import DataConfig
    from lorakit.data import load_conversations
    from lorakit.eval.perplexity import evaluate_perplexity
    from lorakit.runs import open_run

    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    template = open_run(run_dir).template(tokenizer)
    data = DataConfig(paths=(str(DATA),), max_seq_len=args.max_seq_len)
    conversations, _ = load_conversations(data)
    result = evaluate_perplexity(model, tokenizer, template, conversations[-args.heldout_records:], data,
                                 progress=False)
    del model
    gc.collect()
    return result["perplexity"]


if __name__ == "__main__":
    main()
