"""`load_config()`: any config from an optional YAML file and `key=value` overrides, which win over the file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lorakit.config.core import T, build, flatten, parse_overrides, read_yaml, set_dotted
from lorakit.config.train import ALIASES, TrainConfig, apply_aliases


def load_config(path: Path | None = None, overrides: Sequence[str] = (), cls: type[T] = TrainConfig) -> T:
    """Build a `cls` (TrainConfig, SuiteConfig, GenerationConfig, ServeConfig, EvalRunConfig, EndpointConfig, ...)
    from a YAML file (optional) and `key=value` overrides, which win over the file.

    LLaMA-Factory's flat keys are translated for a TrainConfig only. Raises ConfigError for an unknown key (with
    the closest known one), a value of the wrong type, or a missing required key.
    """
    translate = apply_aliases if cls is TrainConfig else dict
    raw = translate(read_yaml(path)) if path is not None else {}
    for key, value in translate(flatten(parse_overrides(overrides))).items():
        set_dotted(raw, key, value)
    return build(cls, raw, suggest=list(ALIASES) if cls is TrainConfig else ())
