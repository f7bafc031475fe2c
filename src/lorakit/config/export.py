"""Export configs: `MergeConfig` (base + adapter -> one model folder), `GGUFConfig` (llama.cpp's file format),
`OllamaConfig` (a GGUF with its Modelfile) and `HubConfig` (an upload to the Hugging Face Hub).

Each names what it reads (`source`: a run folder, an adapter folder, or a model folder) and where it writes
(`output`), which must not exist unless `force` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lorakit.config.core import DTYPES, check_choice
from lorakit.errors import ConfigError

# What a QLoRA adapter is merged onto: the dequantised 4/8-bit weights it was trained against, or the original ones.
ONTO = ("quantized", "full")
# Written by llama.cpp's converter in one pass.
GGUF_DIRECT_TYPES = ("f32", "f16", "bf16", "q8_0")
# Written by llama.cpp's quantizer from an f16 (or f32) GGUF.
GGUF_QUANT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m",
                    "q5_k_s", "q5_k_m", "q6_k", "iq4_nl")
GGUF_OUTTYPES = GGUF_DIRECT_TYPES + GGUF_QUANT_TYPES


def _paths(config: object, *names: str) -> None:
    """Fields typed Path stay Paths when a config is built in Python from strings."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(config, name, Path(value).expanduser())


def _check_shard_size(value: str) -> None:
    import re

    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|KiB|MiB|GiB)", value.strip(), flags=re.IGNORECASE):
        raise ConfigError(f"max_shard_size must be a size such as 500MB or 2GB, got '{value}'.")


@dataclass(frozen=True)
class MergeConfig:
    """Base model + LoRA adapter -> one Hugging Face model folder that loads without PEFT.

    `source` is a run folder or an adapter folder (a full or freeze run's `model/` is copied as it is). `base`
    overrides the base model recorded with the adapter. `onto` matters only for QLoRA adapters. `dtype` is the
    stored dtype (auto: the base's). `check_tolerance` is the largest mean KL(base+adapter || merged) per token, in
    nats, that the merge check accepts; `device` is where that check runs.
    """

    source: Path
    output: Path
    base: str | None = None
    onto: str = "quantized"
    dtype: str = "auto"
    max_shard_size: str = "2GB"
    check_tolerance: float = 1e-3
    device: str = "cpu"
    force: bool = False

    def __post_init__(self) -> None:
        _paths(self, "source", "output")
        check_choice("onto", self.onto, ONTO)
        check_choice("dtype", self.dtype, DTYPES)
        _check_shard_size(self.max_shard_size)
        if self.check_tolerance <= 0:
            raise ConfigError(f"check_tolerance must be positive, got {self.check_tolerance}.")


@dataclass(frozen=True)
class GGUFConfig:
    """A run, adapter or model folder -> one GGUF file for llama.cpp, LM Studio or Ollama.

    `adapter_only` writes llama.cpp's LoRA GGUF of the adapter instead of a whole model. `perplexity_data` (a
    dataset file) measures what quantisation cost on held-out text; `perplexity_records` bounds it.
    """

    source: Path
    output: Path
    outtype: str = "f16"
    adapter_only: bool = False
    base: str | None = None
    onto: str = "quantized"
    perplexity_data: Path | None = None
    perplexity_records: int = 32
    force: bool = False

    def __post_init__(self) -> None:
        _paths(self, "source", "output", "perplexity_data")
        check_choice("outtype", self.outtype, GGUF_OUTTYPES)
        check_choice("onto", self.onto, ONTO)
        if self.adapter_only and self.outtype not in ("f32", "f16", "bf16", "q8_0"):
            raise ConfigError(f"An adapter-only GGUF is written as f32, f16, bf16 or q8_0; got outtype "
                              f"'{self.outtype}'. Quantise the base GGUF instead.")
        if self.perplexity_records < 1:
            raise ConfigError(f"perplexity_records must be at least 1, got {self.perplexity_records}.")


@dataclass(frozen=True)
class OllamaConfig:
    """A run -> a folder with its GGUF, a Modelfile and a README with the `ollama create` command."""

    source: Path
    output: Path
    quant: str = "q4_k_m"
    system: str | None = None
    adapter_only: bool = False
    base: str | None = None
    name: str | None = None
    force: bool = False

    def __post_init__(self) -> None:
        _paths(self, "source", "output")
        check_choice("quant", self.quant, GGUF_OUTTYPES)


@dataclass(frozen=True)
class HubConfig:
    """A run, adapter, merged model folder or GGUF -> a Hugging Face Hub model repository, with a model card.

    `dry_run` builds the file list and the card without any network. The token comes from the environment
    (HF_TOKEN) or `hf auth login`; it is never saved in a config. `private` applies when the repository is created.
    """

    source: Path
    repo_id: str
    private: bool = False
    dry_run: bool = False
    commit_message: str = "Upload with lorakit"

    def __post_init__(self) -> None:
        import re

        _paths(self, "source")
        if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", self.repo_id):
            raise ConfigError(f"repo_id must be OWNER/NAME (e.g. alice/qwen-identity), got '{self.repo_id}'.")
