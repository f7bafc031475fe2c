"""The before/after report: noise margins, verdicts, and the files it writes."""

import json
import math

import pytest

from lorakit.eval.report import binomial_stderr, build_report, compare, paired_stderr, write_report


def _choice(accuracy_by_category: dict[str, tuple[int, int]]) -> dict:
    """A choice-task result in suite.py's shape, from {category: (correct, total)}."""
    metrics, stderr, n, percent, per_sample = {}, {}, {}, {}, {}
    for name, (correct, total) in accuracy_by_category.items():
        metrics[name] = correct / total
        stderr[name] = binomial_stderr(correct / total, total)
        n[name] = total
        percent[name] = True
        per_sample[name] = [1.0] * correct + [0.0] * (total - correct)
    return {"metrics": metrics, "stderr": stderr, "n": n, "percent": percent, "per_sample": per_sample,
            "higher_is_better": {name: True for name in metrics}, "headline": list(metrics)}


def test_binomial_stderr_matches_formula():
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    assert binomial_stderr(0.25, 48) == pytest.approx(math.sqrt(0.25 * 0.75 / 48))
    assert binomial_stderr(0.5, 0) is None


def test_paired_stderr_is_the_stderr_of_differences():
    first, second = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]
    diffs = [-1.0, 0.0, 0.0, -1.0]
    mean = sum(diffs) / 4
    expected = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3 / 4)
    assert paired_stderr(first, second) == pytest.approx(expected)
    assert paired_stderr([1.0], [0.0]) is None
    assert paired_stderr([1.0, 0.0], [0.0]) is None


def test_a_drop_within_noise_is_not_reported_as_a_drop():
    reference = {"value": 0.50, "stderr": binomial_stderr(0.5, 40), "higher_is_better": True}
    small = {"value": 0.45, "stderr": binomial_stderr(0.45, 40), "higher_is_better": True}
    large = {"value": 0.20, "stderr": binomial_stderr(0.20, 40), "higher_is_better": True}
    assert compare(reference, small, "x", sigmas=2).verdict == "unchanged"
    change = compare(reference, large, "x", sigmas=2)
    assert change.verdict == "dropped"
    assert change.margin == pytest.approx(2 * math.hypot(reference["stderr"], large["stderr"]))


def test_lower_is_better_scores_flip_the_verdict():
    reference = {"value": 3.0, "stderr": None, "higher_is_better": False}
    assert compare(reference, {"value": 2.0, "stderr": None}, "loss", 2).verdict == "improved"
    assert compare(reference, {"value": 3.5, "stderr": None}, "loss", 2).verdict == "dropped"
    assert compare(reference, {"value": 3.01, "stderr": None}, "loss", 2).verdict == "unchanged"  # < 1% relative


def test_report_states_drops_and_writes_charts(tmp_path):
    base = {"mmlu": _choice({"STEM": (30, 60), "humanities": (28, 60), "other": (25, 60)}),
            "cmmlu": _choice({"STEM": (20, 60), "China specific": (18, 60)})}
    tuned = {"mmlu": _choice({"STEM": (10, 60), "humanities": (27, 60), "other": (26, 60)}),
             "cmmlu": _choice({"STEM": (21, 60), "China specific": (40, 60)})}
    report = build_report({"base": base, "tuned": tuned}, reference="base", sigmas=2.0, suite_name="t")
    verdicts = {row["key"]: row["verdict"] for row in report["changes"]["tuned"]}
    assert verdicts["mmlu/STEM"] == "dropped"
    assert verdicts["cmmlu/China specific"] == "improved"
    assert verdicts["mmlu/humanities"] == "unchanged"
    paths = write_report(report, tmp_path)
    assert {p.name for p in paths} == {"report.json", "report.md", "radar.png", "deltas.png"}
    assert (tmp_path / "radar.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "report.md").read_text()
    assert "**Dropped beyond noise**: mmlu/STEM 50.0 -> 16.7" in markdown
    assert "**Improved beyond noise**: cmmlu/China specific" in markdown
    assert "![Abilities (0-100)](radar.png)" in markdown
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["reference"] == "base" and saved["models"] == ["base", "tuned"]
    assert "per_sample" not in json.dumps(saved)


def test_radar_needs_three_scores(tmp_path):
    results = {"base": {"gsm8k": _choice({"accuracy": (1, 10)})}, "tuned": {"gsm8k": _choice({"accuracy": (2, 10)})}}
    paths = write_report(build_report(results, "base"), tmp_path)
    assert "radar.png" not in {p.name for p in paths}


def test_missing_and_nan_scores_are_named_not_hidden(tmp_path):
    base = {"a": _choice({"x": (5, 10), "y": (5, 10), "z": (5, 10)}), "b": _choice({"accuracy": (5, 10)})}
    tuned = {"a": _choice({"x": (5, 10), "y": (5, 10), "z": (5, 10)})}
    tuned["a"]["metrics"]["y"] = float("nan")
    report = build_report({"base": base, "tuned": tuned}, "base")
    verdicts = {row["key"]: row["verdict"] for row in report["changes"]["tuned"]}
    assert verdicts["a/y"] == "invalid" and verdicts["b/accuracy"] == "missing" and verdicts["a/x"] == "unchanged"
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "**Not measured on this model**: b/accuracy" in markdown
    assert "**Not a number (check the task's details)**: a/y" in markdown
    assert (tmp_path / "radar.png").is_file()


def test_zero_paired_error_is_no_noise_estimate_not_zero_noise():
    reference = {"value": 0.0, "stderr": 0.0, "higher_is_better": True, "per_sample": [0.0] * 10}
    other = {"value": 1e-9, "stderr": 0.0, "per_sample": [0.0] * 10}
    assert compare(reference, other, "x", 2).verdict == "unchanged"
