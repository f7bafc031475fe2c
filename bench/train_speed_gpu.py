"""GPU check of the training path: plain Trainer + PEFT (bf16 autocast, padded) vs lorakit, same batches, on CUDA.

Weights are random (a SmolLM2-135M-shaped Llama built from its config) and so are the token ids, with lengths drawn
like the CPU benchmark's data: speed and memory do not depend on what the weights or tokens say.

    python bench/train_speed_gpu.py --steps 100 --batch-size 8
"""

from __future__ import annotations

import argparse
import gc
import random
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)


def examples(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        length = min(512, max(53, int(rng.lognormvariate(5.15, 0.5))))
        ids = [rng.randrange(10, 49152) for _ in range(length)]
        prompt = length * 2 // 5
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def model(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to(dtype).cuda()


def _release_previous_run() -> None:
    """Free what earlier runs left (reference cycles, cached blocks) so each peak is this run's own."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def run_plain(rows, args) -> tuple[float, int]:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from lorakit.data import pad_batch

    peft_model = get_peft_model(model(torch.float32), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                                  target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer = Trainer(model=peft_model, train_dataset=Dataset.from_list(rows),
                      data_collator=lambda f: pad_batch(f, 0),
                      args=TrainingArguments(output_dir="/tmp/plain", per_device_train_batch_size=args.batch_size,
                                             max_steps=args.steps, bf16=True, report_to=[], save_strategy="no",
                                             train_sampling_strategy="sequential", remove_unused_columns=False,
                                             disable_tqdm=True, logging_steps=10**6))
    _release_previous_run()
    started = time.time()
    trainer.train()
    return time.time() - started, torch.cuda.max_memory_allocated()


def run_lorakit(rows, args) -> tuple[float, int]:
    from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
    from lorakit.data import LoadSummary, TokenizeSummary
    from lorakit.templates import TEMPLATES
    from lorakit.train import PreparedData, train

    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0, "<unk>": 1}, "<unk>")),
                                        pad_token="<pad>", unk_token="<unk>", eos_token="<pad>")
    config = TrainConfig(model=ModelConfig(name="random"), data=DataConfig(max_seq_len=512),
                         lora=LoraConfig(rank=8, alpha=16, dropout=0.05), output_dir=args.workdir / "lorakit",
                         max_steps=args.steps, batch_size=args.batch_size, logging_steps=10**6,
                         example_order="sequential", save_steps=10**6, padding_free=not args.padded)
    data = PreparedData(Dataset.from_list(rows), None, TEMPLATES["chatml"], LoadSummary(),
                        TokenizeSummary(examples=len(rows)), None)
    base = model(torch.bfloat16)
    _release_previous_run()
    started = time.time()
    train(base, tokenizer, data, config)
    return time.time() - started, torch.cuda.max_memory_allocated()


def main() -> None:
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps of each recipe before timing")
    parser.add_argument("--padded", action="store_true", help="lorakit with padded batches, not padding-free")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lorakit-gpu-bench"))
    args = parser.parse_args()
    rows = examples(args.steps * args.batch_size)
    tokens = sum(len(r["input_ids"]) for r in rows)
    runners = (("plain", run_plain), ("lorakit", run_lorakit))
    # CUDA context, cuBLAS handles and kernel loading would otherwise be charged to whichever recipe runs first.
    warmup = argparse.Namespace(**{**vars(args), "steps": args.warmup_steps})
    for _, runner in runners:
        runner(rows[:args.warmup_steps * args.batch_size], warmup)
    results = {name: runner(rows, args) for name, runner in runners}
    print(f"\n{torch.cuda.get_device_name()}, SmolLM2-135M-shaped random Llama, LoRA r=8 all-linear, batch "
          f"{args.batch_size}, {args.steps} steps, {tokens} non-padding tokens")
    for name, (seconds, memory) in results.items():
        print(f"{name:8} {tokens / seconds:10.0f} tokens/s  peak GPU memory {memory / 2**30:.2f} GiB "
              f"(wall {seconds:.1f} s, outputs written included)")
    plain, ours = results["plain"], results["lorakit"]
    print(f"lorakit / plain: tokens/s x{plain[0] / ours[0]:.2f}, peak memory x{ours[1] / plain[1]:.2f}")


if __name__ == "__main__":
    main()
