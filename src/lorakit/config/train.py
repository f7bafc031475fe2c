"""Training configs: the model, the data, the adapter and the optimisation schedule of `lorakit train`.

LLaMA-Factory's flat keys (`lora_rank`, `cutoff_len`, ...) are translated by the alias table below, at load time, so
no other module knows they exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.config.core import DEVICES, DTYPES, check_choice, set_dotted
from lorakit.errors import ConfigError

QUANTIZATIONS = ("none", "4bit", "8bit")
FINETUNING = ("lora", "freeze", "full")
STAGES = ("sft", "pt", "dpo", "kto", "orpo", "simpo")
# Stages that train on preferences through TRL, with a LoRA policy; orpo and simpo need no reference model.
PREFERENCE_STAGES = ("dpo", "kto", "orpo", "simpo")
# LLaMA-Factory's other stages: named in the error for a config that asks for one lorakit does not train yet.
_OTHER_STAGES = ("rm", "ppo")
# TRL's DPOTrainer loss types (DPOConfig.loss_type); "sft" is what `preference.sft_weight` adds.
PREFERENCE_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                     "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
# LLaMA-Factory's `pref_loss` values that are stages of their own, not a DPO loss: the stage each one is.
_STAGE_LOSSES = {"orpo": "orpo", "simpo": "simpo", "kto_pair": "kto"}
# How stage pt cuts documents: joined and cut into max_seq_len blocks, or each document on its own.
PACKINGS = ("blocks", "documents")
OVERLONG = ("truncate", "drop")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
EXAMPLE_ORDERS = ("random", "sequential", "by_length")
FORMATS = ("auto", "alpaca", "sharegpt", "openai", "qa", "prompt_completion", "preference", "text")


def _check_stage(stage: str) -> None:
    if stage in STAGES:
        return
    if stage in _OTHER_STAGES:
        raise ConfigError(f"stage is '{stage}', which lorakit does not train yet: it trains stages "
                          f"{', '.join(STAGES)}. Training this config anyway would fit the wrong objective (e.g. SFT "
                          "on the chosen answers of preference data). Set one of those stages, or use another tool "
                          "for this stage for now.")
    check_choice("stage", stage, STAGES + _OTHER_STAGES)


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how: a bundled name, a local folder, a .gguf file or a hub id."""

    name: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "none"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        check_choice("model.device", self.device, DEVICES)
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.quantization", self.quantization, QUANTIZATIONS)


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they become tokens.

    `packing` is stage pt's: `blocks` joins the documents (each ending in EOS) and cuts them into `max_seq_len`
    blocks; `documents` keeps each document (cut into `max_seq_len` pieces) an example of its own.
    """

    paths: tuple[str, ...] = ()
    dataset_dir: Path | None = None
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    mix_ratios: tuple[float, ...] = ()
    replace: dict[str, str] = field(default_factory=dict)
    template: str = "auto"
    system: str | None = None
    thinking: bool | None = None
    max_seq_len: int = 1024
    overlong: str = "truncate"
    train_on_prompt: bool = False
    max_samples: int | None = None
    val_size: float = 0.0
    skip_bad: bool = False
    seed: int = 42
    cache_tokens: bool = True
    packing: str = "blocks"

    def __post_init__(self) -> None:
        check_choice("data.format", self.format, FORMATS)
        check_choice("data.packing", self.packing, PACKINGS)
        check_choice("data.overlong", self.overlong, OVERLONG)
        if self.max_seq_len < 8:
            raise ConfigError(f"data.max_seq_len must be at least 8 tokens, got {self.max_seq_len}.")
        if self.val_size < 0:
            raise ConfigError(f"data.val_size must be a fraction in [0, 1) or a record count, got {self.val_size}.")
        if self.mix_ratios and len(self.mix_ratios) != len(self.paths):
            raise ConfigError(f"data.mix_ratios has {len(self.mix_ratios)} values but data.paths names "
                              f"{len(self.paths)} datasets; give one ratio per dataset.")
        if any(r <= 0 for r in self.mix_ratios):
            raise ConfigError(f"data.mix_ratios must all be positive, got {list(self.mix_ratios)}.")


@dataclass(frozen=True)
class LoraConfig:
    """The adapter: PEFT's LoraConfig in lorakit's words."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("all-linear",)
    rslora: bool = False
    dora: bool = False
    loraplus_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank}.")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}.")
        if not self.targets:
            raise ConfigError("lora.targets is empty; use 'all-linear' or name modules such as q_proj,v_proj.")
        if self.loraplus_ratio is not None and self.loraplus_ratio <= 0:
            raise ConfigError(f"lora.loraplus_ratio must be positive (16 is typical), got {self.loraplus_ratio}.")


