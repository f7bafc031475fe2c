"""Configuration for every stage: frozen dataclasses, loaded from YAML and overridden by `key=value` pairs.

`load_config(path, overrides)` is the one way in; LLaMA-Factory's flat keys (`lora_rank`, `cutoff_len`, ...) are
translated by the alias table below, at load time, so no other module knows they exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from lorakit.errors import ConfigError

T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "4bit", "8bit")
FINETUNING = ("lora", "freeze", "full")
STAGES = ("sft",)
# LLaMA-Factory's other stages: named in the error for a config that asks for one lorakit does not train yet.
_OTHER_STAGES = ("pt", "rm", "ppo", "dpo", "kto")
OVERLONG = ("truncate", "drop")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
EXAMPLE_ORDERS = ("random", "sequential", "by_length")
FORMATS = ("auto", "alpaca", "sharegpt", "openai", "qa", "prompt_completion", "text")


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got '{value}'.{hint}")


def _check_stage(stage: str) -> None:
    if stage in STAGES:
        return
    if stage in _OTHER_STAGES:
        raise ConfigError(f"stage is '{stage}', which lorakit does not train yet: it trains stage {', '.join(STAGES)} "
                          "(supervised fine-tuning) only. Training this config anyway would fit the wrong objective "
                          "(e.g. SFT on the chosen answers of preference data). Set stage: sft to fine-tune on the "
                          "conversations, or use another tool for this stage for now.")
    _check_choice("stage", stage, STAGES + _OTHER_STAGES)


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how: a bundled name, a local folder, a .gguf file or a hub id."""

    name: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    quantization: str = "none"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _check_choice("model.device", self.device, DEVICES)
        _check_choice("model.dtype", self.dtype, DTYPES)
        _check_choice("model.quantization", self.quantization, QUANTIZATIONS)


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they become tokens."""

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

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format, FORMATS)
        _check_choice("data.overlong", self.overlong, OVERLONG)
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
class TrainConfig:
    """One supervised fine-tuning run: model, data, adapter and the optimisation schedule."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    output_dir: Path = Path("outputs/latest")
    stage: str = "sft"
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
        _check_choice("finetuning", self.finetuning, FINETUNING)
        _check_choice("example_order", self.example_order, EXAMPLE_ORDERS)
        _check_choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
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
        if problems:
            raise ConfigError("; ".join(problems) + ".")


EVAL_KINDS = ("choice", "gsm8k", "generation", "perplexity")
CHOICE_SCORINGS = ("letter", "content")


@dataclass(frozen=True)
class EvalTaskConfig:
    """One task of an evaluation suite: a multiple-choice benchmark, GSM8K, generation metrics or perplexity."""

    kind: str = "perplexity"
    name: str = ""
    source: str = ""
    layout: str = "auto"
    split: str = "test"
    subjects: tuple[str, ...] = ()
    limit: int | None = None
    shots: int | None = None
    scoring: str = "letter"
    data: DataConfig = field(default_factory=DataConfig)
    max_new_tokens: int | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check_choice("tasks[].kind", self.kind, EVAL_KINDS)
        _check_choice("tasks[].scoring", self.scoring, CHOICE_SCORINGS)
        label = self.name or self.kind
        if self.kind in ("choice", "gsm8k") and not self.source:
            raise ConfigError(f"Task '{label}' ({self.kind}) needs a source: a benchmark folder, file or hub id.")
        if self.kind in ("generation", "perplexity") and not self.data.paths:
            raise ConfigError(f"Task '{label}' ({self.kind}) needs data.paths: the dataset to score.")
        problems = []
        most_shots = {"choice": 5, "gsm8k": 8}.get(self.kind, 25)
        if self.shots is not None and not 0 <= self.shots <= most_shots:
            problems.append(f"shots must be between 0 and {most_shots} for {self.kind}, got {self.shots}")
        if self.limit is not None and self.limit <= 0:
            problems.append(f"limit must be positive (or left out for all), got {self.limit}")
        if self.batch_size <= 0:
            problems.append(f"batch_size must be positive, got {self.batch_size}")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            problems.append(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.layout not in ("auto", "mmlu", "ceval", "cmmlu"):
            problems.append(f"layout must be auto, mmlu, ceval or cmmlu, got '{self.layout}'")
        if problems:
            raise ConfigError(f"Task '{label}': " + "; ".join(problems) + ".")

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def shots_or_default(self) -> int:
        """The usual k of each benchmark: 5 for MMLU-style choice (the dev split holds 5), 8 for GSM8K."""
        return self.shots if self.shots is not None else {"gsm8k": 8}.get(self.kind, 5)


@dataclass(frozen=True)
class SuiteConfig:
    """What `lorakit eval` runs on every model; `noise_sigmas` standard errors make a change significant."""

    name: str = "suite"
    tasks: tuple[EvalTaskConfig, ...] = ()
    noise_sigmas: float = 2.0

    def __post_init__(self) -> None:
        labels = [task.label for task in self.tasks]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigError(f"Suite '{self.name}' has several tasks named {', '.join(repeated)}; give each a "
                              "distinct name.")
        if self.noise_sigmas <= 0:
            raise ConfigError(f"noise_sigmas must be positive, got {self.noise_sigmas}.")


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
}
# LLaMA-Factory keys that carry no meaning for lorakit (it always trains, plots and overwrites its own outputs).
IGNORED_KEYS = frozenset({
    "do_train", "do_eval", "do_predict", "plot_loss", "overwrite_output_dir", "overwrite_cache",
    "preprocessing_num_workers", "dataloader_num_workers", "ddp_timeout", "report_to", "bf16", "fp16",
    "per_device_eval_batch_size", "eval_strategy", "evaluation_strategy", "save_only_model", "packing",
    "flash_attn", "upcast_layernorm",
})


