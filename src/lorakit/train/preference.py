"""The preference stages: `train_preference()` fits a LoRA policy with TRL's DPOTrainer (dpo), KTOTrainer (kto),
ORPOTrainer (orpo) or CPOTrainer with the SimPO loss (simpo).

dpo and kto keep the policy close to a reference that costs no second copy of the weights. A new adapter's reference
is the frozen base with the adapter disabled. Starting from a trained adapter (`adapter`: DPO after SFT), that
adapter is the policy's start and TRL keeps a frozen copy of it, named "ref", as the reference; only the trained one
is saved. orpo and simpo need no reference. TRL keeps ORPOTrainer and CPOTrainer in `trl.experimental` (their API may
change between releases; pyproject pins the tested range). The run folder, progress reports and outputs are SFT's
(trainer.py); `train()` calls this for every preference stage.
"""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import EarlyStoppingCallback, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from lorakit.config import TrainConfig
from lorakit.data.tokenize import IGNORE_INDEX
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
    """Fit a LoRA adapter to `data`'s preferences with `config.stage`'s TRL trainer and write the run folder;
    return it.

    `data` holds prompt_ids/chosen_ids/rejected_ids (dpo, orpo, simpo) or prompt_ids/completion_ids/label (kto), as
    `prepare_data` makes them. The base weights are left unchanged. Logs loss and rewards/chosen, rewards/rejected,
    rewards/margins (and rewards/accuracies for pairs; kl for kto; log_odds_ratio for orpo; eval_ ones too with a
    validation set) to trainer_state.json, and plots them in loss.png and rewards.png.
    """
    resume_from = checkpoint_to_resume(config)
    torch.manual_seed(config.seed)
    policy, peft_config = _policy(model, config)
    install_template(tokenizer, data.template)
    watcher = ProgressCallback(reporter(progress), stop, RunProgressFiles(config.output_dir))
    trainer = build_preference_trainer(policy, peft_config, tokenizer, data, config, [watcher])
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


def build_preference_trainer(model: Any, peft_config: Any, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                             config: TrainConfig, callbacks: list[TrainerCallback]) -> Any:
    """`config.stage`'s TRL trainer on lorakit's tokenised data; with `peft_config`, TRL wraps `model` in a new
    adapter."""
    builders = {"dpo": build_dpo_trainer, "kto": build_kto_trainer, "orpo": _build_reference_free_trainer,
                "simpo": _build_reference_free_trainer}
    trainer = builders[config.stage](model, peft_config, tokenizer, data, config, _callbacks(callbacks, config))
    trainer.remove_callback(PrinterCallback)  # ProgressCallback reports the same logs, readably
    return trainer


def _callbacks(callbacks: list[TrainerCallback], config: TrainConfig) -> list[TrainerCallback]:
    callbacks = list(callbacks)
    if config.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return callbacks


def _bf16(model: Any, peft_config: Any) -> bool:
    # Before TRL wraps a new adapter nothing is frozen yet, so the base's dtype says whether to train in bf16.
    if peft_config is None:
        return computes_in_bf16(model)
    return any(p.dtype == torch.bfloat16 for p in model.parameters())


def _shared_arguments(config: TrainConfig, data: PreparedData, bf16: bool) -> dict[str, Any]:
    """Every preference stage's TRL arguments: lorakit's Trainer arguments plus beta and the length limit."""
    steps_per_epoch = max(1, math.ceil(len(data.train) / (config.batch_size * config.gradient_accumulation)))
    return dict(
        **training_arguments(config, data.validation is not None, steps_per_epoch, bf16),
        beta=config.preference.beta,
        max_length=config.data.max_seq_len,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
    )


def dpo_arguments(config: TrainConfig, data: PreparedData, bf16: bool) -> DPOConfig:
    """TRL's DPOConfig: lorakit's Trainer arguments plus `config.preference`."""
    preference = config.preference
    losses, weights = list(preference.losses), list(preference.loss_weights)
    if preference.sft_weight > 0:
        weights = (weights or [1.0] * len(losses)) + [preference.sft_weight]
        losses.append("sft")
    return DPOConfig(
        **_shared_arguments(config, data, bf16),
        loss_type=losses,
        loss_weights=weights or None,
        label_smoothing=preference.label_smoothing,
        precompute_ref_log_probs=preference.precompute_reference,
    )