@dataclass(frozen=True)
class PreferenceConfig:
    """How the preference stages weigh good answers against bad ones: TRL's DPO/KTO/ORPO/CPO configs in lorakit's
    words.

    `beta`: the strength of the preference term (dpo, kto: how close to the reference; orpo: the odds-ratio weight
    lambda; simpo: the reward scale). `losses` are TRL DPO loss types (stage dpo), summed with `loss_weights` (one per
    loss; empty: 1 each). `sft_weight` adds the negative log-likelihood of the chosen answer with that weight
    (LLaMA-Factory's `pref_ftx`, RPO; for simpo, CPO's alpha). `precompute_reference` computes the reference log-probs
    once before training (dpo, kto). `desirable_weight` and `undesirable_weight` weigh KTO's two kinds of examples;
    `simpo_gamma` is SimPO's target reward margin.
    """

    beta: float = 0.1
    losses: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] = ()
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    precompute_reference: bool = False
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    simpo_gamma: float = 0.5

    def __post_init__(self) -> None:
        if not self.losses:
            raise ConfigError("preference.losses is empty; use sigmoid (the DPO paper's loss) or another of "
                              f"{', '.join(PREFERENCE_LOSSES)}.")
        for loss in self.losses:
            if loss in _STAGE_LOSSES:
                raise ConfigError(f"preference.losses names '{loss}', which is its own stage, not a DPO loss; set "
                                  f"stage: {_STAGE_LOSSES[loss]} (LLaMA-Factory's pref_loss: {loss} is translated "
                                  "so) and keep a DPO loss such as sigmoid here.")
            if loss == "sft":
                raise ConfigError("preference.losses names 'sft'; set preference.sft_weight (LLaMA-Factory's "
                                  "pref_ftx) to add the SFT term with that weight instead.")
            check_choice("preference.losses", loss, PREFERENCE_LOSSES)
        problems = []
        if self.beta <= 0:
            problems.append(f"preference.beta must be positive (0.1 is typical), got {self.beta}")
        if self.loss_weights and len(self.loss_weights) != len(self.losses):
            problems.append(f"preference.loss_weights has {len(self.loss_weights)} values for "
                            f"{len(self.losses)} losses; give one weight per loss, or none")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"preference.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.sft_weight < 0:
            problems.append(f"preference.sft_weight must be 0 or more, got {self.sft_weight}")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                problems.append(f"preference.{name} must be positive (1.0 is neutral), got {getattr(self, name)}")
        if problems:
            raise ConfigError("; ".join(problems) + ".")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, data, adapter, the objective (`stage`) and the optimisation schedule.

    Stages: sft (supervised), pt (continued pretraining on plain text), dpo and kto (preferences, kept near a
    reference), orpo and simpo (preference pairs, reference-free). `adapter` (a run folder or an adapter folder) is
    where a preference stage starts from: that adapter is trained further and is also the reference the policy is
    kept close to (DPO after SFT); its own LoRA settings replace `lora`.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    output_dir: Path = Path("outputs/latest")
    stage: str = "sft"
    adapter: Path | None = None
    finetuning: str = "lora"
    freeze_trainable_layers: int = 2
    learning_rate: float = 2e-4
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 4
    gradient_accumulation: int = 1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int = 2
    early_stopping_patience: int | None = None
    gradient_checkpointing: bool = False
    padding_free: bool = True
    chunked_loss: bool = True
    example_order: str = "random"
    seed: int = 42
    resume: bool = False

    def __post_init__(self) -> None:
        _check_stage(self.stage)
        check_choice("finetuning", self.finetuning, FINETUNING)
        check_choice("example_order", self.example_order, EXAMPLE_ORDERS)
        check_choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        problems = []
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if self.batch_size <= 0:
            problems.append(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.gradient_accumulation <= 0:
            problems.append(f"gradient_accumulation must be a positive integer, got {self.gradient_accumulation}")
        if self.max_steps is not None and self.max_steps <= 0:
            problems.append(f"max_steps must be positive (or left out to train by epochs), got {self.max_steps}")
        if self.max_steps is None and self.epochs <= 0:
            problems.append(f"epochs must be positive, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.early_stopping_patience is not None and self.data.val_size == 0:
            problems.append("early_stopping_patience needs a validation set; set data.val_size (e.g. 0.1)")
        problems += self._stage_problems()
        if problems:
            raise ConfigError("; ".join(problems) + ".")


    def _stage_problems(self) -> list[str]:
        problems = []
        if self.data.packing != "blocks" and self.stage != "pt":
            problems.append(f"data.packing is stage pt's (how plain text is cut); stage {self.stage} does not use it, "
                            "leave it out")
        if self.stage not in PREFERENCE_STAGES:
            if self.adapter is not None:
                problems.append(f"adapter (start from a trained adapter) is used by the preference stages "
                                f"({', '.join(PREFERENCE_STAGES)}) only; for {self.stage} leave it out, or continue "
                                "an interrupted run with resume=true")
            return problems
        if self.finetuning != "lora":
            problems.append(f"stage {self.stage} trains a LoRA adapter (a reference, where there is one, is the "
                            f"model without it), not finetuning={self.finetuning}; set finetuning: lora")
        if self.example_order == "by_length":
            problems.append(f"example_order=by_length is not available for stage {self.stage}; use random or "
                            "sequential")
        if self.stage != "dpo" and self.preference.losses != ("sigmoid",):
            problems.append(f"preference.losses chooses stage dpo's loss; stage {self.stage} has its own, leave "
                            "preference.losses out")
        if self.stage == "kto":
            problems += self._kto_problems()
        return problems

    def _kto_problems(self) -> list[str]:
        """TRL's KTOTrainer constraints, said in lorakit's keys before any model is loaded."""
        problems = []
        if self.batch_size < 2:
            problems.append(f"stage kto needs batch_size of at least 2, got {self.batch_size}: KTO estimates its KL "
                            "term from the other examples of the same micro-batch (gradient_accumulation does not "
                            "count), so with one example the KL term equals the reward. Set batch_size: 2 or more "
                            "(lower gradient_accumulation to keep the effective batch)")
        if any(target == "lm_head" for target in self.lora.targets):
            problems.append("stage kto cannot train a LoRA adapter on lm_head (TRL computes log-probs from the head's "
                            "weight directly, so it would never learn); remove lm_head from lora.targets")
        return problems


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


def _lora_target(value: Any) -> list[str]:
    names = _split(value)
    return ["all-linear"] if names in (["all"], ["all-linear"]) else names


def _quantization_bits(value: Any) -> str:
    return {None: "none", 4: "4bit", 8: "8bit"}.get(None if value in (None, "none") else int(value), str(value))


# LLaMA-Factory's flat keys -> (our dotted key, value converter).
ALIASES: dict[str, tuple[str, Any]] = {
    "model_name_or_path": ("model.name", str),
    "trust_remote_code": ("model.trust_remote_code", None),
    "quantization_bit": ("model.quantization", _quantization_bits),
    "dataset": ("data.paths", _split),
    "dataset_dir": ("data.dataset_dir", None),
    "template": ("data.template", None),
    "cutoff_len": ("data.max_seq_len", None),
    "max_samples": ("data.max_samples", None),
    "val_size": ("data.val_size", None),
    "train_on_prompt": ("data.train_on_prompt", None),
    "default_system": ("data.system", None),
    "enable_thinking": ("data.thinking", None),
    "interleave_probs": ("data.mix_ratios", lambda v: [float(x) for x in _split(str(v))]),
    "finetuning_type": ("finetuning", None),
    "freeze_trainable_layers": ("freeze_trainable_layers", None),
    "lora_rank": ("lora.rank", None),
    "lora_alpha": ("lora.alpha", None),
    "lora_dropout": ("lora.dropout", None),
    "lora_target": ("lora.targets", _lora_target),
    "use_rslora": ("lora.rslora", None),
    "use_dora": ("lora.dora", None),
    "loraplus_lr_ratio": ("lora.loraplus_ratio", None),
    "per_device_train_batch_size": ("batch_size", None),
    "gradient_accumulation_steps": ("gradient_accumulation", None),
    "num_train_epochs": ("epochs", None),
    "lr_scheduler_type": ("lr_scheduler", None),
    "max_grad_norm": ("max_grad_norm", None),
    "save_steps": ("save_steps", None),
    "save_total_limit": ("save_total_limit", None),
    "eval_steps": ("eval_steps", None),
    "resume_from_checkpoint": ("resume", lambda v: bool(v)),
    "gradient_checkpointing": ("gradient_checkpointing", None),
    "neat_packing": ("padding_free", None),
    "adapter_name_or_path": ("adapter", None),
    "pref_beta": ("preference.beta", None),
    "pref_loss": ("preference.losses", _split),
    "pref_ftx": ("preference.sft_weight", None),
    "kto_chosen_weight": ("preference.desirable_weight", None),
    "kto_rejected_weight": ("preference.undesirable_weight", None),
    "simpo_gamma": ("preference.simpo_gamma", None),
}
# LLaMA-Factory keys that carry no meaning for lorakit (it always trains, plots and overwrites its own outputs).
IGNORED_KEYS = frozenset({
    "do_train", "do_eval", "do_predict", "plot_loss", "overwrite_output_dir", "overwrite_cache",
    "preprocessing_num_workers", "dataloader_num_workers", "ddp_timeout", "report_to", "bf16", "fp16",
    "per_device_eval_batch_size", "eval_strategy", "evaluation_strategy", "save_only_model", "packing",
    "flash_attn", "upcast_layernorm",
})


def apply_aliases(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Translate flat LLaMA-Factory keys into lorakit's nested ones; lorakit's own keys pass through."""
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        if key in IGNORED_KEYS:
            continue
        if key in ALIASES and key not in _top_level_fields():
            target, convert = ALIASES[key]
            set_dotted(nested, target, convert(value) if convert and value is not None else value)
        else:
            set_dotted(nested, key, value)
    _stage_from_loss(raw, nested)
    return nested


def _stage_from_loss(raw: Mapping[str, Any], nested: dict[str, Any]) -> None:
    """LLaMA-Factory trains ORPO and SimPO as `stage: dpo` with `pref_loss: orpo|simpo`; lorakit as their own stage."""
    losses = nested.get("preference", {}).get("losses") if isinstance(nested.get("preference"), dict) else None
    if "pref_loss" in raw and isinstance(losses, list) and len(losses) == 1 and losses[0] in _STAGE_LOSSES:
        nested["stage"] = _STAGE_LOSSES[losses[0]]
        del nested["preference"]["losses"]


def _top_level_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