def _apply_aliases(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Translate flat LLaMA-Factory keys into lorakit's nested ones; lorakit's own keys pass through."""
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        if key in IGNORED_KEYS:
            continue
        if key in ALIASES and key not in _top_level_fields():
            target, convert = ALIASES[key]
            _set_dotted(nested, target, convert(value) if convert and value is not None else value)
        else:
            _set_dotted(nested, key, value)
    return nested


def _top_level_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Config key '{dotted}' conflicts with '{part}', which is a value, not a section.")
        node = child
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for key, sub in value.items():
            _set_dotted(node[leaf], key, sub)
    else:
        node[leaf] = value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn a YAML or command-line value into the field's type, or say which key and type were expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, options[0], key)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(item):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"Config key '{key}' must be a list of sections, got {value!r}.")
            return tuple(_build(item, entry or {}, f"{key}[{index}].") for index, entry in enumerate(value))
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            items = [items]
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, item, key) for v in items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config key '{key}' must be a mapping (e.g. {{a: b}}), got {value!r}.")
        return {str(k): str(v) for k, v in value.items()}
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is Path:
            return Path(str(value)).expanduser()
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"Config key '{key}' must be {hint.__name__}, got {value!r}.") from None
    return value


def _build(cls: type[T], raw: Mapping[str, Any], prefix: str = "") -> T:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"Config section '{prefix.rstrip('.')}' must be a mapping of keys, got {raw!r}.")
    hints = get_type_hints(cls)
    unknown = sorted(raw.keys() - hints.keys())
    if unknown:
        lines = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(hints) + ([] if prefix else list(ALIASES)), n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Known keys: {', '.join(hints)}."
            lines.append(f"Unknown config key '{prefix}{key}'.{hint}")
        raise ConfigError(" ".join(lines))
    values = {}
    for key, value in raw.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value or {}, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, hint, f"{prefix}{key}")
    return cls(**values)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`["lora.rank=16", "dataset=a,b"]` -> a nested dict; values are read as YAML scalars (16 -> int)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override '{pair}' is not of the form key=value (e.g. lora.rank=16).")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set_dotted(tree, key.strip(), value)
    return tree


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file."""
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(raw).__name__}.")
    return raw


def load_config(path: Path | None = None, overrides: Sequence[str] = (), cls: type[T] = TrainConfig) -> T:
    """Build a config from a YAML file (optional) and `key=value` overrides, which win over the file."""
    raw = _apply_aliases(read_yaml(path)) if path is not None else {}
    for key, value in _apply_aliases(_flatten(parse_overrides(overrides))).items():
        _set_dotted(raw, key, value)
    return _build(cls, raw)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and prefix + key not in ("data.columns", "data.replace", "columns",
                                                                      "replace"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain YAML-ready data: Paths become strings, tuples lists."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(config)


def save_config(config: Any, path: Path) -> None:
    """Write the resolved config as YAML, atomically, so `lorakit train path` repeats the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
