"""The web UI without a browser: its form makes the CLI's config, its safety rules, its two languages."""

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'lorakit[webui]')")

from lorakit.config import TrainConfig, WebUIConfig, load_config, save_config  # noqa: E402
from lorakit.errors import ConfigError  # noqa: E402
from lorakit.webui.i18n import STRINGS  # noqa: E402
from lorakit.webui.safety import allowed_folders, confine, keep_upload  # noqa: E402
from lorakit.webui.train_form import FIELDS, build_train_config, train_command  # noqa: E402


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "train.json").write_text(json.dumps([{"instruction": "say hi", "output": "hi."}]))
    return tmp_path


def form(**values):
    return {**{field.name: field.default for field in FIELDS}, "data_path": "train.json", **values}


def test_every_string_exists_in_both_languages():
    assert set(STRINGS["en"]) == set(STRINGS["zh"])
    assert all(STRINGS["zh"][key].strip() for key in STRINGS["zh"])
    assert {field.name for field in FIELDS} <= set(STRINGS["en"])
    assert all(f"{field.name}.info" in STRINGS["en"] for field in FIELDS)  # every field has a tooltip


@pytest.mark.parametrize("values", [
    {},
    {"method": "dora", "max_steps": 50, "val_size": 0.1, "eval_steps": 10, "early_stopping": 2, "lora_rank": 16},
    {"method": "full", "learning_rate": 1e-5, "template": "chatml", "run_name": "full-run"},
])
def test_shown_yaml_and_command_resolve_to_the_form_config(workdir, values):
    config, overrides = build_train_config(form(**values), WebUIConfig(), workdir)
    save_config(config, workdir / "shown.yaml")

    command = shlex.split(train_command(overrides))

    assert command[:2] == ["lorakit", "train"]
    assert load_config(None, command[2:], TrainConfig) == config
    assert load_config(workdir / "shown.yaml", (), TrainConfig) == config
    assert config.data.paths == (str(workdir / "train.json"),)
    assert str(config.output_dir).startswith("outputs/")


def test_form_values_reach_the_config(workdir):
    config, _ = build_train_config(form(method="qlora", max_steps=7, val_size=0.2, early_stopping=3), WebUIConfig(),
                                   workdir)
    assert (config.finetuning, config.model.quantization, config.max_steps) == ("lora", "4bit", 7)
    assert (config.data.val_size, config.early_stopping_patience) == (0.2, 3)
    by_epochs, _ = build_train_config(form(), WebUIConfig(), workdir)
    assert by_epochs.max_steps is None and by_epochs.early_stopping_patience is None


