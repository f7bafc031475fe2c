"""Inference configs: sampling (`GenerationConfig`) for generate, chat and predict, and `ServeConfig` for
`lorakit serve`, with the adapters it serves by name (`AdapterSpec`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.config.core import check_choice
from lorakit.config.train import ModelConfig
from lorakit.errors import ConfigError

BASE = "base"  # the name that selects no adapter
ENGINES = ("transformers", "vllm")
BATCHING = ("continuous", "static")  # how lorakit serve's engine takes requests into a running batch
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; temperature 0 means greedy decoding. `stop` strings end a reply and are cut from it."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    batch_size: int = 8
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        problems = []
        if self.max_new_tokens <= 0:
            problems.append(f"max_new_tokens must be a positive integer, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be 0 (greedy) or positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or a positive integer, got {self.top_k}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be positive (1.0 is off), got {self.repetition_penalty}")
        if self.batch_size <= 0:
            problems.append(f"batch_size must be a positive integer, got {self.batch_size}")
        if any(not word for word in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise ConfigError("; ".join(problems) + ".")


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter folder and the name it is served and selected by; in YAML `{name, path}` or `NAME=PATH`."""

    name: str
    path: Path

    @classmethod
    def from_text(cls, text: str) -> AdapterSpec:
        return parse_adapter(text)


def parse_adapter(text: str) -> AdapterSpec:
    """`name=PATH`, or a bare `PATH` named after its folder (the run's folder for lorakit's `.../adapter`).

    A path may hold '=' (`runs/lr=1e-4/adapter`): the text is split only when it is not an existing path and what
    comes before the first '=' is no path (holds no '/').
    """
    name, sep, path_text = text.partition("=")
    if not sep or Path(text).expanduser().exists() or "/" in name or "\\" in name:
        path = Path(text).expanduser()
        folder = path.resolve().parent.name if path.name == "adapter" else path.name
        name = re.sub(r"[^A-Za-z0-9_\-]", "-", folder).lstrip("-_") or "adapter"
        return AdapterSpec(name, path)
    if not _ADAPTER_NAME.match(name):
        raise ConfigError(f"Adapter name '{name}' (in '{text}') must be letters, digits, '-' or '_', starting with a "
                          "letter or digit; write the adapter as NAME=PATH.")
    return AdapterSpec(name, Path(path_text).expanduser())


def check_adapter_names(specs: Sequence[AdapterSpec], base_name: str) -> None:
    """Raise ConfigError for a duplicate name, or one that hides the base model ('base' or its own name)."""
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.name in (BASE, base_name):
            raise ConfigError(f"Adapter name '{spec.name}' ({spec.path}) is reserved for the base model; choose "
                              "another, writing the adapter as NAME=PATH.")
        if spec.name in "lora_":  # PEFT warns that such names may reinitialise adapter weights on load
            raise ConfigError(f"Adapter name '{spec.name}' ({spec.path}) is part of PEFT's parameter prefix 'lora_'; "
                              "choose a longer name, writing the adapter as NAME=PATH.")
        if spec.name in seen:
            raise ConfigError(f"Two adapters are called '{spec.name}' ({seen[spec.name]} and {spec.path}); give "
                              "each its own name, writing the adapters as NAME=PATH.")
        seen[spec.name] = spec.path


@dataclass(frozen=True)
class ServeConfig:
    """What `lorakit serve` loads and where it listens."""

    model: ModelConfig = field(default_factory=ModelConfig)
    adapters: tuple[AdapterSpec, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 8
    engine: str = "transformers"
    default_max_tokens: int = 256
    batching: str = "continuous"

    def __post_init__(self) -> None:
        check_choice("engine", self.engine, ENGINES)
        check_choice("batching", self.batching, BATCHING)
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be at least 1, got {self.max_batch_size}.")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}.")
        if self.default_max_tokens < 1:
            raise ConfigError(f"default_max_tokens must be at least 1, got {self.default_max_tokens}.")
        check_adapter_names(self.adapters, self.model.name)
