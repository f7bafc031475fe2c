"""Several processes: two CPU processes (gloo) under torchrun train exactly as one process with the same global batch;
the accelerate config files shipped in configs/accelerate/ parse as `accelerate launch` reads them."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig, save_config

from distributed_worker import train_and_record

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
RECORDS = [{"instruction": f"say {word}", "output": f"{word}, {word}!"} for word in
           ("hi", "yes", "no", "cat", "dog", "sun", "moon", "tea", "red", "blue",
            "one", "two", "six", "ten", "owl", "fox", "sea", "sky", "ink", "jam")]
STEPS = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, model_dir: Path, data_file: Path, batch_size: int) -> Path:
    """20 examples, 5 steps of 4: one epoch, in float32 so one and two processes agree to rounding."""
    config = TrainConfig(model=ModelConfig(name=str(model_dir), dtype="float32", device="cpu"),
                         data=DataConfig(paths=(str(data_file),), template="chatml", max_seq_len=64,
                                         cache_tokens=False),
                         lora=LoraConfig(rank=2, alpha=4, dropout=0.0), output_dir=folder / "run",
                         max_steps=STEPS, batch_size=batch_size, learning_rate=1e-2, logging_steps=1)
    path = folder / "train.yaml"
    save_config(config, path)
    return path


def read_records(path: Path) -> dict[int, dict]:
    return {line["step"]: line for line in map(json.loads, path.read_text().splitlines())}


def logged_losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_model_dir):
    data_file = tmp_path / "train.json"
    data_file.write_text(json.dumps(RECORDS))
    single, double = tmp_path / "one-process", tmp_path / "two-processes"
    single.mkdir(), double.mkdir()
    train_and_record(write_config(single, tiny_model_dir, data_file, batch_size=4), single)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(WORKER),
               str(write_config(double, tiny_model_dir, data_file, batch_size=2)), str(double)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]

    ranks = [read_records(double / f"rank{rank}.jsonl") for rank in (0, 1)]
    assert {line["world_size"] for rank in ranks for line in rank.values()} == {2}
    assert sorted(ranks[0]) == sorted(ranks[1]) == list(range(STEPS + 1))
    for step in range(STEPS + 1):  # DDP all-reduces the gradients: every rank holds the same LoRA weights
        assert ranks[0][step]["weights"] == ranks[1][step]["weights"], f"ranks differ after step {step}"
    assert ranks[0][0]["weights"] != ranks[0][STEPS]["weights"]

    alone = logged_losses(single / "run")
    together = logged_losses(double / "run")
    assert len(alone) == len(together) == STEPS
    assert together == pytest.approx(alone, abs=1e-4)
    final_single = read_records(single / "rank0.jsonl")[STEPS]["weights"]
    for name, values in ranks[0][STEPS]["weights"].items():
        assert values == pytest.approx(final_single[name], abs=1e-4), name

    run_files = sorted(path.name for path in (double / "run").iterdir())
    assert {"adapter", "config.yaml", "manifest.json", "metrics.json", "status.json", "trainer_state.json",
            "progress.json", "metrics.jsonl", "loss.png"} <= set(run_files)
    assert not [name for name in run_files if ".tmp" in name]  # no second writer raced rank 0
    assert json.loads((double / "run" / "status.json").read_text())["state"] == "finished"
    assert len((double / "run" / "metrics.jsonl").read_text().splitlines()) == STEPS


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda path: path.stem)
def test_accelerate_configs_parse_as_accelerate_launch_reads_them(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(path))

    assert config.num_machines >= 1 and config.num_processes >= 1 and not config.use_cpu
    expected = {"ddp": DistributedType.MULTI_GPU, "fsdp": DistributedType.FSDP,
                "deepspeed-zero2": DistributedType.DEEPSPEED, "deepspeed-zero3": DistributedType.DEEPSPEED}
    assert config.distributed_type == expected[path.stem]
    if config.distributed_type == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # rank 0 saves the whole adapter
    if config.distributed_type == DistributedType.DEEPSPEED:
        deepspeed = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert deepspeed["zero_optimization"]["stage"] == int(path.stem[-1])
        assert deepspeed["gradient_accumulation_steps"] == deepspeed["train_micro_batch_size_per_gpu"] == "auto"


def test_every_engine_has_a_shipped_config():
    assert {path.stem for path in ACCELERATE_CONFIGS} == {"ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"}
