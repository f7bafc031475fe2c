"""Run one evaluation suite on several models (a base, its adapters, merged models) and report before/after.

`evaluate_run(EvalRunConfig)` is the whole `lorakit eval` road: `model_specs()` names the models, `build_suite()`
makes the suite (a YAML, plus quick tasks on dataset files), `run_eval()` evaluates and writes the report.

Each (model, task) result is cached under the lorakit cache, keyed by the model's weights, the task's settings and
its data files, so re-running a report recomputes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from lorakit.bundled import cache_root
from lorakit.config import (AdapterSpec, DataConfig, EvalRunConfig, EvalTaskConfig, ModelConfig, SuiteConfig,
                            load_config, parse_adapter, to_dict)
from lorakit.errors import ConfigError
from lorakit.eval.report import binomial_stderr, build_report, write_report
from lorakit.files import atomic_dir, sha256_file, write_json

CACHE_VERSION = 1
TaskRunner = Callable[[EvalTaskConfig, Any, Any, Any, Path], dict[str, Any]]  # task, model, tokenizer, template


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate: a label for the report, the base model and an optional adapter on it."""

    label: str
    base: str
    adapter: Path | None = None


def model_specs(base: str | None, adapters: Sequence[AdapterSpec | str],
                models: Sequence[AdapterSpec | str]) -> list[ModelSpec]:
    """The base first (the report's reference), then each adapter on it, then each merged/other model.

    Adapters and models are AdapterSpecs or their text, PATH or NAME=PATH; without `base`, the base model is the
    one the first adapter was trained on.
    """
    from lorakit.runs import adapter_base_model, find_adapter_dir

    adapter_specs = []
    for entry in adapters:
        spec = parse_adapter(entry) if isinstance(entry, str) else entry
        adapter_specs.append((spec.name, find_adapter_dir(spec.path)))
    if base is None:
        if not adapter_specs:
            raise ConfigError("Nothing to evaluate: set base (a model), and optionally adapters or models (paths).")
        base = adapter_base_model(adapter_specs[0][1])
    specs = [ModelSpec(_base_label(base), base)]
    specs += [ModelSpec(label, base, path) for label, path in adapter_specs]
    for entry in models:
        spec = parse_adapter(entry) if isinstance(entry, str) else entry  # a bare path is named after its folder
        specs.append(ModelSpec(spec.name, str(spec.path)))
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"Several models are called {', '.join(repeated)}; name them, writing each as NAME=PATH.")
    return specs


def build_suite(run: EvalRunConfig, overrides: Sequence[str] = ()) -> SuiteConfig:
    """The suite of an eval run: `run.suite`'s YAML with `overrides`, plus a quick perplexity and generation task
    on each of `run.data`; `run.limit` caps every task."""
    if run.suite is None and not run.data:
        raise ConfigError("Say what to evaluate on: set suite (a suite YAML, see configs/eval-forgetting.yaml) or "
                          "data (dataset files for perplexity and generation metrics).")
    config = load_config(run.suite, overrides, SuiteConfig) if run.suite is not None else SuiteConfig(name="quick")
    tasks = (*config.tasks, *quick_tasks(run.data))
    if run.limit is not None:
        tasks = tuple(replace(task, limit=run.limit) for task in tasks)
    return replace(config, tasks=tuple(tasks))


def quick_tasks(paths: Sequence[str]) -> tuple[EvalTaskConfig, ...]:
    """A perplexity and a generation task on each dataset file, named after it."""
    tasks: list[EvalTaskConfig] = []
    for path in paths:
        stem = Path(path).stem
        tasks += [EvalTaskConfig(kind="perplexity", name=f"{stem}-perplexity", data=DataConfig(paths=(path,))),
                  EvalTaskConfig(kind="generation", name=f"{stem}-generation", data=DataConfig(paths=(path,)))]
    return tuple(tasks)


