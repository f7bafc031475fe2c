"""`lorakit sweep`: train a grid of configurations on the same data, score each, rank them.

Each grid point is an ordinary `lorakit train` run (same run_training) in its own folder under the sweep's output,
scored by its held-out loss (data.val_size) or by an evaluation suite (the same suite code as `lorakit eval`).
A finished point is not trained again, so a stopped sweep continues where it left off.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from lorakit.config import SuiteConfig, TrainConfig, load_config, to_dict
from lorakit.errors import ConfigError
from lorakit.files import save_figure, write_json, write_text
from lorakit.runs import open_run, run_status, saved_config

LOSS_METRIC = "eval_loss"
_UNSAFE = re.compile(r"[^\w.+-]")


@dataclass(frozen=True)
class Objective:
    """What a sweep ranks by: a key of the run's scores, and which way is better."""

    metric: str
    higher_is_better: bool


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["lora.rank=4,8", "lora.alpha=8,16"]` -> `{"lora.rank": ["4", "8"], "lora.alpha": ["8", "16"]}`."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        choices = [value.strip() for value in values.split(",") if value.strip()]
        if not sep or not key.strip() or not choices:
            raise ConfigError(f"grid entry '{item}' is not of the form key=v1,v2,... (e.g. lora.rank=4,8,16).")
        if key.strip() in grid:
            raise ConfigError(f"grid names {key.strip()} twice; give all its values in one entry (key=v1,v2).")
        grid[key.strip()] = choices
    if not grid:
        raise ConfigError("A sweep needs at least one grid entry key=v1,v2 (e.g. lora.rank=4,8,16).")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def run_name(point: dict[str, str]) -> str:
    """`{"lora.rank": "8", "learning_rate": "1e-4"}` -> "rank-8_learning_rate-1e-4" (full keys where the last parts
    would clash; characters a folder name cannot hold become "-")."""
    short = [key.split(".")[-1] for key in point]
    keys = short if len(set(short)) == len(short) else [key.replace(".", "-") for key in point]
    values = [_UNSAFE.sub("-", value) for value in point.values()]
    return "_".join(f"{key}-{value}" for key, value in zip(keys, values))


def _objective(config: TrainConfig, suite: SuiteConfig | None, metric: str | None) -> Objective:
    if suite is None:
        if metric not in (None, LOSS_METRIC):
            raise ConfigError(f"metric {metric} needs a suite; without a suite a sweep ranks by {LOSS_METRIC}.")
        if config.data.val_size == 0:
            raise ConfigError("Without a suite a sweep ranks runs by held-out loss, so it needs a validation split: "
                              "set data.val_size (e.g. data.val_size=0.1) or give a suite (SUITE.yaml).")
        return Objective(LOSS_METRIC, higher_is_better=False)
    if metric is None:
        if not suite.tasks:
            raise ConfigError(f"Suite '{suite.name}' has no tasks.")
        first = suite.tasks[0]
        metric = f"{first.label}/" + {"choice": "accuracy", "gsm8k": "accuracy", "generation": "rougeL",
                                      "perplexity": "loss"}[first.kind]
    return Objective(metric, higher_is_better=not metric.endswith(("/loss", "/perplexity", LOSS_METRIC)))


def _check_same_run(run_dir: Path, config: TrainConfig) -> None:
    """A finished run is reused only if it was trained with this very config; else the sweep would rank stale runs."""
    saved = to_dict(saved_config(run_dir))
    wanted = to_dict(config)
    if saved != wanted:
        differs = sorted(key for key in set(saved or {}) | set(wanted) if (saved or {}).get(key) != wanted.get(key))
        raise ConfigError(f"{run_dir} holds a run trained with other settings ({', '.join(differs)} differ). Delete "
                          "that folder, or give the sweep another output folder.")


def _finished(output_dir: Path) -> bool:
    return run_status(output_dir).state == "finished" and open_run(output_dir).is_adapter


def _scores(output_dir: Path, config: TrainConfig, suite: SuiteConfig | None, label: str,
            log: Callable[[str], None]) -> dict[str, float]:
    metrics = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
    scores = {key: float(value) for key, value in metrics.items() if key in (LOSS_METRIC, "train_loss")}
    if suite is not None:
        from lorakit.eval.report import flatten_scores
        from lorakit.eval.suite import ModelSpec, evaluate_models

        spec = ModelSpec(label, config.model.name, output_dir / "adapter")
        results = evaluate_models(suite, [spec], output_dir / "eval", config.model, log=log)
        scores.update({key: score["value"] for key, score in flatten_scores(results[label]).items()})
    return scores


def run_sweep(config_path: Path | None, overrides: list[str], grid: dict[str, list[str]], output_dir: Path,
              suite: SuiteConfig | None = None, metric: str | None = None,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train and score every grid point; return the runs best first and write sweep.json, sweep.md, heatmap.png."""
    from lorakit.train import run_training

    base = load_config(config_path, overrides, TrainConfig)
    objective = _objective(base, suite, metric)
    runs = []
    for index, point in enumerate(grid_points(grid), 1):
        name = run_name(point)
        run_dir = output_dir / name
        config = load_config(config_path, [*overrides, *(f"{k}={v}" for k, v in point.items())], TrainConfig)
        config = replace(config, output_dir=run_dir)
        if _finished(run_dir):
            _check_same_run(run_dir, config)
            log(f"[{index}/{len(grid_points(grid))}] {name}: already trained")
        else:
            log(f"[{index}/{len(grid_points(grid))}] {name}: training")
            run_training(config)
        scores = _scores(run_dir, config, suite, name, log)
        if objective.metric not in scores:
            raise ConfigError(f"Run {name} has no score '{objective.metric}'; scores are: {', '.join(scores)}.")
        runs.append({"name": name, "point": point, "output_dir": str(run_dir), "scores": scores,
                     "objective": scores[objective.metric]})
        log(f"{name}: {objective.metric} = {scores[objective.metric]:.4g}")
    sign = -1 if objective.higher_is_better else 1
    runs.sort(key=lambda run: (math.isnan(run["objective"]), sign * run["objective"]))  # a diverged run goes last
    _write_outputs(runs, grid, objective, base, output_dir)
    return runs


def _write_outputs(runs: list[dict[str, Any]], grid: dict[str, list[str]], objective: Objective, base: TrainConfig,
                   output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "sweep.json", {"objective": objective.__dict__, "grid": grid, "runs": runs,
                                           "base_config": to_dict(base)})
    direction = "higher" if objective.higher_is_better else "lower"
    lines = [f"# Sweep ranked by {objective.metric} ({direction} is better), best first", "",
             "| rank | " + " | ".join(grid) + f" | {objective.metric} | output |",
             "|---|" + "---|" * (len(grid) + 2)]
    for rank, run in enumerate(runs, 1):
        cells = " | ".join(run["point"][key] for key in grid)
        lines.append(f"| {rank} | {cells} | {run['objective']:.4g} | {run['output_dir']} |")
    heatmap = plot_heatmap(runs, grid, objective, output_dir / "heatmap.png")
    if heatmap is not None:
        lines += ["", f"![{objective.metric}]({heatmap.name})"]
    write_text(output_dir / "sweep.md", "\n".join(lines) + "\n")


def plot_heatmap(runs: list[dict[str, Any]], grid: dict[str, list[str]], objective: Objective,
                 path: Path) -> Path | None:
    """The objective over the first two grid keys (the best over any further keys); one key gives one row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(grid)
    rows_key, cols_key = (keys[0], keys[1]) if len(keys) > 1 else (None, keys[0])
    row_values = grid[rows_key] if rows_key else [""]
    col_values = grid[cols_key]
    pick = max if objective.higher_is_better else min
    table = [[math.nan] * len(col_values) for _ in row_values]
    for i, row_value in enumerate(row_values):
        for j, col_value in enumerate(col_values):
            matches = [run["objective"] for run in runs if run["point"][cols_key] == col_value
                       and (rows_key is None or run["point"][rows_key] == row_value)]
            if matches:
                table[i][j] = pick(matches)
    figure, ax = plt.subplots(figsize=(1.2 * len(col_values) + 2.5, 0.8 * len(row_values) + 1.8))
    image = ax.imshow(table, cmap="viridis" if objective.higher_is_better else "viridis_r", aspect="auto")
    ax.set_xticks(range(len(col_values)), col_values)
    ax.set_yticks(range(len(row_values)), row_values)
    ax.set_xlabel(cols_key)
    if rows_key:
        ax.set_ylabel(rows_key)
    for i in range(len(row_values)):
        for j in range(len(col_values)):
            if not math.isnan(table[i][j]):
                ax.text(j, i, f"{table[i][j]:.3g}", ha="center", va="center", color="white", fontsize=9)
    extra = f" (best over {', '.join(keys[2:])})" if len(keys) > 2 else ""
    ax.set_title(f"{objective.metric}{extra}")
    figure.colorbar(image, ax=ax)
    figure.tight_layout()
    return save_figure(figure, path)
