"""Sweeps: every grid point trained by the ordinary training code, ranked, resumable, with a table and heatmap."""

import json

import pytest
import yaml

from lorakit.errors import ConfigError
from lorakit.sweep import grid_points, parse_grid, run_name, run_sweep

RECORDS = [{"instruction": f"say {word}", "output": f"{word} {word}."} for word in
           ("hi", "yes", "no", "cat", "dog", "sun", "moon", "tea", "red", "blue", "one", "two")]


@pytest.fixture
def train_yaml(tmp_path, tiny_model_dir):
    data = tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    config = {"model": {"name": str(tiny_model_dir), "dtype": "float32", "device": "cpu"},
              "data": {"paths": [str(data)], "template": "chatml", "max_seq_len": 64, "val_size": 4},
              "lora": {"rank": 2, "alpha": 4, "dropout": 0.0}, "max_steps": 2, "batch_size": 4,
              "learning_rate": 1e-2, "logging_steps": 1}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_grid_parsing_and_points():
    grid = parse_grid(["lora.rank=4,8", "lora.alpha=8, 16,32"])
    assert grid == {"lora.rank": ["4", "8"], "lora.alpha": ["8", "16", "32"]}
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"lora.rank": "4", "lora.alpha": "8"}
    assert run_name(points[-1]) == "rank-8_alpha-32"
    assert run_name({"lora.alpha": "8", "other.alpha": "org/model"}) == "lora-alpha-8_other-alpha-org-model"
    for bad in (["lora.rank"], ["lora.rank="], ["=4,8"]):
        with pytest.raises(ConfigError, match="key=v1,v2"):
            parse_grid(bad)
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["lora.rank=4", "lora.rank=8"])


def test_sweep_trains_ranks_and_resumes(train_yaml, tmp_path):
    output = tmp_path / "sweep"
    lines = []
    runs = run_sweep(train_yaml, [], parse_grid(["lora.rank=2,4", "learning_rate=1e-2,1e-3"]), output,
                     log=lines.append)

    assert len(runs) == 4
    losses = [run["objective"] for run in runs]
    assert losses == sorted(losses)  # eval_loss: lower is better, best first
    for run in runs:
        saved = yaml.safe_load((tmp_path / "sweep" / run["name"] / "config.yaml").read_text())
        assert saved["lora"]["rank"] == int(run["point"]["lora.rank"])
        assert (tmp_path / "sweep" / run["name"] / "adapter" / "adapter_model.safetensors").is_file()
    rows = [line for line in (output / "sweep.md").read_text().splitlines() if line.startswith("| ") and
            line[2].isdigit()]
    assert [row.split(" | ")[-1].rstrip(" |").split("/")[-1] for row in rows] == [run["name"] for run in runs]
    assert (output / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((output / "sweep.json").read_text())["objective"]["metric"] == "eval_loss"

    lines.clear()
    again = run_sweep(train_yaml, [], parse_grid(["lora.rank=2,4", "learning_rate=1e-2,1e-3"]), output,
                      log=lines.append)
    assert sum("already trained" in line for line in lines) == 4
    assert [run["objective"] for run in again] == losses

    with pytest.raises(ConfigError, match="trained with other settings \\(max_steps differ\\)"):
        run_sweep(train_yaml, ["max_steps=3"], parse_grid(["lora.rank=2,4", "learning_rate=1e-2,1e-3"]), output)


def test_sweep_without_validation_or_suite_says_what_to_do(train_yaml, tmp_path):
    with pytest.raises(ConfigError, match="data.val_size"):
        run_sweep(train_yaml, ["data.val_size=0"], parse_grid(["lora.rank=2"]), tmp_path / "s")
