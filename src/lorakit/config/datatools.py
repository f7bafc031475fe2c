"""Dataset tool configs: `DedupeConfig`, `SplitConfig`, `MixConfig`, `SampleConfig` and `FilterConfig`.

Each reads the datasets named in `data` (the same `data.paths`, `data.dataset_dir`, `data.columns`, `data.format`
and `data.skip_bad` that training reads), writes `output` (which must not exist unless `force` is set) with records
in `output_format` ("keep": the fields as read; or openai, sharegpt, alpaca, text), and is seeded by `seed`.
Sizes below 1 are fractions; 1 and above are record counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lorakit.config.core import check_choice
from lorakit.config.train import DataConfig
from lorakit.errors import ConfigError

OUTPUT_FORMATS = ("keep", "openai", "sharegpt", "alpaca", "text")
DEDUPE_METHODS = ("exact", "near")
# Scripts the language filter tells apart; see lorakit.data.tools.detect_language.
LANGUAGES = ("zh", "ja", "ko", "latin", "other")


def _check_output(config: object, folder: bool = False) -> None:
    output = getattr(config, "output")
    if not isinstance(output, Path):
        object.__setattr__(config, "output", Path(output).expanduser())
    if not folder and config.output.suffix.lower() not in (".json", ".jsonl"):
        raise ConfigError(f"output {config.output}: name it .jsonl (one record per line) or .json (an array).")
    check_choice("output_format", config.output_format, OUTPUT_FORMATS)


def _check_size(key: str, value: float) -> None:
    if value < 0 or (value >= 1 and not float(value).is_integer()):
        raise ConfigError(f"{key} must be a fraction in [0, 1) or a whole record count, got {value}.")


@dataclass(frozen=True)
class DedupeConfig:
    """Drop exact and near-duplicate records, keeping the first of each cluster.

    `fields` are compared (raw field names, or `prompt`, `response`, `text`: a record's user turns, assistant
    turns, or all of it). `method: exact` compares normalised text (case, width, whitespace and punctuation
    ignored); `near` also drops records whose MinHash-estimated Jaccard similarity of character `ngram`s with a kept
    record is at least `threshold`. The clusters are written to `<output stem>.dedupe.json`.
    """

    output: Path
    data: DataConfig = field(default_factory=DataConfig)
    fields: tuple[str, ...] = ("prompt",)
    method: str = "near"
    threshold: float = 0.6
    ngram: int = 3
    permutations: int = 128
    output_format: str = "keep"
    seed: int = 42
    force: bool = False

    def __post_init__(self) -> None:
        _check_output(self)
        check_choice("method", self.method, DEDUPE_METHODS)
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}.")
        if self.ngram < 1:
            raise ConfigError(f"ngram must be a positive number of characters, got {self.ngram}.")
        if self.permutations < 16:
            raise ConfigError(f"permutations must be at least 16 (128 is typical), got {self.permutations}.")
        if not self.fields:
            raise ConfigError("fields is empty; name the fields to compare, e.g. fields=[prompt].")


@dataclass(frozen=True)
class SplitConfig:
    """Split the records into `output/train.jsonl`, `validation.jsonl` and `test.jsonl`.

    `validation` and `test` are fractions or counts; train gets the rest. `stratify_by_source` splits each source
    file (a record's provenance) by the same shares, so each part mixes the sources as the whole does.
    """

    output: Path
    data: DataConfig = field(default_factory=DataConfig)
    validation: float = 0.1
    test: float = 0.0
    stratify_by_source: bool = False
    output_format: str = "keep"
    seed: int = 42
    force: bool = False

    def __post_init__(self) -> None:
        _check_output(self, folder=True)
        _check_size("validation", self.validation)
        _check_size("test", self.test)
        if self.validation < 1 and self.test < 1 and self.validation + self.test >= 1:
            raise ConfigError(f"validation ({self.validation}) + test ({self.test}) = "
                              f"{self.validation + self.test:g} leaves nothing to train on; their sum must be "
                              "below 1.")


@dataclass(frozen=True)
class MixConfig:
    """Mix the datasets in `data.paths`, e.g. to replay general data against forgetting.

    Give either `ratios` (one per dataset, shares of `size` records; `size` defaults to all records read) or
    `counts` (records per dataset). A dataset smaller than its share is repeated, and counted as such.
    """

    output: Path
    data: DataConfig = field(default_factory=DataConfig)
    ratios: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    size: int | None = None
    output_format: str = "keep"
    seed: int = 42
    force: bool = False

    def __post_init__(self) -> None:
        _check_output(self)
        if self.ratios and self.counts:
            raise ConfigError("Set ratios or counts, not both.")
        given = self.ratios or self.counts
        if given and len(given) != len(self.data.paths):
            key = "ratios" if self.ratios else "counts"
            raise ConfigError(f"{key} has {len(given)} values but data.paths names {len(self.data.paths)} "
                              "datasets; give one per dataset.")
        if any(r <= 0 for r in self.ratios):
            raise ConfigError(f"ratios must all be positive, got {list(self.ratios)}.")
        if any(c < 0 for c in self.counts):
            raise ConfigError(f"counts must not be negative, got {list(self.counts)}.")
        if self.size is not None and self.counts:
            raise ConfigError("size goes with ratios; with counts the size is their sum.")
        if self.size is not None and self.size <= 0:
            raise ConfigError(f"size must be a positive record count, got {self.size}.")


@dataclass(frozen=True)
class SampleConfig:
    """Draw `size` records (a fraction or a count) at random, without repetition, in their original order."""

    output: Path
    size: float
    data: DataConfig = field(default_factory=DataConfig)
    output_format: str = "keep"
    seed: int = 42
    force: bool = False

    def __post_init__(self) -> None:
        _check_output(self)
        _check_size("size", self.size)
        if self.size == 0:
            raise ConfigError("size is 0; give a fraction such as 0.1 or a record count.")


@dataclass(frozen=True)
class FilterConfig:
    """Keep the records that pass every test set: token length, language, score and regular expressions.

    Length, language and the expressions look at `fields` (joined); `min_tokens`/`max_tokens` count tokens of
    `tokenizer` (a model name or folder). `languages` keeps records whose script is one of zh, ja, ko, latin,
    other. `score_field` with `min_score`/`max_score` reads a number from each record. `include` must match and
    `exclude` must not (Python `re`, searched anywhere in the text).
    """

    output: Path
    data: DataConfig = field(default_factory=DataConfig)
    fields: tuple[str, ...] = ("text",)
    tokenizer: str | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    languages: tuple[str, ...] = ()
    score_field: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    include: str | None = None
    exclude: str | None = None
    output_format: str = "keep"
    seed: int = 42
    force: bool = False

    def __post_init__(self) -> None:
        _check_output(self)
        for language in self.languages:
            check_choice("languages", language, LANGUAGES)
        if (self.min_tokens is not None or self.max_tokens is not None) and not self.tokenizer:
            raise ConfigError("min_tokens/max_tokens count tokens: set tokenizer to a model name or folder.")
        if (self.min_score is not None or self.max_score is not None) and not self.score_field:
            raise ConfigError("min_score/max_score need score_field, the record field holding the score.")
        if not self.fields:
            raise ConfigError("fields is empty; name the fields to look at, e.g. fields=[text].")
        for key in ("include", "exclude"):
            pattern = getattr(self, key)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ConfigError(f"{key} is not a valid regular expression ({err}): {pattern!r}.") from None
