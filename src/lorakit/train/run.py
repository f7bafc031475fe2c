"""Training: `train()` runs the config's stage (sft and pt: trainer.py; dpo, kto, orpo, simpo: preference.py) into
a run folder, and `run_training(config)` is the whole road a CLI or notebook user takes: data -> model -> train ->
output folder with the adapter, tokenizer, resolved config, manifest, metrics, trainer state, curves and model card.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import PREFERENCE_STAGES, TrainConfig, save_config
from lorakit.errors import ConfigError
from lorakit.model import load_model, load_tokenizer, resolve_device
from lorakit.progress import ProgressTarget
from lorakit.runs import track_status
from lorakit.train.distributed import ending_together, is_main_process, join_processes
from lorakit.train.trainer import PreparedData, prepare_data, train_sft


def run_training(config: TrainConfig, *, progress: ProgressTarget = True,
                 stop: threading.Event | None = None) -> Path:
    """Train from a config alone (data and model loaded by name) and return the output folder.

    `progress` and `stop` are passed to `train()`. Under a launcher (torchrun, accelerate launch) every process
    runs this; the first on each machine tokenises (and caches) the data while the others wait, then load it.
    """
    processes = join_processes(config)
    tokenizer = load_tokenizer(config.model)
    with processes.local_main_process_first():
        data = prepare_data(config, tokenizer)
    _check_precision(config)
    model = load_model(config.model)
    return train(model, tokenizer, data, config, progress=progress, stop=stop)


def _check_precision(config: TrainConfig) -> None:
    device = resolve_device(config.model.device)
    if config.model.dtype == "float16" and device.type == "cpu":
        raise ConfigError("model.dtype is float16 but training runs on the CPU, which cannot train in fp16; set "
                          "model.dtype=auto (bf16 where supported, else float32).")
    if config.finetuning == "full" and config.model.quantization != "none":
        raise ConfigError("finetuning=full cannot train a quantized model; set model.quantization=none.")


def train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
          config: TrainConfig, *, progress: ProgressTarget = True, stop: threading.Event | None = None) -> Path:
    """Fit the model to `data.train` and write everything under `config.output_dir`; return that folder.

    The base model's weights are left unchanged for LoRA. With `config.resume`, training continues from the
    latest checkpoint in `output_dir/checkpoints`. `progress` gets a `TrainProgress` per optimizer step and per
    logging step (True: a bar on the terminal). Setting `stop` ends training after the current optimizer step with
    a checkpoint saved; the outputs are then written as usual, from that step, and metrics.json holds
    `"stopped": true`. status.json says whether the run is running, finished, interrupted or failed (runs.py).

    Under a launcher every process calls this with the same config; they train as one (distributed.py), only the
    main process writes the run folder and draws the terminal bar, and the others return once it is written.
    """
    join_processes(config)
    main = is_main_process()
    if progress is True and not main:
        progress = False
    if main:
        save_config(config, config.output_dir / "config.yaml")  # now, so a failed run still says what it was
    with track_status(config.output_dir) if main else contextlib.nullcontext(), ending_together():
        if config.stage in PREFERENCE_STAGES:
            from lorakit.train.preference import train_preference  # imports TRL, which SFT runs do without

            return train_preference(model, tokenizer, data, config, progress, stop)
        return train_sft(model, tokenizer, data, config, progress, stop)
