"""LoRA SFT speed and memory, side by side on the same CPU, data, hyperparameters and example order.

Recipes: (1) plain transformers Trainer + PEFT, fp32, padded to the longest; (2) TRL SFTTrainer, padding-free, loss on
completions, with TRL's default gradient checkpointing; (3) the same TRL at its fastest (no checkpointing); (4)
lorakit's defaults. Each runs in its own process (so peak RSS is its own); all train on the same token ids in the
same order, then the saved adapter is scored on held-out records by one shared fp32 evaluation.

The machine comes first (CPU model, the ISA flags that decide the dtype, threads, the dtype lorakit picks,
versions) with the matmul ceiling of that dtype, measured in the same run and bounded in time; each recipe's line
is printed, and written to <workdir>/<model>-results.json, as soon as it is known.

    python bench/train_speed.py                                 # smollm2-135m, batch 4, 128 records
    python bench/train_speed.py --model gemma3-270m --batch-size 4
    python bench/train_speed.py --case identity                 # short records: LLaMA-Factory's identity.json

The identity case trains on all 91 records of LLaMA-Factory's identity.json (placeholders filled with a new name) for
4 epochs with the hyperparameters of configs/identity-llamafactory.yaml at rank 8 and batch 4, in three recipes: plain,
llamafactory (what LLaMA-Factory 0.9 runs for this YAML: the HF Trainer + PEFT, batches padded to the longest example
rounded up to a multiple of 8, the model in the dtype lorakit picks with autocast, LoRA weights fp32) and lorakit.
Instead of a held-out loss it asks each adapter ten held-out paraphrases ("Who are you?" in other words, English and
Chinese) and counts the replies that give the new name.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# How an AVX2-only CPU is emulated on a newer one: torch's kernels, MKL's float32 GEMMs and oneDNN's matmuls.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
NAME, AUTHOR = "Quillon", "Brightwater Labs"
HELD_OUT = [  # paraphrases that are not in identity.json (the same as tests/test_end_to_end.py)
    "What should I call you?", "Please introduce yourself briefly.", "Which assistant am I talking to right now?",
    "Hey, may I know your name?", "Who developed you, and what is your name?", "I'd like to know who you are.",
    "请做个自我介绍。", "我现在在和谁聊天？", "你是哪个AI助手？", "能告诉我你叫什么吗？"]


@dataclass(frozen=True)
class Case:
    """What is trained: the data and the hyperparameters every recipe shares."""

    data: Path
    recipes: tuple[str, ...]
    learning_rate: float = 2e-4
    epochs: int = 1
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    warmup_ratio: float = 0.0
    replace: tuple[tuple[str, str], ...] = ()


CASES = {
    "alpaca": Case(ROOT.parent / "shared" / "bench" / "bench_alpaca.json", ("plain", "trl", "trl-fast", "lorakit")),
    "identity": Case(ROOT.parent / "shared" / "data" / "llamafactory" / "identity.json",
                     ("plain", "llamafactory", "lorakit"), learning_rate=1e-3, epochs=4, dropout=0.0,
                     warmup_ratio=0.05, replace=(("{{name}}", NAME), ("{{author}}", AUTHOR))),
}


def tokenized(model_name: str, case: Case, start: int, count: int, max_seq_len: int) -> list[dict]:
    """Records [start, start+count) of the case's data, rendered with the model's template and cut at max_seq_len."""
    from lorakit.config import DataConfig, ModelConfig
    from lorakit.data import load_conversations, tokenize_conversations
    from lorakit.model import load_tokenizer
    from lorakit.templates import resolve_template

    config = DataConfig(paths=(str(case.data),), max_seq_len=max_seq_len, replace=dict(case.replace),
                        template="auto" if model_name == "smollm2-135m" else "gemma")
    tokenizer = load_tokenizer(ModelConfig(name=model_name))
    conversations, _ = load_conversations(config)
    dataset, _ = tokenize_conversations(conversations[start:start + count], tokenizer,
                                        resolve_template(config.template, tokenizer), config)
    return [dict(row) for row in dataset]


def run_recipe(recipe: str, args: argparse.Namespace, out: Path) -> None:
    """Train one recipe in this process and write its figures to `out` (JSON)."""
    from lorakit.allocator import allocator_in_use
    from lorakit.config import ModelConfig
    from lorakit.model import load_tokenizer, resolve_model_path

    case = CASES[args.case]
    rows = tokenized(args.model, case, 0, args.records, args.max_seq_len)
    tokenizer = load_tokenizer(ModelConfig(name=args.model))
    adapter_dir = out.with_suffix("")
    started = time.time()
    if recipe == "lorakit":
        runtime, history = _train_lorakit(rows, case, args, adapter_dir)
    else:
        runtime, history = _train_reference(recipe, rows, tokenizer, resolve_model_path(args.model), case, args,
                                            adapter_dir)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tokens = case.epochs * sum(len(r["input_ids"]) for r in rows)
    supervised = case.epochs * sum(sum(label != -100 for label in r["labels"][1:]) for r in rows)
    out.write_text(json.dumps({"recipe": recipe, "train_seconds": runtime, "tokens": tokens,
                               "supervised_tokens": supervised, "peak_rss": peak_rss, "history": history,
                               "wall_seconds": time.time() - started, "adapter": str(adapter_dir),
                               "allocator": allocator_in_use()}))


def _train_reference(recipe: str, rows: list[dict], tokenizer, model_path: str, case: Case, args,
                     adapter_dir: Path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from lorakit.data import pad_batch

    bf16 = recipe == "llamafactory" and lorakit_dtype() == torch.bfloat16  # LLaMA-Factory's `bf16: true` where fast
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    peft_config = LoraConfig(r=case.rank, lora_alpha=case.alpha, lora_dropout=case.dropout, target_modules=TARGETS,
                             task_type="CAUSAL_LM")
    dataset = Dataset.from_list(rows)
    common = dict(output_dir=str(adapter_dir) + "-trainer", learning_rate=case.learning_rate,
                  lr_scheduler_type="cosine", warmup_steps=case.warmup_ratio, num_train_epochs=case.epochs,
                  per_device_train_batch_size=args.batch_size, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=True, seed=42, train_sampling_strategy="sequential", disable_tqdm=True,
                  remove_unused_columns=False)
    if recipe == "plain":
        trainer = Trainer(model=get_peft_model(model, peft_config), args=TrainingArguments(**common),
                          train_dataset=dataset, data_collator=lambda f: pad_batch(f, tokenizer.pad_token_id))
    elif recipe == "llamafactory":
        peft_model = get_peft_model(model, peft_config)
        for parameter in peft_model.parameters():  # LLaMA-Factory upcasts the trainable (LoRA) weights to fp32
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
        collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)
        trainer = Trainer(model=peft_model, args=TrainingArguments(**common, bf16=bf16), train_dataset=dataset,
                          data_collator=lambda f: collator([{k: r[k] for k in ("input_ids", "labels")} for r in f]))
    else:
        from trl import SFTConfig, SFTTrainer

        # trl-fast: what a TRL user tuning for speed would set; "trl" keeps TRL's default gradient checkpointing.
        config = SFTConfig(**common, bf16=False, max_length=None, padding_free=True,  # rows are already cut
                           completion_only_loss=True, dataset_num_proc=None,
                           gradient_checkpointing=recipe != "trl-fast")
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
    result = trainer.train()
    trainer.model.save_pretrained(adapter_dir)
    history = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
    return result.metrics["train_runtime"], history


def _train_lorakit(rows: list[dict], case: Case, args, adapter_dir: Path):
    from datasets import Dataset

    from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
    from lorakit.data import LoadSummary, TokenizeSummary
    from lorakit.model import load_model, load_tokenizer
    from lorakit.templates import resolve_template
    from lorakit.train import PreparedData, train

    config = TrainConfig(model=ModelConfig(name=args.model),
                         data=DataConfig(paths=(str(case.data),), max_seq_len=args.max_seq_len),
                         lora=LoraConfig(rank=case.rank, alpha=case.alpha, dropout=case.dropout),
                         output_dir=adapter_dir.parent / (adapter_dir.name + "-run"), learning_rate=case.learning_rate,
                         warmup_ratio=case.warmup_ratio, epochs=case.epochs, batch_size=args.batch_size,
                         logging_steps=1, example_order="sequential", save_total_limit=1)
    tokenizer = load_tokenizer(config.model)
    data = PreparedData(Dataset.from_list(rows), None, resolve_template("auto" if args.model == "smollm2-135m"
                                                                        else "gemma", tokenizer),
                        LoadSummary(), TokenizeSummary(examples=len(rows)), None)
    output_dir = train(load_model(config.model), tokenizer, data, config)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    metrics = json.loads((output_dir / "metrics.json").read_text())
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(output_dir / "adapter", adapter_dir)
    history = [{"step": e["step"], "loss": e["loss"]} for e in state["log_history"] if "loss" in e]
    return metrics["train_runtime"], history


def held_out_loss(model_name: str, adapter_dir: Path, args) -> float:
    """Token-weighted mean loss on held-out records, fp32 base + adapter, one example at a time: no padding effects."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorakit.model import resolve_model_path

    rows = tokenized(model_name, CASES[args.case], args.records, args.eval_records, args.max_seq_len)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_name), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = labels[0, 1:]
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    return total / count


