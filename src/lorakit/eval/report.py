"""The before/after report: every model's scores side by side, deltas against the reference model, and a plain
statement of which scores moved beyond the noise of the number of questions.

A task result (see suite.py) is plain data: `{"task", "kind", "metrics": {name: value}, "stderr": {name: se},
"higher_is_better": {name: bool}, "n": {name: count}, "per_sample": {name: [values]}, "headline": [names]}`.
Scores on a 0-100 scale (accuracies, ROUGE, BLEU) share the radar chart; loss and perplexity stay in the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.files import save_figure, write_json, write_text

RELATIVE_THRESHOLD = 0.01  # for a score without any standard error (e.g. corpus BLEU): 1% relative change


@dataclass(frozen=True)
class Change:
    """One score of one model against the reference model."""

    key: str
    reference: float
    value: float
    margin: float | None
    higher_is_better: bool
    verdict: str  # "dropped", "improved", "unchanged", "invalid" (not a finite number) or "missing"

    @property
    def delta(self) -> float:
        return self.value - self.reference


def binomial_stderr(accuracy: float, count: int) -> float | None:
    """Standard error of an accuracy measured on `count` questions, as a fraction."""
    if count <= 0:
        return None
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / count)


def paired_stderr(first: list[float], second: list[float]) -> float | None:
    """Standard error of the mean difference of per-sample scores measured on the same samples."""
    if len(first) != len(second) or len(first) < 2:
        return None
    diffs = [b - a for a, b in zip(first, second)]
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return math.sqrt(variance / len(diffs))


def flatten_scores(task_results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`{task: result}` -> `{"task/metric": {"value", "stderr", "higher_is_better", "n", "per_sample", ...}}`."""
    flat: dict[str, dict[str, Any]] = {}
    for task, result in task_results.items():
        headline = set(result.get("headline") or result["metrics"])
        for metric, value in result["metrics"].items():
            flat[f"{task}/{metric}"] = {
                "value": value,
                "stderr": result.get("stderr", {}).get(metric),
                "higher_is_better": result.get("higher_is_better", {}).get(metric, True),
                "n": result.get("n", {}).get(metric),
                "per_sample": result.get("per_sample", {}).get(metric),
                "percent": result.get("percent", {}).get(metric, False),
                "headline": metric in headline,
            }
    return flat


def compare(reference: dict[str, Any], other: dict[str, Any], key: str, sigmas: float) -> Change:
    """Did `other` move beyond `sigmas` standard errors from `reference` on this score?"""
    higher_is_better = reference["higher_is_better"]
    if not (math.isfinite(reference["value"]) and math.isfinite(other["value"])):
        return Change(key, reference["value"], other["value"], None, higher_is_better, "invalid")
    margin = None
    paired = paired_stderr(reference.get("per_sample") or [], other.get("per_sample") or [])
    if paired:  # 0 when every item moved alike (e.g. all wrong in both): no noise estimate, not zero noise
        margin = sigmas * paired
    elif reference.get("stderr") and other.get("stderr"):
        margin = sigmas * math.hypot(reference["stderr"], other["stderr"])
    delta = other["value"] - reference["value"]
    threshold = margin if margin is not None else RELATIVE_THRESHOLD * abs(reference["value"])
    if margin is None and reference.get("per_sample"):
        threshold = max(threshold, 1 / len(reference["per_sample"]))  # less than one question's worth is no change
    verdict = "unchanged"
    if abs(delta) > threshold and delta != 0:
        verdict = "improved" if (delta > 0) == higher_is_better else "dropped"
    return Change(key, reference["value"], other["value"], margin, higher_is_better, verdict)


