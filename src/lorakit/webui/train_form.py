"""The Train tab's form as data: its fields with defaults, and the `key=value` overrides and TrainConfig it means.

The form builds the same overrides a user would type after `lorakit train`, and `load_config` turns them into the
TrainConfig, so the page, the YAML it shows and the command it shows are one config.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.config import TrainConfig, WebUIConfig, load_config
from lorakit.errors import ConfigError
from lorakit.webui.safety import allowed_folders, confine, confine_model, display_path

METHODS = ("lora", "dora", "qlora", "freeze", "full")
# What each method sets; the page offers the names LLaMA-Factory users know, the config keeps lorakit's keys.
_METHOD_OVERRIDES = {"lora": ["finetuning=lora"], "dora": ["finetuning=lora", "lora.dora=true"],
                     "qlora": ["finetuning=lora", "model.quantization=4bit"], "freeze": ["finetuning=freeze"],
                     "full": ["finetuning=full"]}


@dataclass(frozen=True)
class FormField:
    """One input of the form: `name` is its i18n key; `key` the config key it sets (None: handled by hand);
    a value equal to `off` leaves the key unset (0 max_steps trains by epochs)."""

    name: str
    default: Any
    key: str | None = None
    off: Any = None
    integer: bool = False


FIELDS = (
    FormField("model", "smollm2-135m"),
    FormField("method", "lora"),
    FormField("data_path", ""),
    FormField("template", "auto", "data.template"),
    FormField("run_name", "webui-run"),
    FormField("learning_rate", 2e-4, "learning_rate"),
    FormField("epochs", 3.0, "epochs"),
    FormField("max_steps", 0, "max_steps", off=0, integer=True),
    FormField("batch_size", 4, "batch_size", integer=True),
    FormField("gradient_accumulation", 1, "gradient_accumulation", integer=True),
    FormField("lora_rank", 8, "lora.rank", integer=True),
    FormField("lora_alpha", 16, "lora.alpha", integer=True),
    FormField("max_seq_len", 1024, "data.max_seq_len", integer=True),
    FormField("val_size", 0.0, "data.val_size", off=0),
    FormField("eval_steps", 0, "eval_steps", off=0, integer=True),
    FormField("early_stopping", 0, "early_stopping_patience", off=0, integer=True),
)
REGISTRY_MARK = " @ "  # "NAME @ data/dataset_info.json": a registry entry among the data files
FIELD_NAMES = tuple(field.name for field in FIELDS)


def train_overrides(values: dict[str, Any], config: WebUIConfig, cwd: Path | None = None) -> list[str]:
    """The `key=value` overrides the form's `values` (by field name) stand for; paths confined to allowed folders."""
    cwd = Path.cwd() if cwd is None else cwd
    allowed = allowed_folders(config, cwd)
    method = values.get("method") or "lora"
    if method not in _METHOD_OVERRIDES:
        raise ConfigError(f"Unknown method '{method}'; choose one of {', '.join(METHODS)}.")
    run_name = str(values.get("run_name") or "").strip()
    if not re.fullmatch(r"[\w.-]+", run_name) or run_name in (".", ".."):
        raise ConfigError(f"Run name '{run_name}' must be a plain folder name (letters, digits, _ . -), no slashes.")
    overrides = [f"model.name={model_override(str(values.get('model') or ''), allowed, cwd)}",
                 *_METHOD_OVERRIDES[method], *data_overrides(values.get("data_path"), config, cwd, absolute=True),
                 f"output_dir={json.dumps(str(config.outputs / run_name))}"]
    for field in FIELDS:
        value = values.get(field.name, field.default)
        if field.key is None or value is None or value == "" or (field.off is not None and value == field.off):
            continue
        overrides.append(f"{field.key}={_scalar(int(value) if field.integer else value)}")
    return overrides


def data_overrides(chosen: str | None, config: WebUIConfig, cwd: Path | None = None,
                   absolute: bool = False) -> list[str]:
    """The `key=value` overrides that point `lorakit data check` (or train) at `chosen`: a file or folder,
    confined to the allowed folders, or a registry entry `NAME @ folder/dataset_info.json`. Paths are written
    relative to the working directory where they lie in it (as a user types them), or `absolute` (for a job,
    whatever folder it runs in)."""
    cwd = Path.cwd() if cwd is None else cwd
    allowed = allowed_folders(config, cwd)
    chosen = (chosen or "").strip()
    shown = (lambda path: str(path)) if absolute else (lambda path: display_path(path, cwd))
    if REGISTRY_MARK in chosen:
        name, registry = chosen.rsplit(REGISTRY_MARK, 1)
        folder = confine(registry, allowed, cwd).parent
        return [f"data.paths={json.dumps([name.strip()])}", f"data.dataset_dir={json.dumps(shown(folder))}"]
    return [f"data.paths={json.dumps([shown(confine(chosen, allowed, cwd))])}"]


def build_train_config(values: dict[str, Any], config: WebUIConfig,
                       cwd: Path | None = None) -> tuple[TrainConfig, list[str]]:
    """The TrainConfig of the form, as `lorakit train` would build it from the same overrides, and the overrides."""
    overrides = train_overrides(values, config, cwd)
    return load_config(None, overrides, TrainConfig), overrides


def train_command(overrides: list[str]) -> str:
    """The shell command that trains the same config: `lorakit train key=value ...`, quoted for a POSIX shell."""
    return shlex.join(["lorakit", "train", *overrides])


def model_override(name: str, allowed: tuple[Path, ...], cwd: Path) -> str:
    """The value of `model.name=` for what the user typed or picked: a model folder is confined like any path and
    quoted; a bundled name or hub id is passed through."""
    model = confine_model(name, allowed, cwd)
    return json.dumps(model) if Path(model).is_absolute() else model


def _scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)
