"""Evaluation configs: the tasks of a suite (`SuiteConfig`), one `lorakit eval` run over several models
(`EvalRunConfig`) and the OpenAI-compatible endpoint an LLM judge is asked through (`EndpointConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorakit.config.core import DEVICES, DTYPES, check_choice
from lorakit.config.inference import AdapterSpec
from lorakit.config.train import DataConfig
from lorakit.errors import ConfigError

EVAL_KINDS = ("choice", "gsm8k", "generation", "perplexity")
CHOICE_SCORINGS = ("letter", "content")
ENDPOINT_BACKENDS = ("openai", "local")


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
        check_choice("tasks[].kind", self.kind, EVAL_KINDS)
        check_choice("tasks[].scoring", self.scoring, CHOICE_SCORINGS)
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


@dataclass(frozen=True)
class EvalRunConfig:
    """One `lorakit eval` run: the models (a base, adapters on it, other models), the suite and the report folder.

    The suite is `suite` (a YAML of tasks), plus a quick perplexity and generation task on each of `data`;
    `limit` caps every task. The base model defaults to the one the first adapter was trained on.
    """

    suite: Path | None = None
    data: tuple[str, ...] = ()
    base: str | None = None
    adapters: tuple[AdapterSpec, ...] = ()
    models: tuple[AdapterSpec, ...] = ()
    output_dir: Path = Path("outputs/eval")
    limit: int | None = None
    use_cache: bool = True
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("dtype", self.dtype, DTYPES)
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive (or left out for all), got {self.limit}.")


@dataclass(frozen=True)
class EndpointConfig:
    """A chat model asked for replies (a judge, a data generator): by default (`backend: openai`) an
    OpenAI-compatible endpoint at `base_url`; with `backend: local`, `model` (a bundled name, a model folder or a hub
    id, with an optional `adapter`: a lorakit run or adapter folder) loaded by lorakit and answered in batches of
    up to `concurrency` requests. `max_requests` caps the requests sent, retries included (None: no cap)."""

    base_url: str = ""
    model: str = ""
    api_key: str = "EMPTY"
    max_retries: int = 3  # with exponential backoff, by the openai client (connection errors, 408, 429, 5xx)
    timeout: float = 120.0  # seconds per request
    max_tokens: int = 512
    concurrency: int = 4  # requests in flight at once
    max_requests: int | None = None
    backend: str = "openai"
    adapter: Path | None = None  # backend local only

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, ENDPOINT_BACKENDS)
        if self.backend == "local":
            if not self.model:
                raise ConfigError("backend is local but model is empty; set model to a bundled name (e.g. "
                                  "smollm2-135m), a model folder or a hub id.")
            if self.adapter is not None and not Path(self.adapter).exists():
                raise ConfigError(f"adapter {self.adapter} does not exist; give a lorakit run folder or an adapter "
                                  "folder, or leave adapter out.")
        else:
            if self.adapter is not None:
                raise ConfigError("adapter is set but backend is openai: an endpoint serves its own adapters (ask "
                                  "for one by model name), or set backend: local to load the model here.")
            if not self.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"The endpoint's base_url must start with http:// or https://, got "
                                  f"'{self.base_url}' (e.g. http://localhost:8000/v1), or set backend: local to "
                                  "load the model here.")
            if not self.model:
                raise ConfigError("The endpoint's model is empty; set it to a model served at base_url (e.g. "
                                  "gpt-4o-mini).")
        problems = []
        if self.concurrency < 1:
            problems.append(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            problems.append(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.timeout <= 0:
            problems.append(f"timeout must be a positive number of seconds, got {self.timeout}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.max_requests is not None and self.max_requests < 1:
            problems.append(f"max_requests must be at least 1 (or null for no cap), got {self.max_requests}")
        if problems:
            raise ConfigError(f"The endpoint {self.base_url or self.model}: " + "; ".join(problems) + ".")
