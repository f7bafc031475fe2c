"""Stage sft: `train_sft()` fits LoRA adapters (or freeze/full fine-tuning) with the Hugging Face Trainer.

Also what every stage shares: `prepare_data()` (tokens, cached), the Trainer arguments, `ProgressCallback`,
`run_trainer()` and `save_outputs()` (the run folder: weights, tokenizer, config, manifest, metrics, trainer state,
curves, model card). run.py picks the stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import math
import platform
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft.helpers import disable_input_dtype_casting
from transformers import (EarlyStoppingCallback, PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback,
                          TrainingArguments)
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from lorakit import __version__
from lorakit.allocator import allocator_in_use
from lorakit.config import TrainConfig, save_config, to_dict
from lorakit.data import LoadSummary, TokenizeSummary, data_files, load_conversations, pad_batch, split_validation
from lorakit.data import cache, tokenize_conversations
from lorakit.data.preference import load_preferences, tokenize_preferences
from lorakit.data.text import load_texts, tokenize_texts
from lorakit.data.unpaired import load_unpaired, tokenize_unpaired
from lorakit.errors import ConfigError
from lorakit.files import atomic_dir, save_figure, sha256_file, write_json, write_text
from lorakit.model import prepare_for_training, resolve_device
from lorakit.progress import OnProgress, ProgressTarget, TrainProgress, remaining_seconds, reporter
from lorakit.runs import (ADAPTER_DIR, CHECKPOINT_DIR, MODEL_DIR, RunProgressFiles, model_card,
                          write_settings)
from lorakit.templates import Template, install_template, resolve_template
from lorakit.train.lora_layers import use_fast_dropout, use_fast_lora_forward
from lorakit.train.distributed import (is_main_process, local_process_count, smallest_on_every_process,
                                      true_on_any_process)
from lorakit.train.loss import ChunkedLossTrainer
from lorakit.train.memory import available_memory, fit_micro_batch, training_lengths
from lorakit.train.packing import concatenate_batch, supports_padding_free, use_varlen_attention



@dataclass(frozen=True)
class PreparedData:
    """Tokenised splits plus the counts a user needs to trust them."""

    train: Dataset
    validation: Dataset | None
    template: Template
    load_summary: LoadSummary
    train_summary: TokenizeSummary
    validation_summary: TokenizeSummary | None


def prepare_data(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Load, validate, split and tokenise the configured datasets, or load the tokens cached by an earlier run.

    Stages sft and pt get input_ids/labels (pt: plain text in blocks, data/text.py), dpo, orpo and simpo
    prompt_ids/chosen_ids/rejected_ids (data/preference.py), kto prompt_ids/completion_ids/label (data/unpaired.py).
    """
    template = resolve_template(config.data.template, tokenizer)
    key = cache.cache_key(config.data, tokenizer, template.jinja, config.stage) if config.data.cache_tokens else None
    cached = cache.load_cached(key) if key else None
    if cached is not None:
        splits, summary = cached
        return PreparedData(splits["train"], splits.get("validation"), template,
                            LoadSummary(**summary["load"]), TokenizeSummary(**summary["train"]),
                            TokenizeSummary(**summary["validation"]) if summary["validation"] else None)
    data = _tokenize_from_scratch(config, tokenizer, template)
    if key:
        stored = {"train": data.train, **({"validation": data.validation} if data.validation is not None else {})}
        cache.store(key, stored, {"load": asdict(data.load_summary), "train": asdict(data.train_summary),
                                  "validation": asdict(data.validation_summary) if data.validation_summary else None})
    return data