def evaluate_run(run: EvalRunConfig, suite_overrides: Sequence[str] = (),
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole `lorakit eval` road: resolve the models, build the suite, evaluate, write the report under
    `run.output_dir`; returns the report. status.json there says whether it is running, finished or failed (what
    the web UI shows of an evaluation it started as a job)."""
    from lorakit.runs import track_status

    specs = model_specs(run.base, run.adapters, run.models)
    suite = build_suite(run, suite_overrides)
    log(f"Evaluating {', '.join(spec.label for spec in specs)} on {len(suite.tasks)} task(s) of '{suite.name}'.")
    model_config = ModelConfig(name=specs[0].base, dtype=run.dtype, device=run.device)
    with track_status(run.output_dir):
        return run_eval(suite, specs, run.output_dir, model_config, use_cache=run.use_cache, log=log)


def _base_label(base: str) -> str:
    path = Path(base)
    return path.name if path.is_dir() else base


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]


def _content_fingerprint(paths: list[Path]) -> list[tuple[str, str]]:
    """Name and content hash of every file: data and adapters are small, and an edit must invalidate the cache."""
    return [(str(p.relative_to(root)) if root.is_dir() else p.name, sha256_file(p))
            for root in paths for p in _files(root)]


def _weights_fingerprint(folder: Path) -> list[tuple[str, Any]]:
    """Base weights by file name and size (hashing gigabytes per run would cost more than it saves), the small
    config and tokenizer files by content; no paths or times, so a moved or copied model keeps its cache."""
    return [(str(p.relative_to(folder)), sha256_file(p) if p.stat().st_size < 2**24 else p.stat().st_size)
            for p in _files(folder)]


def _model_fingerprint(spec: ModelSpec) -> dict[str, Any]:
    from lorakit.model import resolve_model_path

    base = resolve_model_path(spec.base)
    base_path = Path(base)
    weights = _weights_fingerprint(base_path) if base_path.is_dir() else base
    adapter = _content_fingerprint([spec.adapter]) if spec.adapter is not None else None
    return {"base": weights, "adapter": adapter}


def _task_files(task: EvalTaskConfig) -> list[Path]:
    if task.kind in ("choice", "gsm8k"):
        source = Path(task.source).expanduser()
        return [source] if source.exists() else []
    from lorakit.data.load import data_files

    return data_files(task.data)


CODE_OF_KIND = {"choice": ("eval/benchmarks.py", "eval/choice.py"), "gsm8k": ("eval/gsm8k.py",),
                "generation": ("eval/generation.py", "eval/metrics.py", "infer/generate.py", "templates/__init__.py"),
                "perplexity": ("eval/perplexity.py", "data/tokenize.py", "templates/__init__.py", "train/loss.py")}


def _code_fingerprint(kind: str) -> str:
    """A change to the code that scores a task kind invalidates its cached results."""
    digest = hashlib.sha256()
    for name in CODE_OF_KIND[kind]:
        digest.update((Path(__file__).parents[1] / name).read_bytes())
    return digest.hexdigest()[:16]


def cache_key(spec: ModelSpec, task: EvalTaskConfig, model_config: ModelConfig) -> str:
    payload = {"version": CACHE_VERSION, "model": _model_fingerprint(spec), "task": to_dict(task),
               "files": _content_fingerprint(_task_files(task)), "loading": to_dict(replace(model_config, name="")),
               "code": _code_fingerprint(task.kind)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def eval_cache_root() -> Path:
    return cache_root().parent / "eval"


def _load_cached(key: str) -> dict[str, Any] | None:
    result_file = eval_cache_root() / key / "result.json"
    if not result_file.is_file():
        return None
    return json.loads(result_file.read_text(encoding="utf-8"))


def evaluate_models(suite: SuiteConfig, specs: list[ModelSpec], output_dir: Path,
                    model_config: ModelConfig = ModelConfig(), use_cache: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, dict[str, dict[str, Any]]]:
    """`{model label: {task label: result}}`; details (predictions, per-question records) go to output_dir."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in specs:
        keys = {task.label: cache_key(spec, task, model_config) for task in suite.tasks}
        cached = {label: _load_cached(key) for label, key in keys.items()} if use_cache else {}
        missing = [task for task in suite.tasks if cached.get(task.label) is None]
        loaded = _load(spec, model_config) if missing else None
        results[spec.label] = {}
        for task in suite.tasks:
            entry = eval_cache_root() / keys[task.label]
            if cached.get(task.label) is not None:
                log(f"{spec.label} / {task.label}: cached")
                result = cached[task.label]
            else:
                log(f"{spec.label} / {task.label}: running")
                with atomic_dir(entry) as tmp:
                    started = time.perf_counter()
                    result = run_task(task, *loaded, tmp)
                    result["wall_s"] = round(time.perf_counter() - started, 2)
                    write_json(tmp / "result.json", result)
                log(f"{spec.label} / {task.label}: {_summary(result)} in {result['wall_s']:.0f} s")
            _copy_details(entry, output_dir / "details" / spec.label / task.label)
            results[spec.label][task.label] = result
        del loaded
    return results


def _summary(result: dict[str, Any]) -> str:
    if not result["metrics"]:
        return f"{result.get('samples', 0)} answered, no references to score against"
    headline = result.get("headline") or list(result["metrics"])[:1]
    return ", ".join(f"{name} {result['metrics'][name]:.4g}" for name in headline[:3])


def _copy_details(entry: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for file in entry.iterdir():
        if file.name != "result.json":
            shutil.copy2(file, target / file.name)


def _load(spec: ModelSpec, model_config: ModelConfig):
    from lorakit.infer import load_for_inference

    return load_for_inference(replace(model_config, name=spec.base), spec.adapter)


def run_task(task: EvalTaskConfig, model: Any, tokenizer: Any, template: Any, details_dir: Path) -> dict[str, Any]:
    """Run one task on a loaded model; per-item details go to `details_dir`.

    `template` is the one the model was loaded with: an adapter's own training template, else the tokenizer's.
    """
    runners: dict[str, TaskRunner] = {"choice": _run_choice, "gsm8k": _run_gsm8k, "generation": _run_generation,
                                      "perplexity": _run_perplexity}
    result = runners[task.kind](task, model, tokenizer, template, details_dir)
    return {"task": task.label, "kind": task.kind, **result}


def _accuracy_scores(name: str, outcomes: list[bool]) -> dict[str, Any]:
    accuracy = sum(outcomes) / len(outcomes) if outcomes else 0.0
    return {"metrics": {name: accuracy}, "stderr": {name: binomial_stderr(accuracy, len(outcomes))},
            "n": {name: len(outcomes)}, "per_sample": {name: [float(o) for o in outcomes]},
            "percent": {name: True}, "higher_is_better": {name: True}}


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for field_name, values in part.items():
            merged.setdefault(field_name, {}).update(values)
    return merged


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def _run_choice(task: EvalTaskConfig, model: Any, tokenizer: Any, template: Any,
                details_dir: Path) -> dict[str, Any]:
    from lorakit.eval.benchmarks import load_choice_benchmark
    from lorakit.eval.choice import evaluate_choice

    benchmark = load_choice_benchmark(task.source, task.layout, task.split, list(task.subjects) or None, task.limit)
    result = evaluate_choice(model, tokenizer, benchmark, shots=task.shots_or_default, batch_size=task.batch_size,
                             scoring=task.scoring)
    _write_jsonl(details_dir / "questions.jsonl", result.records)
    by_category: dict[str, list[bool]] = {}
    by_subject: dict[str, list[bool]] = {}
    for record in result.records:
        subject = record["subject"]
        by_category.setdefault(benchmark.categories.get(subject, "other"), []).append(bool(record["correct"]))
        by_subject.setdefault(subject, []).append(bool(record["correct"]))
    parts = [_accuracy_scores("accuracy", [bool(r["correct"]) for r in result.records])]
    parts += [_accuracy_scores(category, outcomes) for category, outcomes in sorted(by_category.items())]
    parts += [_accuracy_scores(f"subject:{subject}", outcomes) for subject, outcomes in sorted(by_subject.items())]
    headline = sorted(by_category) if 1 < len(by_category) <= 6 else ["accuracy"]
    return {**_merge(*parts), "headline": headline, "shots": task.shots_or_default}


def _run_gsm8k(task: EvalTaskConfig, model: Any, tokenizer: Any, template: Any,
               details_dir: Path) -> dict[str, Any]:
    from lorakit.eval.gsm8k import evaluate_gsm8k, load_gsm8k

    problems = load_gsm8k(Path(task.source).expanduser(), limit=task.limit)
    result = evaluate_gsm8k(model, tokenizer, problems, shots=task.shots_or_default, batch_size=task.batch_size,
                            max_new_tokens=task.max_new_tokens or 256)
    _write_jsonl(details_dir / "problems.jsonl", result.records)
    return {**_accuracy_scores("accuracy", [bool(r["correct"]) for r in result.records]), "headline": ["accuracy"],
            "shots": task.shots_or_default}


def _template_for(task: EvalTaskConfig, tokenizer: Any, loaded: Any):
    """The task's named template, or (auto) the one the model was trained with, so scoring sees training's format."""
    from lorakit.templates import resolve_template

    return loaded if task.data.template == "auto" else resolve_template(task.data.template, tokenizer)


def _conversations(task: EvalTaskConfig):
    from lorakit.data import load_conversations

    conversations, _ = load_conversations(task.data)
    return conversations[: task.limit] if task.limit else conversations


def _run_generation(task: EvalTaskConfig, model: Any, tokenizer: Any, template: Any,
                    details_dir: Path) -> dict[str, Any]:
    from lorakit.eval.generation import evaluate_generation, read_predictions
    from lorakit.infer import GenerationConfig

    predictions = details_dir / "predictions.jsonl"
    generation = GenerationConfig(max_new_tokens=task.max_new_tokens or 128, batch_size=task.batch_size)
    scores = evaluate_generation(model, tokenizer, _template_for(task, tokenizer, template), _conversations(task),
                                 predictions, generation, system=task.data.system)
    rows = [row for row in read_predictions(predictions) if row.get("scores")]
    names = [name for name in ("rouge1", "rouge2", "rougeL", "bleu4", "chrf", "exact_match", "f1") if name in scores]
    per_sample = {name: [row["scores"][name] / 100 for row in rows if name in row.get("scores", {})]
                  for name in names}
    return {"metrics": {name: scores[name] / 100 for name in names},
            "stderr": {name: _mean_stderr(values) for name, values in per_sample.items()},
            "n": {name: len(rows) for name in names}, "per_sample": per_sample,
            "percent": {name: True for name in names}, "higher_is_better": {name: True for name in names},
            "headline": [name for name in ("rougeL", "bleu4") if name in names], "samples": int(scores["samples"])}


def _mean_stderr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


def _run_perplexity(task: EvalTaskConfig, model: Any, tokenizer: Any, template: Any,
                    details_dir: Path) -> dict[str, Any]:
    from lorakit.eval.perplexity import evaluate_perplexity

    scores = evaluate_perplexity(model, tokenizer, _template_for(task, tokenizer, template), _conversations(task),
                                 task.data, batch_size=task.batch_size)
    write_json(details_dir / "perplexity.json", scores)
    names = ("loss", "perplexity")
    return {"metrics": {name: scores[name] for name in names}, "n": {name: int(scores["tokens"]) for name in names},
            "higher_is_better": {name: False for name in names}, "percent": {name: False for name in names},
            "headline": list(names)}


def run_eval(suite: SuiteConfig, specs: list[ModelSpec], output_dir: Path, model_config: ModelConfig = ModelConfig(),
             use_cache: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate every model on the suite and write the before/after report (reference: the first model)."""
    if not suite.tasks:
        raise ConfigError(f"Suite '{suite.name}' has no tasks; list them under `tasks:` (see configs/eval-*.yaml).")
    results = evaluate_models(suite, specs, output_dir, model_config, use_cache, log)
    report = build_report(results, reference=specs[0].label, sigmas=suite.noise_sigmas, suite_name=suite.name)
    report["paths"] = [str(p) for p in write_report(report, output_dir)]
    return report
