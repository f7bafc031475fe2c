"""`GenerateConfig`: `lorakit data generate`, training records written by an LLM from documents and scored by a
judge model (`lorakit.data.generate`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorakit.config.core import check_choice
from lorakit.config.evaluate import ENDPOINT_BACKENDS, EndpointConfig
from lorakit.errors import ConfigError

GENERATE_MODES = ("qa", "summary", "continuation", "dialogue", "custom")
GENERATE_FORMATS = ("alpaca", "sharegpt", "openai")
GENERATE_LANGUAGES = ("auto", "en", "zh")


@dataclass(frozen=True)
class JudgeSettings:
    """The judge of generated records: its endpoint defaults to the generator's (`backend`, `base_url`, `model`,
    `api_key` left empty; the generator's `adapter` too while `model` is). `rubric` is a text file replacing the
    default rubric; a record scoring under `threshold` (1-10) goes to the rejects file."""

    enabled: bool = True
    backend: str = ""
    base_url: str = ""
    model: str = ""
    api_key: str = ""
    adapter: Path | None = None
    rubric: Path | None = None
    threshold: float = 6.0

    def __post_init__(self) -> None:
        if self.backend:
            check_choice("judge.backend", self.backend, ENDPOINT_BACKENDS)
        if not 1 <= self.threshold <= 10:
            raise ConfigError(f"judge.threshold must be between 1 and 10, got {self.threshold}.")
        if self.rubric is not None and not Path(self.rubric).is_file():
            raise ConfigError(f"judge.rubric {self.rubric} does not exist; write the rubric as a text file, or "
                              "leave judge.rubric out for the default one.")

    def endpoint(self, generator: EndpointConfig) -> EndpointConfig:
        from dataclasses import replace

        adapter = self.adapter if self.adapter is not None or self.model else generator.adapter
        try:
            return replace(generator, backend=self.backend or generator.backend,
                           base_url=self.base_url or generator.base_url, model=self.model or generator.model,
                           api_key=self.api_key or generator.api_key, adapter=adapter)
        except ConfigError as err:
            raise ConfigError(f"judge: {err} (The judge's keys are judge.backend, judge.base_url, judge.model, "
                              "judge.adapter; empty ones are the generator's.)") from None


@dataclass(frozen=True)
class GenerateConfig:
    """One `lorakit data generate` run: documents in `input` (a file or folder of .txt, .md, .jsonl, .pdf, .docx) cut
    into chunks of at most `chunk_chars` characters (`chunk_overlap` repeated from the previous chunk), each turned
    into records by `generator` in `mode`, scored by `judge`, written to `output_dir` as `output_format` JSONL.

    `questions_per_chunk` is for qa; `template` (a Jinja file) for custom; `language` auto follows each chunk.
    `output_file` names the data file in `output_dir` (default `<dataset_name>.jsonl`); one ending in .json is
    written as a JSON array.
    An interrupted run goes on where it stopped when run again with the same settings (`force` starts over).
    """

    input: Path
    output_dir: Path
    generator: EndpointConfig
    mode: str = "qa"
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    output_format: str = "alpaca"
    language: str = "auto"
    chunk_chars: int = 1500
    chunk_overlap: int = 150
    questions_per_chunk: int = 3
    template: Path | None = None
    temperature: float = 0.7
    dataset_name: str = "generated"
    output_file: str | None = None
    max_chunks: int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, GENERATE_MODES)
        check_choice("output_format", self.output_format, GENERATE_FORMATS)
        check_choice("language", self.language, GENERATE_LANGUAGES)
        problems = []
        if self.chunk_chars < 100:
            problems.append(f"chunk_chars must be at least 100 characters, got {self.chunk_chars}")
        if not 0 <= self.chunk_overlap < self.chunk_chars // 2:
            problems.append(f"chunk_overlap must be at least 0 and under half of chunk_chars "
                            f"({self.chunk_chars // 2}), got {self.chunk_overlap}")
        if not 1 <= self.questions_per_chunk <= 50:
            problems.append(f"questions_per_chunk must be between 1 and 50, got {self.questions_per_chunk}")
        if self.mode == "custom" and (self.template is None or not Path(self.template).is_file()):
            problems.append("mode custom needs template: a Jinja prompt file (variables: chunk, source, heading, "
                            f"language, index), got {self.template}")
        if not 0 <= self.temperature <= 2:
            problems.append(f"temperature must be between 0 and 2, got {self.temperature}")
        if self.max_chunks is not None and self.max_chunks < 1:
            problems.append(f"max_chunks must be positive (or left out for all), got {self.max_chunks}")
        if not self.dataset_name.strip():
            problems.append("dataset_name is empty; it names the entry in dataset_info.json")
        if self.output_file is not None and (Path(self.output_file).name != self.output_file
                                             or Path(self.output_file).suffix.lower() not in (".json", ".jsonl")):
            problems.append(f"output_file must be a file name ending in .jsonl or .json (it is written in "
                            f"output_dir), got '{self.output_file}'")
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    @property
    def data_file(self) -> str:
        """The data file's name in output_dir."""
        return self.output_file or f"{self.dataset_name}.jsonl"