def _tokenize_from_scratch(config: TrainConfig, tokenizer: PreTrainedTokenizerBase, template: Template) -> PreparedData:
    load, tokenize = _STAGE_DATA.get(config.stage, (load_conversations, tokenize_conversations))
    conversations, load_summary = load(config.data)
    splits = split_validation(conversations, config.data.val_size, config.data.seed)
    train_set, train_summary = tokenize(splits.train, tokenizer, template, config.data)
    validation_set, validation_summary = None, None
    if splits.validation:
        validation_set, validation_summary = tokenize(splits.validation, tokenizer, template, config.data)
    return PreparedData(train_set, validation_set, template, load_summary, train_summary, validation_summary)


_STAGE_DATA = {"pt": (load_texts, tokenize_texts), "dpo": (load_preferences, tokenize_preferences),
               "kto": (load_unpaired, tokenize_unpaired), "orpo": (load_preferences, tokenize_preferences),
               "simpo": (load_preferences, tokenize_preferences)}


def train_sft(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: PreparedData, config: TrainConfig,
              progress: ProgressTarget, stop: threading.Event | None) -> Path:
    """Stages sft and pt for `train()` (run.py): fit `data`'s input_ids/labels and write the run folder; return it.

    Stage pt with a validation split also measures the held-out perplexity before and after training, into
    metrics.json (`perplexity_before`, `perplexity_after`, and `heldout_loss_*` in place of the final `eval_loss`).
    """
    output_dir = config.output_dir
    resume_from = checkpoint_to_resume(config)
    torch.manual_seed(config.seed)
    before = _pretrain_perplexity(model, tokenizer, data, config, progress)
    model = prepare_for_training(model, config)
    on_cpu = resolve_device(config.model.device).type == "cpu"
    if on_cpu:
        use_fast_dropout(model)
    config = _fit_memory(model, data, config)
    install_template(tokenizer, data.template)
    padding_free = config.padding_free and supports_padding_free(model)
    # Training-only speed-ups, each undone on exit: the same model object generates right after training.
    with contextlib.ExitStack() as speedups:
        if computes_in_bf16(model):
            # PEFT casts each LoRA input to the adapter's fp32; under bf16 autocast that copy buys nothing.
            speedups.enter_context(disable_input_dtype_casting(model))
        if padding_free:
            speedups.callback(model.set_attn_implementation, use_varlen_attention(model))
        speedups.callback(use_fast_lora_forward(model))
        watcher = ProgressCallback(reporter(progress), stop, RunProgressFiles(output_dir))
        trainer = _build_trainer(model, tokenizer, data, config, padding_free, watcher)
        # Stage pt measures the held-out set itself after training; the Trainer's final pass would repeat it.
        metrics = run_trainer(trainer, watcher, resume_from, data.validation is not None and before is None)
        if isinstance(trainer, ChunkedLossTrainer):
            trainer.loss_workspace.release()
    if before is not None:
        after = _pretrain_perplexity(model, tokenizer, data, config, progress)
        metrics.update(perplexity_before=before["perplexity"], perplexity_after=after["perplexity"],
                       heldout_loss_before=before["loss"], heldout_loss_after=after["loss"])
    save_outputs(trainer, tokenizer, data, config, metrics)
    return output_dir


def _pretrain_perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                         config: TrainConfig, progress: ProgressTarget) -> dict[str, float] | None:
    if config.stage != "pt" or data.validation is None:
        return None
    from lorakit.train.pretrain import heldout_perplexity  # imports the evaluation stage, which SFT runs do without

    return heldout_perplexity(model, tokenizer, data.validation, config.batch_size, progress)


def run_trainer(trainer: Trainer, watcher: ProgressCallback, resume_from: str | None,
                evaluate: bool) -> dict[str, Any]:
    """Train (then evaluate, with a validation set) and return what metrics.json holds."""
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = dict(result.metrics)
    if watcher.stopped:
        metrics["stopped"] = True
    if evaluate:
        metrics.update(_final_evaluation(trainer))
    metrics["train_seconds"] = round(time.time() - started, 2)
    return metrics