def build_report(results: dict[str, dict[str, dict[str, Any]]], reference: str, sigmas: float = 2.0,
                 suite_name: str = "suite") -> dict[str, Any]:
    """`results[model][task]` -> the report: scores per model, and each other model's changes against `reference`."""
    scores = {model: flatten_scores(tasks) for model, tasks in results.items()}
    changes: dict[str, list[dict[str, Any]]] = {}
    for model, model_scores in scores.items():
        if model == reference:
            continue
        rows = []
        for key, ref in scores[reference].items():
            if key not in model_scores:
                rows.append({**Change(key, ref["value"], math.nan, None, ref["higher_is_better"], "missing").__dict__,
                             "delta": math.nan})
                continue
            change = compare(ref, model_scores[key], key, sigmas)
            rows.append({**change.__dict__, "delta": change.delta})
        changes[model] = rows
    public_scores = {model: {key: {k: v for k, v in score.items() if k != "per_sample"}
                             for key, score in model_scores.items()} for model, model_scores in scores.items()}
    return {"suite": suite_name, "reference": reference, "models": list(results), "noise_sigmas": sigmas,
            "scores": public_scores, "changes": changes,
            "tasks": {model: {task: {k: v for k, v in result.items() if k != "per_sample"}
                              for task, result in tasks.items()} for model, tasks in results.items()}}