def test_paths_outside_the_allowed_folders_are_refused(workdir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.json"
    outside.write_text("[]")
    with pytest.raises(ConfigError, match="outside the folders the web UI may read.*--allow-dir"):
        build_train_config(form(data_path=str(outside)), WebUIConfig(), workdir)
    with pytest.raises(ConfigError, match="outside the folders"):
        build_train_config(form(data_path="../" * 10 + "etc/passwd"), WebUIConfig(), workdir)
    with pytest.raises(ConfigError, match="outside the folders"):
        build_train_config(form(model=str(outside.parent)), WebUIConfig(), workdir)
    allowed = WebUIConfig(allow_dirs=(outside.parent,))
    assert confine(str(outside), allowed_folders(allowed, workdir), workdir) == outside.resolve()


def test_a_symlink_out_of_an_allowed_folder_is_refused(workdir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    (workdir / "link").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the folders"):
        confine("link/x.json", allowed_folders(WebUIConfig(), workdir), workdir)


def test_run_name_cannot_leave_outputs(workdir):
    with pytest.raises(ConfigError, match="plain folder name"):
        build_train_config(form(run_name="../../etc"), WebUIConfig(), workdir)


def test_non_loopback_host_needs_auth():
    with pytest.raises(ConfigError, match="host is 0.0.0.0.*auth is not set"):
        WebUIConfig(host="0.0.0.0")
    with pytest.raises(ConfigError, match="user:password"):
        WebUIConfig(host="0.0.0.0", auth="admin")
    assert WebUIConfig(host="0.0.0.0", auth="admin:s3cret").credentials == ("admin", "s3cret")
    assert WebUIConfig(host="::1").auth is None and WebUIConfig(host="localhost").auth is None


def test_webui_command_refuses_to_start_exposed_without_auth():
    result = subprocess.run([sys.executable, "-m", "lorakit.cli", "webui", "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "LORAKIT_WEBUI_AUTH": ""})
    assert result.returncode == 2
    assert "auth is not set" in result.stderr and "--auth user:password" in result.stderr


def test_uploads_are_size_limited_and_kept_in_the_ui_folder(workdir):
    small, big = workdir / "small.json", workdir / "big.json"
    small.write_text("[]")
    big.write_bytes(b"x" * (2 * 2**20))
    kept = keep_upload(small, WebUIConfig(max_upload_mb=1), workdir)
    assert kept == workdir / "outputs" / "webui-uploads" / "small.json" and kept.read_text() == "[]"
    with pytest.raises(ConfigError, match="above the upload limit of 1 MiB"):
        keep_upload(big, WebUIConfig(max_upload_mb=1), workdir)


def test_page_builds_and_relabels_in_chinese(workdir):
    import gradio as gr

    from lorakit.webui.app import _relabel, build_app
    from lorakit.webui.train_tab import _live_view

    app = build_app(WebUIConfig())
    assert isinstance(app, gr.Blocks)
    updates = _relabel("中文", [(gr.Button("Start"), "start"), (gr.Number(label="Learning rate"), "learning_rate")])
    assert updates[0] == "zh"
    assert updates[1]["value"] == "开始" and updates[2]["label"] == "学习率" and "LoRA" in updates[2]["info"]
    run = workdir / "outputs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(run)}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.0}\n{"step": 2, "eval_loss": 2.2}\n')
    (run / "progress.json").write_text(json.dumps({"completed": 2, "total": 4, "elapsed_seconds": 3.0,
                                                   "remaining_seconds": 3.0, "tokens_per_second": 100.0}))
    status, curve, _, config_text, _ = _live_view(WebUIConfig(), "en", "r")
    assert "Step 2/4 (50%)" in status
    assert curve.to_dict("records") == [{"step": 1, "loss": 2.5, "split": "train"},
                                        {"step": 2, "loss": 2.0, "split": "train"},
                                        {"step": 2, "loss": 2.2, "split": "eval"}]
    assert "output_dir" in config_text


BAD_JSONL = ('{"instruction": "say hi", "output": "hi."}\n{"instruction": "say no"}\n'
             '{"instruction": "say yes", "output": "yes."}\n')  # line 2 has no answer


def test_data_tab_lists_files_and_registry_entries_but_no_run_or_model_files(workdir, tiny_model_dir):
    from lorakit.webui.data_tab import data_overrides, data_sources

    (workdir / "data").mkdir()
    (workdir / "data" / "chat.jsonl").write_text(BAD_JSONL)
    (workdir / "data" / "dataset_info.json").write_text(json.dumps({"greetings": {"file_name": "chat.jsonl"}}))
    run = workdir / "outputs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    keep_upload(workdir / "train.json", WebUIConfig(), workdir)

    sources = data_sources(WebUIConfig(), workdir)

    assert sources == ["data/chat.jsonl", "outputs/webui-uploads/train.json", "train.json",
                       "greetings @ data/dataset_info.json"]  # no tiny-llama/*.json, no run files
    assert data_overrides(sources[-1], WebUIConfig(), workdir) == [
        'data.paths=["greetings"]', 'data.dataset_dir="data"']
    with pytest.raises(ConfigError, match="outside the folders"):
        data_overrides("/etc/passwd", WebUIConfig(), workdir)


def test_data_tab_shows_the_check_messages_lengths_and_trained_text(workdir, tiny_model_dir):
    from lorakit.config import DataConfig
    from lorakit.data.inspect import check_data
    from lorakit.webui.data_tab import inspect_dataset

    (workdir / "chat.jsonl").write_text(BAD_JSONL)

    view = inspect_dataset(WebUIConfig(), "en", "chat.jsonl", "tiny-llama", "chatml", 64, workdir)

    cli_problems = check_data(DataConfig(paths=("chat.jsonl",))).problems  # `lorakit data check chat.jsonl`
    assert len(cli_problems) == 1 and cli_problems[0] in view.check
    assert view.problems == [("chat.jsonl, line 2", cli_problems[0].split("line 2: ", 1)[1])]
    assert "Format: **alpaca**" in view.summary and "**1 problem(s)**" in view.summary and not view.error
    assert "max_seq_len      64" in view.stats and view.histogram is not None
    trained = "".join(piece for piece, label in view.examples if label == "trained")
    assert "hi." in trained and "yes." in trained and "say hi" not in trained  # only the answers train


def test_data_tab_says_what_is_wrong_instead_of_failing(workdir):
    from lorakit.webui.data_tab import inspect_dataset

    view = inspect_dataset(WebUIConfig(), "zh", "missing.jsonl", "tiny-llama", "chatml", 64, workdir)
    assert view.error.startswith("错误：") and "missing.jsonl" in view.error and not view.check


def test_eval_form_builds_a_suite_on_the_held_out_data(workdir, tiny_model_dir):
    from lorakit.webui.eval_tab import build_eval_config

    run, suite = build_eval_config(WebUIConfig(), [], "tiny-llama", "quick", "", "train.json", 1, None, workdir)
    assert [task.kind for task in suite.tasks] == ["perplexity", "generation"]
    assert all(task.limit == 1 and task.data.paths == ("train.json",) for task in suite.tasks)
    assert run.base == str(tiny_model_dir) and run.suite == Path("outputs/eval/quick/suite.yaml")
    with pytest.raises(ConfigError, match="outside the folders"):
        build_eval_config(WebUIConfig(), [], "tiny-llama", "quick", "", "/etc/hosts", 1, None, workdir)
    with pytest.raises(ConfigError, match="Nothing to evaluate on"):
        build_eval_config(WebUIConfig(), [], "tiny-llama", "quick", "", "", 1, None, workdir)
    with pytest.raises(ConfigError, match="no-such-run does not exist"):  # said on the page, not in the job
        build_eval_config(WebUIConfig(), ["no-such-run"], "", "quick", "", "train.json", 1, None, workdir)


@pytest.mark.slow  # a whole `lorakit eval` of the tiny model (~20-50 s on 2 cores, most of it imports)
def test_eval_form_config_is_what_lorakit_eval_runs_and_the_tab_shows_its_report(workdir, tiny_model_dir):
    from typer.testing import CliRunner

    from lorakit.cli import app
    from lorakit.config import EvalRunConfig
    from lorakit.runs import is_run_folder
    from lorakit.webui.eval_tab import (build_eval_config, detail_files, eval_command, predictions_table,
                                        report_summary, scores_table, start_evaluation_job)

    run, suite = build_eval_config(WebUIConfig(), [], "tiny-llama", "quick", "", "train.json", 1, None, workdir)
    # What the job would run, run here: `lorakit eval outputs/eval/quick/config.yaml`.
    save_config(suite, run.suite)
    save_config(run, run.output_dir / "config.yaml")
    assert load_config(run.output_dir / "config.yaml", (), EvalRunConfig) == run
    command = shlex.split(eval_command(run))
    result = CliRunner().invoke(app, [*command[1:], "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    folder = workdir / run.output_dir
    report = json.loads((folder / "report.json").read_text())
    assert json.loads((folder / "status.json").read_text())["state"] == "finished"
    assert not is_run_folder(folder)  # an evaluation is listed with evaluations, not with training runs
    assert "# Evaluation report: quick" in report_summary(report)
    table = scores_table(report)
    assert list(table.columns) == ["score", "tiny-llama", "n"]
    assert {"train-perplexity/perplexity (lower is better)", "train-generation/rougeL"} <= set(table["score"])
    assert detail_files(folder) == ["tiny-llama/train-generation/predictions.jsonl"]
    assert len(predictions_table(folder, detail_files(folder)[0])) == 1
    assert predictions_table(folder, "../../../../etc/passwd") is None
    (folder / "job.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpgrp(), "stage": "eval",
                                                 "host": socket.gethostname()}))  # a job alive in that folder
    with pytest.raises(ConfigError, match="still running"):
        start_evaluation_job(run, suite)


def test_eval_form_benchmark_rows_become_suite_tasks(workdir, tiny_model_dir):
    import pandas as pd

    from lorakit.webui.eval_tab import BENCHMARK_COLUMNS, build_eval_config

    (workdir / "gsm8k.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    rows = pd.DataFrame([["mmlu", "choice", "cais/mmlu", "astronomy, virology", "0", "3"],
                         ["", "", "gsm8k.jsonl", "", "", "2"], [""] * 6], columns=BENCHMARK_COLUMNS)

    _, suite = build_eval_config(WebUIConfig(), [], "tiny-llama", "bench", "", "", 0, rows, workdir)

    mmlu, gsm8k = suite.tasks
    assert (mmlu.kind, mmlu.source, mmlu.subjects, mmlu.shots, mmlu.limit) == (
        "choice", "cais/mmlu", ("astronomy", "virology"), 0, 3)  # a hub id passes, unconfined
    assert (gsm8k.name, gsm8k.kind, gsm8k.source, gsm8k.limit) == ("gsm8k", "gsm8k", str(workdir / "gsm8k.jsonl"), 2)
    outside = pd.DataFrame([["x", "choice", "/etc", "", "", ""]], columns=BENCHMARK_COLUMNS)
    with pytest.raises(ConfigError, match="outside the folders"):
        build_eval_config(WebUIConfig(), [], "tiny-llama", "bench", "", "", 0, outside, workdir)
    with pytest.raises(ConfigError, match="shots.*whole number"):
        bad = pd.DataFrame([["x", "choice", "cais/mmlu", "", "five", ""]], columns=BENCHMARK_COLUMNS)
        build_eval_config(WebUIConfig(), [], "tiny-llama", "bench", "", "", 0, bad, workdir)