def _final_evaluation(trainer: Trainer) -> dict[str, Any]:
    """The validation metrics of the trained model: those logged at the last step when training evaluated there (and
    kept the last weights), else a new evaluation pass; one pass over the validation set can take minutes."""
    state = trainer.state
    if not trainer.args.load_best_model_at_end:
        last = [entry for entry in state.log_history if "eval_loss" in entry and entry.get("step") == state.global_step]
        if last:
            return {key: value for key, value in last[-1].items() if key.startswith("eval_")}
    return trainer.evaluate()


def _fit_memory(model: PreTrainedModel, data: PreparedData, config: TrainConfig) -> TrainConfig:
    """Print the memory estimate; shrink the micro-batch (same effective batch) when it would not fit."""
    from rich.console import Console

    lengths = training_lengths(data, config)
    device = resolve_device(config.model.device)
    # Processes on one machine share its RAM; each GPU process has a GPU of its own.
    available = available_memory(device) // (local_process_count() if device.type == "cpu" else 1)
    fitted, estimate = fit_micro_batch(model, lengths, config, available)
    batch_size = smallest_on_every_process(fitted.batch_size)  # DDP steps every rank through the same batch shape
    if batch_size != fitted.batch_size:
        fitted = replace(config, batch_size=batch_size,
                         gradient_accumulation=config.gradient_accumulation * config.batch_size // batch_size)
    if not is_main_process():
        return fitted
    console = Console(stderr=True, highlight=False)
    console.print(f"{estimate.describe()}; available {available / 2**30:.1f} GiB")
    if fitted.batch_size != config.batch_size:
        console.print(f"[yellow]batch_size {config.batch_size} would not fit: training with batch_size "
                      f"{fitted.batch_size} x gradient_accumulation {fitted.gradient_accumulation} (same effective "
                      f"batch). Set them yourself to silence this.[/]")
    return fitted


def checkpoint_to_resume(config: TrainConfig) -> str | None:
    checkpoints = config.output_dir / CHECKPOINT_DIR
    if not config.resume:
        return None
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last is None:
        raise ConfigError(f"resume is set but {checkpoints} holds no checkpoint-N folder. Train once with "
                          "save_steps set (checkpoints are also saved each epoch), or set resume=false.")
    return last


def training_arguments(config: TrainConfig, has_validation: bool, steps_per_epoch: int,
                       bf16: bool) -> dict[str, Any]:
    """The Trainer's arguments from `config`, as keywords (the preference stages add their own for TRL's configs)."""
    device = resolve_device(config.model.device)
    evaluate_by = "no"
    if has_validation:
        evaluate_by = "steps" if (config.eval_steps or config.save_steps) else "epoch"
    save_by = "steps" if config.save_steps else "epoch"
    if config.early_stopping_patience is not None and evaluate_by != save_by:
        evaluate_by = save_by
    eval_steps = config.eval_steps or config.save_steps
    if config.early_stopping_patience is not None and save_by == "steps":
        eval_steps = config.save_steps
    return dict(
        output_dir=str(config.output_dir / CHECKPOINT_DIR),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=math.ceil(config.warmup_ratio * _total_steps(config, steps_per_epoch)),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy=evaluate_by,
        eval_steps=eval_steps if evaluate_by == "steps" else None,
        save_strategy=save_by,
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=config.early_stopping_patience is not None,
        metric_for_best_model="eval_loss" if config.early_stopping_patience is not None else None,
        greater_is_better=False,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device.type == "cpu",
        bf16=bf16,
        report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else [],
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        prediction_loss_only=True,
        train_sampling_strategy={"random": "random", "sequential": "sequential",
                                 "by_length": "group_by_length"}[config.example_order],
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def computes_in_bf16(model: PreTrainedModel) -> bool:
    """bf16 frozen weights get bf16 autocast, so fp32 LoRA weights compute in bf16 with fp32 master copies."""
    return any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)


def _total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    return config.max_steps or math.ceil(steps_per_epoch * config.epochs)


def _build_trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                   config: TrainConfig, padding_free: bool, watcher: ProgressCallback) -> Trainer:
    steps_per_epoch = max(1, math.ceil(len(data.train) / (config.batch_size * config.gradient_accumulation)))
    args = TrainingArguments(**training_arguments(config, data.validation is not None, steps_per_epoch,
                                                  computes_in_bf16(model)))
    callbacks: list[TrainerCallback] = [watcher]
    if config.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = concatenate_batch if padding_free else lambda features: pad_batch(features, pad_id)
    trainer_class = ChunkedLossTrainer if config.chunked_loss else Trainer
    trainer = trainer_class(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                            data_collator=collate, processing_class=tokenizer, callbacks=callbacks,
                            optimizers=(_loraplus_optimizer(model, config), None))
    trainer.remove_callback(PrinterCallback)  # ProgressCallback reports the same logs, readably
    return trainer


