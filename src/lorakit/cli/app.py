"""The shared Typer app, console and argument helpers that every `lorakit` command module registers on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(help="LoRA fine-tuning of open language models, offline: data, train, evaluate, chat, serve.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
console = Console()

ConfigArgs = Annotated[Optional[list[str]], typer.Argument(
    help="An optional YAML config, then key=value overrides (e.g. lora.rank=16 data.paths=[a.json]).")]


def config_and_overrides(args: list[str] | None) -> tuple[Path | None, list[str]]:
    """Split `[config.yaml] key=value ...` into the YAML path (or None) and the overrides."""
    args = list(args or [])
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return None, args


def load_train_config(args: list[str] | None, extra: list[str] = ()):
    """A TrainConfig from `[config.yaml] key=value ...` plus overrides the command itself adds."""
    from lorakit.config import TrainConfig, load_config

    path, overrides = config_and_overrides(args)
    return load_config(path, [*overrides, *extra], TrainConfig)
