"""The demo: teach the bundled SmolLM2 a new identity and a small tea-house domain, then show base vs tuned answers.

`run_demo()` is what `make demo` runs; it uses only bundled data and the bundled default model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from lorakit.infer import GenerationConfig, generate
from lorakit.model import load_model, load_tokenizer
from lorakit.templates import resolve_template
from lorakit.train import prepare_data, train

SAMPLES = Path(str(files("lorakit") / "samples"))


@dataclass(frozen=True)
class DemoRow:
    question: str
    expect: str
    base: str
    tuned: str


def demo_config(output_dir: Path, model_name: str = "smollm2-135m") -> TrainConfig:
    """Hyperparameters that teach the sample set in a few CPU minutes."""
    return TrainConfig(
        model=ModelConfig(name=model_name),
        data=DataConfig(paths=(str(SAMPLES / "demo_train.json"),), max_seq_len=256),
        lora=LoraConfig(rank=16, alpha=32, dropout=0.0),
        output_dir=output_dir,
        learning_rate=1e-3,
        epochs=4,
        batch_size=8,
        warmup_ratio=0.05,
        logging_steps=5,
        save_total_limit=1,
    )


def run_demo(output_dir: Path, model_name: str = "smollm2-135m") -> list[DemoRow]:
    """Answer the held-out questions with the base model, fine-tune, answer again; return both sets of answers."""
    config = demo_config(output_dir, model_name)
    heldout = json.loads((SAMPLES / "demo_heldout.json").read_text(encoding="utf-8"))
    questions = [[{"role": "user", "content": item["question"]}] for item in heldout]
    tokenizer = load_tokenizer(config.model)
    data = prepare_data(config, tokenizer)
    model = load_model(config.model)
    settings = GenerationConfig(max_new_tokens=48)
    base_answers = generate(model, tokenizer, resolve_template(config.data.template, tokenizer), questions, settings)
    train(model, tokenizer, data, config)
    model.eval()  # LoRA was injected into this same model object
    tuned_answers = generate(model, tokenizer, data.template, questions, settings)
    return [DemoRow(item["question"], item["expect"], base, tuned)
            for item, base, tuned in zip(heldout, base_answers, tuned_answers)]