def write_report(report: dict[str, Any], output_dir: Path) -> list[Path]:
    """report.json, report.md, radar.png and deltas.png under `output_dir`; returns the paths written."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "report.json", output_dir / "report.md"]
    write_json(paths[0], report)
    radar = plot_radar(report, output_dir / "radar.png")
    deltas = plot_deltas(report, output_dir / "deltas.png")
    paths += [p for p in (radar, deltas) if p is not None]
    write_text(paths[1], format_markdown(report, radar, deltas))
    return paths


def _display(score: dict[str, Any], value: float) -> str:
    return f"{100 * value:.1f}" if score.get("percent") else f"{value:.4g}"


def _display_margin(score: dict[str, Any], margin: float | None) -> str:
    if margin is None:
        return "n/a"
    return f"±{100 * margin:.1f}" if score.get("percent") else f"±{margin:.3g}"


def format_markdown(report: dict[str, Any], radar: Path | None = None, deltas: Path | None = None) -> str:
    """A readable report: what moved beyond noise, said plainly first; then every score; then how noise is judged."""
    reference, models, sigmas = report["reference"], report["models"], report["noise_sigmas"]
    ref_scores = report["scores"][reference]
    lines = [f"# Evaluation report: {report['suite']}", "",
             f"Models: {', '.join(f'`{m}`' for m in models)}. Reference: `{reference}`.", ""]
    for model, rows in report["changes"].items():
        lines += [f"## `{model}` against `{reference}`", ""]
        for verdict, title in (("dropped", "Dropped beyond noise"), ("improved", "Improved beyond noise")):
            moved = [row for row in rows if row["verdict"] == verdict]
            if moved:
                items = "; ".join(
                    f"{row['key']} {_display(ref_scores[row['key']], row['reference'])} -> "
                    f"{_display(ref_scores[row['key']], row['value'])} "
                    f"(margin {_display_margin(ref_scores[row['key']], row['margin'])})" for row in moved)
                lines.append(f"- **{title}**: {items}.")
            else:
                lines.append(f"- {title}: none.")
        for verdict, title in (("invalid", "Not a number (check the task's details)"),
                               ("missing", "Not measured on this model")):
            keys = [row["key"] for row in rows if row["verdict"] == verdict]
            if keys:
                lines.append(f"- **{title}**: {', '.join(keys)}.")
        unchanged = [row["key"] for row in rows if row["verdict"] == "unchanged"]
        named = [key for key in unchanged if "/subject:" not in key]
        subjects = len(unchanged) - len(named)
        more = f" (and {subjects} per-subject scores)" if subjects else ""
        lines += [f"- Within noise: {', '.join(named) if named else 'none'}{more}.", ""]
    for image, caption in ((radar, "Abilities (0-100)"), (deltas, "Change against the reference")):
        if image is not None:
            lines += [f"![{caption}]({image.name})", ""]
    lines += ["## All scores", "", "| score | " + " | ".join(models) + " | n |",
              "|---|" + "---|" * (len(models) + 1)]
    lines += ["| " + " | ".join(row) + " |" for row in score_rows(report)]
    lines += ["", "## How noise is judged", "",
              f"A change counts only when it exceeds {sigmas:g} standard errors of the difference. When both "
              "models answered the same questions (accuracies, ROUGE, F1 per sample), that is the standard error "
              "of the paired per-question differences; otherwise each model's binomial error sqrt(p(1-p)/n) is "
              "combined as sqrt(se1² + se2²). Corpus BLEU and chrF are judged by their per-sample values. Scores "
              f"with no standard error (loss, perplexity) count as changed beyond {RELATIVE_THRESHOLD:.0%} relative. "
              "Table values are ± one standard error (binomial for accuracies); percentages are shown ×100.", ""]
    return "\n".join(lines)


def score_rows(report: dict[str, Any]) -> list[list[str]]:
    """The "All scores" table as text cells: the score (marked when lower is better), each model's value ± one
    standard error, and the number of samples."""
    rows = []
    for key, score in report["scores"][report["reference"]].items():
        cells = []
        for model in report["models"]:
            other = report["scores"][model].get(key)
            if other is None:
                cells.append("-")
                continue
            stderr = f" ±{_display_margin(other, other['stderr'])[1:]}" if other.get("stderr") is not None else ""
            cells.append(_display(other, other["value"]) + stderr)
        arrow = "" if score["higher_is_better"] else " (lower is better)"
        count = f"{int(score['n'])}" if score.get("n") else "-"
        rows.append([f"{key}{arrow}", *cells, count])
    return rows


def _radar_axes(report: dict[str, Any]) -> list[str]:
    reference = report["scores"][report["reference"]]
    return [key for key, score in reference.items()
            if score.get("percent") and score.get("headline") and score["higher_is_better"]]


def plot_radar(report: dict[str, Any], path: Path) -> Path | None:
    """Each model's 0-100 abilities on one radar; needs at least three such scores."""
    axes = _radar_axes(report)
    if len(axes) < 3:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    figure, ax = plt.subplots(figsize=(7, 7), subplot_kw={"projection": "polar"})
    for model in report["models"]:
        values = [100 * report["scores"][model].get(key, {}).get("value", math.nan) for key in axes]
        # A score a model lacks (or NaN) leaves a gap in its outline rather than a fake zero.
        ax.plot(angles + angles[:1], values + values[:1], linewidth=2, marker="o", markersize=3, label=model)
        ax.fill(angles + angles[:1], [v if math.isfinite(v) else 0.0 for v in values + values[:1]], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels([key.replace("/", "\n") for key in axes], fontsize=8)
    finite = [100 * report["scores"][m][k]["value"] for m in report["models"] for k in axes
              if k in report["scores"][m] and math.isfinite(report["scores"][m][k]["value"])]
    top = max(finite, default=0.0)
    ax.set_ylim(0, max(10.0, math.ceil(top / 10) * 10))
    ax.set_title(f"{report['suite']}: abilities (0-100)")
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def plot_deltas(report: dict[str, Any], path: Path) -> Path | None:
    """Bars of each model's change on the 0-100 scores, with the noise margin as error bars; red = dropped."""
    rows = [(model, row) for model, model_rows in report["changes"].items() for row in model_rows
            if row["verdict"] in ("dropped", "improved", "unchanged")
            and report["scores"][report["reference"]][row["key"]].get("percent")
            and report["scores"][report["reference"]][row["key"]].get("headline")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"dropped": "#d62728", "improved": "#2ca02c", "unchanged": "#7f7f7f"}
    labels = [row["key"] if len(report["changes"]) == 1 else f"{model}: {row['key']}" for model, row in rows]
    figure, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    positions = list(range(len(rows)))
    ax.barh(positions, [100 * row["delta"] for _, row in rows],
            xerr=[100 * row["margin"] if row["margin"] is not None else 0 for _, row in rows],
            color=[colours[row["verdict"]] for _, row in rows], capsize=3)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"change against {report['reference']} (points; bars: ±{report['noise_sigmas']:g} s.e.)")
    ax.set_title("red: dropped beyond noise, green: improved, grey: within noise")
    figure.tight_layout()
    return save_figure(figure, path)
