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


# --- Chat tab -----------------------------------------------------------------------------------------------------


@pytest.fixture
def adapter_run(workdir, tiny_model_dir):
    """A finished run under outputs/ whose adapter (trained values, not zeros) changes the tiny model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data += torch.randn(parameter.shape, generator=generator)
    run = workdir / "outputs" / "tuned"
    model.save_pretrained(run / "adapter")
    (run / "status.json").write_text(json.dumps({"state": "finished"}))
    return run


def test_chat_sides_load_what_lorakit_chat_loads(workdir, adapter_run, tiny_model_dir):
    from lorakit.webui.chat_session import adapter_runs, side_targets

    config = WebUIConfig()
    assert adapter_runs(config) == ["outputs/tuned"]
    tuned, base = side_targets(None, "outputs/tuned", "none", True, config, workdir)
    assert (tuned.model.name, tuned.adapter_dir) == (str(tiny_model_dir), adapter_run / "adapter")
    assert (base.model.name, base.adapter_dir) == (str(tiny_model_dir), None)  # base vs tuned: the adapter's base
    assert len(side_targets(None, "outputs/tuned", "outputs/tuned", False, config, workdir)) == 1
    with pytest.raises(ConfigError, match="outside the folders"):
        side_targets(None, "/etc", "none", False, config, workdir)


def test_side_by_side_streams_what_each_side_answers_alone(workdir, adapter_run):
    from dataclasses import replace

    from lorakit.config import GenerationConfig
    from lorakit.infer import generate
    from lorakit.webui.chat_session import ModelCache, open_side, side_targets, stream_together

    targets = side_targets(None, "outputs/tuned", "none", True, WebUIConfig(), workdir)
    cache = ModelCache()
    loaded = [cache.get(target) for target in targets]
    settings = GenerationConfig(max_new_tokens=12, temperature=0.0)
    chats = [open_side(models, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "Be brief.",
                       settings) for models in loaded]

    shown = list(stream_together([chat.respond("how are you?") for chat in chats]))

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"}, {"role": "user", "content": "how are you?"}]
    alone = [generate(*models, [conversation], replace(settings, batch_size=1))[0] for models in loaded]
    assert shown[-1] == alone and alone[0] != alone[1]  # the adapter answers differently from its base
    assert all(later[side].startswith(earlier[side]) for earlier, later in zip(shown, shown[1:]) for side in (0, 1))
    assert cache.get(targets[0]) is loaded[0]  # loaded once, then kept


def test_stream_together_raises_a_side_error_after_the_other_side_ends():
    from lorakit.errors import DataError
    from lorakit.webui.chat_session import stream_together

    def failing():
        yield "a"
        raise DataError("cannot render")

    shown = []
    with pytest.raises(DataError, match="cannot render"):
        for texts in stream_together([iter(["x", "y"]), failing()]):
            shown.append(texts)
    assert shown[-1] == ["xy", "a"]


def test_thinking_switch_applies_only_to_templates_that_have_it():
    from lorakit.config import GenerationConfig
    from lorakit.templates import TEMPLATES
    from lorakit.webui.chat_session import open_side

    settings = GenerationConfig()
    assert open_side((None, None, TEMPLATES["qwen3"]), [], None, settings, thinking=False).template.thinking is False
    assert open_side((None, None, TEMPLATES["qwen3"]), [], None, settings).template.thinking is None
    assert open_side((None, None, TEMPLATES["chatml"]), [], None, settings, thinking=True).template.thinking is None


# --- Export tab ---------------------------------------------------------------------------------------------------


class _Captured(Exception):
    pass


@pytest.mark.parametrize("kind, function", [("merge", "lorakit.export.merge.merge_adapter"),
                                            ("gguf", "lorakit.export.gguf.export_gguf"),
                                            ("ollama", "lorakit.export.ollama.export_ollama"),
                                            ("hub", "lorakit.export.hub.upload_to_hub")])
def test_export_job_runs_the_command_that_makes_the_tab_config(workdir, adapter_run, monkeypatch, kind, function):
    from typer.testing import CliRunner

    from lorakit.cli import app
    from lorakit.jobs import command_for
    from lorakit.webui.export_form import export_request

    request = export_request("outputs/tuned", kind, "q4_k_m", "alice/tuned", WebUIConfig(), workdir)
    seen = []

    def capture(config, *args, **kwargs):
        seen.append(config)
        raise _Captured

    monkeypatch.setattr(function, capture)
    command = command_for(request.stage, request.source, request.options)
    result = CliRunner().invoke(app, command[3:])

    assert isinstance(result.exception, _Captured), result.output
    assert seen == [request.config] and request.source == adapter_run.resolve()
    assert request.output is None or request.output.is_relative_to(adapter_run.resolve() / "exports")


def test_export_request_refuses_what_cannot_be_exported(workdir, adapter_run, tmp_path_factory):
    from lorakit.webui.export_form import export_request

    with pytest.raises(ConfigError, match="outside the folders"):
        export_request(str(tmp_path_factory.mktemp("elsewhere")), "gguf", "f16", "", WebUIConfig(), workdir)
    with pytest.raises(ConfigError, match="not a LoRA adapter folder"):
        export_request("train.json", "merge", "f16", "", WebUIConfig(), workdir)
    with pytest.raises(ConfigError, match="repo_id must be OWNER/NAME"):
        export_request("outputs/tuned", "hub", "f16", "", WebUIConfig(), workdir)
    with pytest.raises(ConfigError, match="outtype"):
        export_request("outputs/tuned", "gguf", "q9", "", WebUIConfig(), workdir)


def test_export_state_and_checks_are_read_from_the_run_folder(workdir, adapter_run, monkeypatch):
    from lorakit.jobs import wait_for_job
    from lorakit.webui.export_form import export_request, export_status, start_export, verification

    gguf = export_request("outputs/tuned", "gguf", "q8_0", "", WebUIConfig(), workdir)
    report = {"path": "model-q8_0.gguf", "outtype": "q8_0", "template": "chatml",
              "merge_check": {"max_abs_diff": 2e-6, "kl_divergence": 0.0},
              "perplexity": {"hf": 10.0, "gguf_f16": 10.01, "gguf_q8_0": 10.2}}
    writes = (f"import json, pathlib; pathlib.Path({str(gguf.output) + '.json'!r}).write_text(json.dumps({report!r})); "
              f"pathlib.Path({str(gguf.output)!r}).write_bytes(b'GGUF'); print('wrote')")
    monkeypatch.setattr("lorakit.jobs.command_for", lambda stage, path, options=(): [sys.executable, "-c", writes])
    start_export(gguf)
    wait_for_job(gguf.folder, 60)

    status = export_status(adapter_run)
    assert (status.kind, status.state, status.output) == ("gguf", "finished", gguf.output) and "wrote" in status.log
    rows = dict(verification(status))
    assert rows["verify.max_abs_diff"] == "2e-06" and rows["verify.outtype"] == "q8_0"
    assert rows["verify.perplexity:gguf_q8_0"] == "10.2000 (+2.00%)" and rows["verify.perplexity:hf"] == "10.0000"

    monkeypatch.setattr("lorakit.jobs.command_for", lambda stage, path, options=(): [
        sys.executable, "-c", "import sys; print('ConfigError: no base model'); sys.exit(2)"])
    start_export(export_request("outputs/tuned", "merge", "f16", "", WebUIConfig(), workdir))
    wait_for_job(gguf.folder, 60)
    status = export_status(adapter_run)
    assert (status.kind, status.state) == ("merge", "failed") and status.reason == "ConfigError: no base model"
    assert verification(status) == []


def test_hub_export_offline_fails_with_the_reason_shown(workdir, adapter_run, monkeypatch):
    from lorakit.jobs import wait_for_job
    from lorakit.webui.export_form import export_request, export_status, start_export

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = export_request("outputs/tuned", "hub", "f16", "alice/tuned", WebUIConfig(), workdir)
    start_export(hub)
    wait_for_job(hub.folder, 120)

    status = export_status(adapter_run)
    assert (status.kind, status.state, status.output) == ("hub", "failed", None)
    assert "Hugging Face Hub cannot be reached" in status.reason and "nothing was uploaded" in status.reason


def test_chat_tab_streams_both_sides_into_their_chatbots(workdir, adapter_run):
    from lorakit.webui.chat_tab import _reply

    earlier = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},  # as Gradio 6 hands a chatbot over
               {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}]
    updates = list(_reply(WebUIConfig(), "en", None, "outputs/tuned", True, "none", "", 0.0, 1.0, 8, "auto",
                          "how are you?", earlier, earlier))

    left, right, status, box = updates[-1]
    assert box == "" and status == "Left: tiny-llama + outputs/tuned/adapter · right: tiny-llama."
    for chatbot in (left, right):
        assert chatbot[:3] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                               {"role": "user", "content": "how are you?"}]
        assert chatbot[3]["role"] == "assistant" and chatbot[3]["content"]
    assert left[3] != right[3]
    error = list(_reply(WebUIConfig(), "en", None, "/etc", False, "none", "", 0.0, 1.0, 8, "auto", "hi", [], []))
    assert "outside the folders" in error[-1][2] and error[-1][3] == "hi"  # the message stays to send again
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
    config, overrides = build_train_config(form(data_path=sources[-1]), WebUIConfig(), workdir)
    assert config.data.paths == ("greetings",) and config.data.dataset_dir == workdir / "data"
    assert 'data.paths=["greetings"]' in overrides  # the Train tab trains on a registered dataset too


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


def test_memory_estimate_before_starting_and_two_runs_side_by_side(workdir, tiny_model_dir):
    from lorakit.webui.train_tab import _compare_curves, _estimate_memory

    values = form(model=str(tiny_model_dir), template="chatml")
    message = _estimate_memory(WebUIConfig(), "en", *[values[field.name] for field in FIELDS])
    assert "GiB available" in message and "It fits." in message and "memory estimate" in message, message
    assert not list((workdir / "outputs").glob("*/adapter"))  # nothing trained, no run started
    bad = form(model=str(tiny_model_dir), data_path="missing.json")
    assert _estimate_memory(WebUIConfig(), "zh", *[bad[field.name] for field in FIELDS]).startswith("错误")

    for name, losses in (("a", (3.0, 2.0)), ("b", (3.5, 2.5))):
        run = workdir / "outputs" / name
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "loss": loss}) + "\n"
                                                   for i, loss in enumerate(losses))
                                           + json.dumps({"step": 2, "eval_loss": 2.2}) + "\n")
    curves = _compare_curves(WebUIConfig(), ["a", "b"])
    assert curves.to_dict("records") == [
        {"step": 1, "loss": 3.0, "curve": "a"}, {"step": 2, "loss": 2.0, "curve": "a"},
        {"step": 2, "loss": 2.2, "curve": "a · eval"},
        {"step": 1, "loss": 3.5, "curve": "b"}, {"step": 2, "loss": 2.5, "curve": "b"},
        {"step": 2, "loss": 2.2, "curve": "b · eval"}]
    assert _compare_curves(WebUIConfig(), []) is None