def _loraplus_optimizer(model: PreTrainedModel, config: TrainConfig) -> torch.optim.Optimizer | None:
    if config.lora.loraplus_ratio is None or config.finetuning != "lora":
        return None
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model=model, optimizer_cls=torch.optim.AdamW, lr=config.learning_rate,
                                     loraplus_lr_ratio=config.lora.loraplus_ratio,
                                     weight_decay=config.weight_decay)


class ProgressCallback(TrainerCallback):
    """Turns the Trainer's hooks into `TrainProgress` events for `report`, and ends training once `stop` is set.

    With `files`, the main process (rank 0) also keeps the events in the run folder (progress.json, metrics.jsonl)
    for readers in other processes: the web UI, `lorakit.jobs`.
    """

    def __init__(self, report: OnProgress | None, stop: threading.Event | None = None,
                 files: RunProgressFiles | None = None) -> None:
        self.report = report
        self.stop = stop
        self.files = files
        self.stopped = False
        self.running = False
        self.started = 0.0
        self.steps_at_start = 0
        self.tokens_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.running = True
        self.started = time.time()
        self.steps_at_start = state.global_step
        self.tokens_at_start = state.num_input_tokens_seen
        if self.files is not None and state.is_world_process_zero:
            self.files.begin(state.global_step)
        self._send(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._send(state)
        # Every process leaves at the same step, or the others would wait for it in the next gradient all-reduce.
        stop_asked = self.stop is not None and true_on_any_process(self.stop.is_set())
        # A stop asked for at the last step changes nothing: the run is complete.
        if stop_asked and not self.stopped and state.global_step < state.max_steps:
            self.stop.set()  # also where another process was asked: the caller sees why training ended
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self._send(state, loss=logs.get("loss"), eval_loss=logs.get("eval_loss"),
                       learning_rate=logs.get("learning_rate"))

    def on_train_end(self, args, state, control, **kwargs):
        self._send(state, finished=True, stopped=self.stopped)
        self.running = False

    def _send(self, state, **fields: Any) -> None:
        # The evaluation train() runs after the Trainer's own end is not a training event.
        files = self.files if self.files is not None and state.is_world_process_zero else None
        if (self.report is None and files is None) or not self.running:
            return
        elapsed = max(time.time() - self.started, 1e-6)
        speed = (state.num_input_tokens_seen - self.tokens_at_start) / elapsed
        left = remaining_seconds(elapsed, state.global_step - self.steps_at_start, state.max_steps - state.global_step)
        event = TrainProgress("train", state.global_step, state.max_steps, "step", elapsed, left,
                              tokens_per_second=speed, **fields)
        for target in (self.report, files):
            if target is not None:
                target(event)


def save_outputs(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, data: PreparedData, config: TrainConfig,
                  metrics: dict[str, Any]) -> None:
    """Write the run folder from the main process (rank 0); the other processes only help gather sharded weights."""
    output_dir = config.output_dir
    weights_dir = output_dir / (ADAPTER_DIR if config.finetuning == "lora" else MODEL_DIR)
    template = replace(data.template, thinking=config.data.thinking, system=data.train_summary.shared_system)
    # FSDP and DeepSpeed ZeRO-3 shard the weights: every process takes part in gathering them.
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if sharded else None
    if not is_main_process():
        return
    with atomic_dir(weights_dir) as tmp:
        trainer.model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_settings(tmp, config.model.name, config.finetuning, template)
    save_config(config, output_dir / "config.yaml")
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    write_json(output_dir / "metrics.json", metrics)
    manifest = _manifest(config, data, tokenizer, weights_dir)
    write_json(output_dir / "manifest.json", manifest)
    plot_loss(trainer.state.log_history, output_dir / "loss.png")
    if any("rewards/margins" in entry for entry in trainer.state.log_history):
        plot_rewards(trainer.state.log_history, output_dir / "rewards.png")
    card = model_card(config, metrics, manifest, template)
    write_text(output_dir / "README.md", card)
    write_text(weights_dir / "README.md", card)


def _manifest(config: TrainConfig, data: PreparedData, tokenizer: PreTrainedTokenizerBase,
              weights_dir: Path) -> dict[str, Any]:
    packages = ("lorakit", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    tokenizer_file = weights_dir / "tokenizer.json"
    return {
        "lorakit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": config.seed,
        "config": to_dict(config),
        "base_model": config.model.name,
        "data_files": {str(path): sha256_file(path) for path in data_files(config.data)},
        "template": {"name": data.template.name,
                     "sha256": hashlib.sha256(data.template.jinja.encode()).hexdigest(),
                     "thinking": config.data.thinking, "system": data.train_summary.shared_system},
        "tokenizer_sha256": sha256_file(tokenizer_file) if tokenizer_file.is_file() else None,
        "data": {"records_read": data.load_summary.read, "records_used": data.load_summary.used,
                 "records_skipped": data.load_summary.skipped, "formats": data.load_summary.formats,
                 "train_examples": data.train_summary.examples, "truncated": data.train_summary.truncated,
                 "dropped_overlong": data.train_summary.dropped_overlong,
                 "dropped_no_labels": data.train_summary.dropped_no_labels,
                 "train_tokens": data.train_summary.tokens,
                 "supervised_tokens": data.train_summary.supervised_tokens,
                 "validation_examples": data.validation_summary.examples if data.validation_summary else 0},
        "packages": versions,
        "python": platform.python_version(),
        "device": str(resolve_device(config.model.device)),
        "allocator": allocator_in_use(),
    }


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> None:
    """Train (and eval) loss against the optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    _plot_series(axes, log_history, "loss", "loss")
    axes.set_title("lorakit training loss")
    figure.tight_layout()
    save_figure(figure, path)


def plot_rewards(log_history: list[dict[str, Any]], path: Path) -> None:
    """The preference stages: reward accuracy (kto, which has no pairs: the desirable answers' reward) and the
    chosen-minus-rejected margin, train and eval, against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, margin) = plt.subplots(1, 2, figsize=(11, 4))
    if any("rewards/accuracies" in entry for entry in log_history):
        _plot_series(accuracy, log_history, "rewards/accuracies", "reward accuracy")
    else:
        _plot_series(accuracy, log_history, "rewards/chosen", "reward of the desirable answers")
    _plot_series(margin, log_history, "rewards/margins", "reward margin (chosen - rejected)")
    figure.suptitle("lorakit preference training")
    figure.tight_layout()
    save_figure(figure, path)


def _plot_series(axes: Any, log_history: list[dict[str, Any]], key: str, label: str) -> None:
    for name, series in (("train", key), ("eval", f"eval_{key}")):
        points = [(entry["step"], entry[series]) for entry in log_history if series in entry]
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, marker="o" if name == "eval" else None, label=name)
    axes.set_xlabel("step")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    axes.legend()