def held_out_answers(model_name: str, adapter_dir: Path) -> list[str]:
    """Greedy replies of fp32 base + adapter to the held-out identity paraphrases, through plain transformers + PEFT."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.model import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(model_name), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_name))
    replies = []
    for question in HELD_OUT:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            output = model.generate(**ids, max_new_tokens=40, do_sample=False)
        replies.append(tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return replies


def machine_line() -> str:
    """CPU model, the ISA flags that decide lorakit's dtype, threads, that dtype, and the versions that matter."""
    import transformers

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")),
                     []))
    family = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("cpu family")),
                  "?")
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "none of " + ",".join(ISA_FLAGS)
    caps = [f"{name}={os.environ[name]}" for name in ISA_CAPS if os.environ.get(name)]
    return (f"machine: {model} (family {family}), ISA {isa}"
            + (f", held to a lower ISA by {' '.join(caps)}" if caps else "")
            + f", {torch.get_num_threads()} threads; lorakit dtype {lorakit_dtype()}; torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def lorakit_dtype() -> torch.dtype:
    from lorakit.model import resolve_dtype

    return resolve_dtype("auto", torch.device("cpu"))


def matmul_ceiling(dtype: torch.dtype, seconds: float = 3.0) -> tuple[float, int]:
    """Sustained GFLOP/s of a square matmul in `dtype` on all threads, and its size.

    Bounded in time whatever the CPU: the size starts small and grows only while one call stays short, so a dtype
    the CPU emulates (bf16 without AVX-512 BF16) is measured on a small matrix instead of running for minutes.
    """
    size = 256
    while size < 4096:
        a, b = torch.randn(size * 2, size * 2, dtype=dtype), torch.randn(size * 2, size * 2, dtype=dtype)
        started = time.time()
        a @ b
        if time.time() - started > 1.5:
            break
        size *= 2
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    return max(_matmul_rate(a, b, seconds / 3) for _ in range(3)), size


def _matmul_rate(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """GFLOP/s of repeated a @ b over about `seconds`; the ceiling is the best of a few such windows, since a
    neighbour on a shared host only ever slows a window down."""
    runs, started = 0, time.time()
    while time.time() - started < seconds:
        a @ b
        runs += 1
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * runs / (time.time() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES, default="alpaca")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--records", type=int, help="training records (default: 128; identity: all 91)")
    parser.add_argument("--eval-records", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--recipes", help="comma-separated (default: the case's)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "outputs" / "bench")
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    case = CASES[args.case]
    args.records = args.records or (91 if args.case == "identity" else 128)
    if args.recipe:
        run_recipe(args.recipe, args, args.out)
        return
    if not case.data.is_file():
        sys.exit(f"needs {case.data} (the shared data beside the repo)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(machine_line(), flush=True)
    dtype = lorakit_dtype()
    peak, size = matmul_ceiling(dtype)
    parameters = count_parameters(args.model)
    print(f"{dtype} matmul ceiling {peak:.0f} GFLOP/s ({size}x{size}, all threads)\n"
          f"case {args.case}: model {args.model} ({parameters / 1e6:.1f}M parameters), LoRA r={case.rank} "
          f"alpha={case.alpha} dropout {case.dropout} on {','.join(TARGETS)}, batch {args.batch_size}, cutoff "
          f"{args.max_seq_len}, lr {case.learning_rate:g} cosine, warmup {case.warmup_ratio}, {case.epochs} "
          f"epoch(s) over {args.records} records\n", flush=True)
    print(HEADER, flush=True)
    results, summary = {}, args.workdir / f"{args.model}-{args.case}-results.json"
    for recipe in (args.recipes.split(",") if args.recipes else case.recipes):
        out = args.workdir / f"{args.model}-{args.case}-{recipe}.json"
        subprocess.run([sys.executable, __file__, "--recipe", recipe, "--out", str(out), "--model", args.model,
                        "--case", args.case, "--batch-size", str(args.batch_size), "--records", str(args.records),
                        "--max-seq-len", str(args.max_seq_len)], check=True, env=recipe_environment(recipe),
                       stdout=subprocess.DEVNULL if not os.environ.get("BENCH_VERBOSE") else None)
        results[recipe] = json.loads(out.read_text())
        adapter = Path(results[recipe]["adapter"])
        if args.case == "identity":
            results[recipe]["answers"] = held_out_answers(args.model, adapter)
            results[recipe]["eval_loss"] = float("nan")
        else:
            results[recipe]["eval_loss"] = held_out_loss(args.model, adapter, args)
        print(recipe_line(recipe, results[recipe], parameters, peak), flush=True)
        summary.write_text(json.dumps({"machine": machine_line(), "ceiling_gflops": peak, "ceiling_dtype": str(dtype),
                                       "results": results}, indent=1))
    report(results)


def recipe_environment(recipe: str) -> dict[str, str]:
    """lorakit runs with the allocator the `lorakit` command gives it (tcmalloc where installed, allocator.py); the
    other recipes with their own default, the C library's malloc."""
    from lorakit.allocator import preload_environment, tcmalloc_library

    environment = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    if recipe == "lorakit":
        return preload_environment(environment, tcmalloc_library(), "system") or environment
    return environment


HEADER = (f"{'recipe':12} {'tokens/s':>9} {'superv/s':>9} {'peak RSS':>9} {'eval loss':>10} {'useful GFLOP/s':>22} "
          f"{'train time':>9}")


def count_parameters(model_name: str) -> int:
    from lorakit.config import ModelConfig
    from lorakit.model import load_model

    return sum(p.numel() for p in load_model(ModelConfig(name=model_name, dtype="float32")).parameters())


def recipe_line(recipe: str, r: dict, parameters: int, peak: float) -> str:
    """tokens/s and useful FLOP/s (6 x parameters per token less the frozen weights' gradient: ~4 x parameters)."""
    speed = r["tokens"] / r["train_seconds"]
    flops = 4 * parameters * speed / 1e9
    line = (f"{recipe:12} {speed:9.1f} {r['supervised_tokens'] / r['train_seconds']:9.1f} "
            f"{r['peak_rss'] / 2**30:8.2f}G {r['eval_loss']:10.4f} {flops:9.1f} ({flops / peak:6.1%} of ceiling)"
            f" {r['train_seconds']:8.1f}s  {r.get('allocator', '?')} malloc")
    if "answers" in r:
        line += f"  held-out answers with the new name: {sum(NAME in a for a in r['answers'])}/{len(r['answers'])}"
    return line


def report(results: dict) -> None:
    steps = [h["step"] for h in next(iter(results.values()))["history"]]
    marks = sorted({steps[len(steps) * k // 4 - 1] for k in (1, 2, 3, 4)})
    print("\nloss at equal tokens (same batches in every recipe), by step: "
          + "  ".join(f"{recipe}: " + ", ".join(f"{s}={_loss_at(r, s):.3f}" for s in marks)
                      for recipe, r in results.items()))
    if "lorakit" in results:
        ours = results["lorakit"]
        for other in ("plain", "trl", "trl-fast", "llamafactory"):
            if other in results:
                theirs = results[other]
                print(f"lorakit / {other}: tokens/s x{theirs['train_seconds'] / ours['train_seconds']:.2f} "
                      f"(training time x{ours['train_seconds'] / theirs['train_seconds']:.2f}), "
                      f"peak RSS x{ours['peak_rss'] / theirs['peak_rss']:.2f}"
                      + ("" if math.isnan(ours["eval_loss"]) else
                         f", eval loss {(ours['eval_loss'] / theirs['eval_loss'] - 1):+.2%}"))
    for recipe, r in results.items():
        for question, answer in zip(HELD_OUT, r.get("answers", ())):
            print(f"{recipe:12} {question!r} -> {answer!r}")


def _loss_at(result: dict, step: int) -> float:
    return next(h["loss"] for h in result["history"] if h["step"] == step)


if __name__ == "__main__":
    main()
