"""One process of a LoRA training run for tests/test_distributed.py, started by torchrun (or called in-process).

`python distributed_worker.py CONFIG RECORD_DIR` trains as `lorakit train CONFIG` does, and through train()'s
progress callback keeps what the test checks: after every optimizer step, this process's rank, the world size, the
step and its LoRA weights, one JSON line per step in RECORD_DIR/rank<R>.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from lorakit.config import load_config
from lorakit.model import load_model, load_tokenizer
from lorakit.progress import ProgressEvent
from lorakit.train import prepare_data, train


def train_and_record(config_path: Path, record_dir: Path) -> Path:
    config = load_config(config_path)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model)  # get_peft_model adds the LoRA layers to this object in place
    recorded: set[int] = set()

    def record(event: ProgressEvent) -> None:
        if event.unit != "step" or event.completed in recorded:
            return
        recorded.add(event.completed)
        distributed = dist.is_initialized()
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        weights = {name: parameter.detach().flatten().tolist() for name, parameter in model.named_parameters()
                   if "lora_" in name}
        line = {"rank": rank, "world_size": world_size, "step": event.completed, "weights": weights}
        with (record_dir / f"rank{rank}.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    return train(model, tokenizer, prepare_data(config, tokenizer), config, progress=record)


if __name__ == "__main__":
    train_and_record(Path(sys.argv[1]), Path(sys.argv[2]))