def build_dpo_trainer(model: Any, peft_config: Any, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                      config: TrainConfig, callbacks: list[TrainerCallback]) -> DPOTrainer:
    """A DPOTrainer on lorakit's tokenised pairs; with `peft_config`, TRL wraps `model` in a new adapter."""
    args = dpo_arguments(config, data, _bf16(model, peft_config))
    return _PretokenizedDPOTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                                   processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)


class _PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs lorakit has tokenised already (data/preference.py)."""

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: DPOConfig, dataset_name: str) -> Dataset:
        # TRL would render prompt/chosen/rejected with the tokenizer's own chat template (and append EOS to plain
        # text); lorakit renders them with the template inference uses, as SFT does, so the ids pass through.
        return dataset


def build_kto_trainer(model: Any, peft_config: Any, tokenizer: PreTrainedTokenizerBase, data: PreparedData,
                      config: TrainConfig, callbacks: list[TrainerCallback]) -> KTOTrainer:
    """A KTOTrainer on lorakit's tokenised answers (data/unpaired.py).

    TRL's KL estimate pairs each prompt with the answer of its neighbour in a fixed-order micro-batch, so the
    sampler is sequential; `example_order: random` shuffles the examples once, with `seed`, instead.
    """
    preference = config.preference
    arguments = {**_shared_arguments(config, data, _bf16(model, peft_config)), "train_sampling_strategy": "sequential"}
    args = KTOConfig(**arguments, desirable_weight=preference.desirable_weight,
                     undesirable_weight=preference.undesirable_weight,
                     precompute_ref_log_probs=preference.precompute_reference)
    train_set = data.train.shuffle(seed=config.seed) if config.example_order == "random" else data.train
    return _PretokenizedKTOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=data.validation,
                                   processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)


class _PretokenizedKTOTrainer(KTOTrainer):
    """KTOTrainer on answers lorakit has tokenised already (data/unpaired.py)."""

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: KTOConfig, dataset_name: str) -> Dataset:
        # The ids pass through (as for DPO); only TRL's mismatched KL completions are added, built as TRL builds
        # them: each micro-batch's completions rotated by one, (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}).
        if not self.calculate_KL:
            return dataset
        return dataset.map(_rotated_completions, batched=True, batch_size=args.per_device_train_batch_size)


def _rotated_completions(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    completions = batch["completion_ids"]
    return {**batch, "KL_completion_ids": [completions[-1], *completions[:-1]]}


def _build_reference_free_trainer(model: Any, peft_config: Any, tokenizer: PreTrainedTokenizerBase,
                                  data: PreparedData, config: TrainConfig, callbacks: list[TrainerCallback]) -> Any:
    """ORPO (orpo) or CPO with the SimPO loss (simpo) on lorakit's tokenised pairs, from `trl.experimental`."""
    with warnings.catch_warnings():
        # README says these trainers are experimental in TRL; the notice would repeat on every run.
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    arguments = _shared_arguments(config, data, _bf16(model, peft_config))
    preference = config.preference
    if config.stage == "orpo":
        args, trainer_class = ORPOConfig(**arguments), type("_ORPOTrainer", (_PretokenizedPairs, ORPOTrainer), {})
    else:
        args = CPOConfig(**arguments, loss_type="simpo", simpo_gamma=preference.simpo_gamma,
                         cpo_alpha=preference.sft_weight, label_smoothing=preference.label_smoothing)
        trainer_class = type("_SimPOTrainer", (_PretokenizedPairs, CPOTrainer), {})
    return trainer_class(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
                         processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config)


class _PretokenizedPairs:
    """ORPOTrainer and CPOTrainer on pairs lorakit has tokenised already: their row tokenizer, which would render
    strings, only lays out lorakit's ids (prompt, then each answer, labelled) the way their collator reads them."""

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, list[int]]:
        prompt = feature["prompt_ids"]
        row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            answer = feature[f"{side}_ids"]
            row[f"{side}_input_ids"] = prompt + answer
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
            row[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt) + answer
        return row
