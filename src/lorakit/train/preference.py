"""Stage dpo: `train_preference()` fits a LoRA policy to preference pairs with TRL's DPOTrainer.

The reference the policy is kept close to costs no second copy of the weights. A new adapter's reference is the
frozen base with the adapter disabled. Starting from a trained adapter (`adapter`: DPO after SFT), that adapter is
the policy's start and TRL keeps a frozen copy of it, named "ref", as the reference; only the trained one is saved.
The run folder, progress reports and outputs are SFT's (trainer.py); `train()` calls this for `stage: dpo`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer

from lorakit.config import TrainConfig
from lorakit.model import to_peft_config
from lorakit.progress import ProgressTarget, reporter
from lorakit.runs import RunProgressFiles, check_same_base, find_adapter_dir
from lorakit.templates import install_template
from lorakit.train.trainer import (PreparedData, ProgressCallback, checkpoint_to_resume, computes_in_bf16,
                                   run_trainer, save_outputs, training_arguments)

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of a starting adapter


def train_preference(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                     config: TrainConfig, progress: ProgressTarget = True,
                     stop: threading.Event | None = None) -> Path:
    """Fit a LoRA adapter to `data`'s preference pairs and write the run folder; return it.

    `data` holds prompt_ids/chosen_ids/rejected_ids (`prepare_data` with `stage: dpo`). The base weights are left
    unchanged. Logs loss and rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins (eval_ ones too
    with a validation set) to trainer_state.json, and plots them in loss.png and rewards.png.
    """
    resume_from = checkpoint_to_resume(config)
    torch.manual_seed(config.seed)
    policy, peft_config = _policy(model, config)
    install_template(tokenizer, data.template)
    watcher = ProgressCallback(reporter(progress), stop, RunProgressFiles(config.output_dir))
    trainer = build_dpo_trainer(policy, peft_config, tokenizer, data, config, [watcher])
    metrics = run_trainer(trainer, watcher, resume_from, data.validation is not None)
    if REFERENCE_ADAPTER in trainer.model.peft_config:
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    save_outputs(trainer, tokenizer, data, config, metrics)
    return config.output_dir


def _policy(model: PreTrainedModel, config: TrainConfig) -> tuple[Any, Any]:
    """The model DPOTrainer gets and the PEFT config it wraps it with (None: it is already a PeftModel)."""
    from peft import PeftModel, prepare_model_for_kbit_training

    if config.model.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if config.adapter is None:
        return model, to_peft_config(config.lora)
    adapter_dir = find_adapter_dir(config.adapter)
    check_same_base(adapter_dir, model, config.model.name)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), None


def dpo_arguments(config: TrainConfig, train_examples: int, has_validation: bool, bf16: bool) -> DPOConfig:
    """TRL's DPOConfig: lorakit's Trainer arguments plus `config.preference`."""
    steps_per_epoch = max(1, math.ceil(train_examples / (config.batch_size * config.gradient_accumulation)))
    preference = config.preference
    losses, weights = list(preference.losses), list(preference.loss_weights)
    if preference.sft_weight > 0:
        weights = (weights or [1.0] * len(losses)) + [preference.sft_weight]
        losses.append("sft")
    return DPOConfig(
        **training_arguments(config, has_validation, steps_per_epoch, bf16),
        beta=preference.beta,
        loss_type=losses,
        loss_weights=weights or None,
        label_smoothing=preference.label_smoothing,
        precompute_ref_log_probs=preference.precompute_reference,
        max_length=config.data.max_seq_len,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
    )


def build_dpo_trainer(model: Any, peft_config: Any, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                      config: TrainConfig, callbacks: list[TrainerCallback]) -> DPOTrainer:
    """A DPOTrainer on lorakit's tokenised pairs; with `peft_config`, TRL wraps `model` in a new adapter."""
    # Before TRL wraps a new adapter nothing is frozen yet, so the base's dtype says whether to train in bf16.
    bf16 = computes_in_bf16(model) if peft_config is None else any(
        p.dtype == torch.bfloat16 for p in model.parameters())
    args = dpo_arguments(config, len(data.train), data.validation is not None, bf16)
    callbacks = list(callbacks)
    if config.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = _PretokenizedDPOTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                                      processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # ProgressCallback reports the same logs, readably
    return trainer


class _PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs lorakit has tokenised already (data/preference.py)."""

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: DPOConfig, dataset_name: str) -> Dataset:
        # TRL would render prompt/chosen/rejected with the tokenizer's own chat template (and append EOS to plain
        # text); lorakit renders them with the template inference uses, as SFT does, so the ids pass through.
        return dataset
