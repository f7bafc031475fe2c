"""runs.py: a run folder read one way everywhere; its status; `lorakit runs`; settings that travel to inference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lorakit.cli import app as cli_app
from lorakit.config import DataConfig, ModelConfig, TrainConfig, load_config
from lorakit.errors import ConfigError
from lorakit.runs import (SETTINGS_FILE, find_adapter_dir, list_runs, model_card, open_run, run_details, run_status,
                          track_status)
from lorakit.train import run_training

from conftest import make_model, make_tokenizer

SYSTEM = "You are Lumi, a tea-house assistant."


def _train_tiny(tmp_path: Path, template: str = "qwen3", thinking: bool | None = False, **overrides) -> Path:
    """A tiny qwen2 trained for one step with `template`, each record carrying the same system message."""
    model_dir = tmp_path / "tiny-base"
    if not model_dir.exists():
        make_model("qwen2", len(make_tokenizer())).save_pretrained(model_dir)
        make_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    record = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"},
                           {"role": "assistant", "content": "hi there"}]}
    data.write_text("\n".join(json.dumps(record) for _ in range(4)) + "\n")
    config = TrainConfig(model=ModelConfig(name=str(model_dir), device="cpu", dtype="float32"),
                         data=DataConfig(paths=(str(data),), template=template, thinking=thinking),
                         output_dir=tmp_path / overrides.pop("name", "run"), max_steps=1, batch_size=2,
                         logging_steps=1, **overrides)
    return run_training(config)


@pytest.fixture(scope="module")
def qwen3_run(tmp_path_factory) -> Path:
    return _train_tiny(tmp_path_factory.mktemp("qwen3"))


def test_open_run_reads_run_adapter_and_model_folders(qwen3_run, tmp_path):
    run = open_run(qwen3_run)
    assert run.is_adapter and run.folder == qwen3_run and run.weights_dir == qwen3_run / "adapter"
    assert open_run(qwen3_run / "adapter").folder == qwen3_run  # the adapter folder finds its run
    assert run.base_model == str(qwen3_run.parent / "tiny-base")
    assert not open_run(qwen3_run.parent / "tiny-base").is_adapter
    settings = json.loads((qwen3_run / "adapter" / SETTINGS_FILE).read_text())
    assert settings["template"]["name"] == "qwen3" and settings["template"]["thinking"] is False
    assert settings["template"]["system"] == SYSTEM  # the system message every record carried


def test_a_copied_adapter_keeps_its_base_and_template(qwen3_run, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(qwen3_run / "adapter", copy)
    run = open_run(copy)
    assert run.folder is None and run.base_model == str(qwen3_run.parent / "tiny-base")
    template = run.template(make_tokenizer_with(copy))
    assert template is not None and template.thinking is False and template.system == SYSTEM


def make_tokenizer_with(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_bad_run_paths_say_what_to_point_at(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "half" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ConfigError, match="checkpoints only: the run did not finish"):
        open_run(tmp_path / "half")
    make_model("llama", 40).save_pretrained(tmp_path / "full")
    with pytest.raises(ConfigError, match="not a LoRA adapter folder: it holds a full model"):
        find_adapter_dir(tmp_path / "full")


def test_model_card_names_no_local_path(qwen3_run):
    card = (qwen3_run / "README.md").read_text()
    how_to_load = card.split("## Load it", 1)[1]
    assert str(qwen3_run) not in how_to_load and str(qwen3_run.parent) not in how_to_load
    assert '"<this folder>"' in how_to_load and "enable_thinking=False" in how_to_load
    assert (qwen3_run / "adapter" / "README.md").read_text() == card
    config = load_config(qwen3_run / "config.yaml")
    manifest = json.loads((qwen3_run / "manifest.json").read_text())
    hub_card = model_card(config, {"train_loss": 1.0}, manifest, open_run(qwen3_run).template(
        make_tokenizer_with(qwen3_run / "adapter")), repo_id="someone/lumi")
    assert 'PeftModel.from_pretrained(base, "someone/lumi")' in hub_card


# --- status and listing -------------------------------------------------------------------------------------------


def test_status_records_finished_failed_and_interrupted(tmp_path):
    with track_status(tmp_path / "ok"):
        assert run_status(tmp_path / "ok").state == "running"
    assert run_status(tmp_path / "ok").state == "finished"
    with pytest.raises(RuntimeError), track_status(tmp_path / "bad"):
        raise RuntimeError("out of memory")
    failed = run_status(tmp_path / "bad")
    assert failed.state == "failed" and "out of memory" in failed.detail
    with pytest.raises(KeyboardInterrupt), track_status(tmp_path / "ctrl-c"):
        raise KeyboardInterrupt
    assert run_status(tmp_path / "ctrl-c").state == "interrupted"


def test_a_killed_training_process_reads_as_interrupted(tmp_path):
    script = ("import os, sys; from pathlib import Path; from lorakit.runs import track_status\n"
              f"with track_status(Path({str(tmp_path / 'killed')!r})): os._exit(9)\n")
    subprocess.run([sys.executable, "-c", script], check=False)
    status = run_status(tmp_path / "killed")
    assert status.state == "interrupted" and "without a word" in status.detail


def test_stopped_run_reads_as_interrupted(tmp_path):
    with track_status(tmp_path / "stopped"):
        (tmp_path / "stopped" / "metrics.json").write_text('{"stopped": true}')
    assert run_status(tmp_path / "stopped").state == "interrupted"


def _three_runs(tmp_path: Path) -> Path:
    runs = tmp_path / "outputs"
    finished = _train_tiny(tmp_path, template="chatml", thinking=None, name="outputs/finished")
    assert run_status(finished).state == "finished"
    with pytest.raises(ConfigError):  # fails at data loading inside the run
        with track_status(runs / "failed"):
            raise ConfigError("data.paths: no such file")
    interrupted = runs / "interrupted"
    (interrupted / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (interrupted / "config.yaml").write_text((finished / "config.yaml").read_text())
    os.utime(finished, (1, 1))  # oldest
    return runs


def test_lorakit_runs_lists_finished_interrupted_and_failed(tmp_path, monkeypatch):
    from lorakit.cli.app import console

    monkeypatch.setattr(console, "width", 250)
    runs = _three_runs(tmp_path)
    found = {summary.path.name: summary for summary in list_runs(runs)}
    assert {name: summary.status.state for name, summary in found.items()} == {
        "finished": "finished", "failed": "failed", "interrupted": "interrupted"}
    assert list_runs(runs)[-1].path.name == "finished"  # newest first
    done = found["finished"]
    assert done.steps == 1 and done.train_loss is not None and done.method == "lora r8"
    assert done.base_model.endswith("tiny-base") and done.data.endswith("train.jsonl")
    assert found["interrupted"].steps == 3

    result = CliRunner().invoke(cli_app, ["runs", str(runs)], terminal_width=250)
    assert result.exit_code == 0, result.output
    for word in ("finished", "interrupted", "failed", "data.paths: no such file"):
        assert word in result.output
    shown = CliRunner().invoke(cli_app, ["runs", "show", str(runs / "finished")], terminal_width=200)
    assert shown.exit_code == 0 and '"train_loss"' in shown.output and '"manifest"' in shown.output
    with pytest.raises(ConfigError, match="not a lorakit run folder"):
        run_details(tmp_path / "nothing-here")


# --- settings that travel -----------------------------------------------------------------------------------------


def test_stage_not_trained_yet_is_an_error(tmp_path):
    yaml_file = tmp_path / "ppo.yaml"
    yaml_file.write_text("stage: ppo\nmodel_name_or_path: smollm2-135m\ndataset: alpaca_en_demo\n")
    with pytest.raises(ConfigError, match="stage is 'ppo', which lorakit does not train yet"):
        load_config(yaml_file)
    assert load_config(None, ["stage=dpo"]).stage == "dpo"
    with pytest.raises(ConfigError, match="stage must be one of"):
        load_config(None, ["stage=sftt"])
    assert load_config(None, ["stage=sft"]).stage == "sft"


class _PromptRecorder:
    """Records the token ids of every embedding lookup, so a test sees the exact prompt a stage fed the model."""

    def __init__(self, monkeypatch):
        self.calls: list[list[int]] = []
        original = torch.nn.Embedding.forward

        def recording(module, input_ids):
            self.calls.append(input_ids[0].tolist())
            return original(module, input_ids)

        monkeypatch.setattr(torch.nn.Embedding, "forward", recording)

    def first_prompt(self) -> list[int]:
        assert self.calls, "the stage never ran the model"
        prompt, self.calls = self.calls[0], []
        return prompt


def test_inference_prompts_as_training_did_in_chat_predict_serve_and_eval(qwen3_run, tmp_path, monkeypatch):
    """qwen3 template, thinking off, a system message on every record: each stage's prompt is the training prefix."""
    from lorakit.adapters import AdapterSpec
    from lorakit.config import EvalTaskConfig, SuiteConfig
    from lorakit.eval.suite import ModelSpec, evaluate_models
    from lorakit.infer import GenerationConfig, open_chat, run_predict
    from lorakit.model import load_tokenizer
    from lorakit.serve import Engine, ServeConfig, create_app
    from lorakit.serve.app import load_endpoints
    from lorakit.train import prepare_data

    training = load_config(qwen3_run / "config.yaml")
    example = prepare_data(training, load_tokenizer(training.model)).train[0]
    first_supervised = next(i for i, label in enumerate(example["labels"]) if label != -100)
    expected = example["input_ids"][:first_supervised]
    text = "".join(make_tokenizer().convert_ids_to_tokens(expected))  # this tokenizer drops whitespace
    assert text.endswith("<think></think>") and SYSTEM.replace(" ", "") in text  # thinking off, records' system

    base = ModelConfig(name=str(qwen3_run.parent / "tiny-base"), device="cpu", dtype="float32")
    question = tmp_path / "ask.jsonl"
    question.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"},
                                                 {"role": "assistant", "content": "hi there"}]}) + "\n")
    short = GenerationConfig(max_new_tokens=2)
    recorder = _PromptRecorder(monkeypatch)

    chat = open_chat(base, qwen3_run, config=short)
    recorder.calls.clear()
    "".join(chat.respond("hello"))
    assert recorder.first_prompt() == expected, "chat"

    run_predict(DataConfig(paths=(str(question),)), base, tmp_path / "predictions.jsonl", short, adapter=qwen3_run,
                show_progress=False)
    assert recorder.first_prompt() == expected, "predict"

    suite = SuiteConfig(tasks=(EvalTaskConfig(kind="generation", name="ask", data=DataConfig(paths=(str(question),)),
                                              max_new_tokens=2),))
    evaluate_models(suite, [ModelSpec("tuned", base.name, qwen3_run / "adapter")], tmp_path / "eval", base,
                    use_cache=False, log=lambda _: None)
    assert recorder.first_prompt() == expected, "eval"

    from test_serve import running

    model, endpoints = load_endpoints(ServeConfig(model=base, adapters=(AdapterSpec("tuned", qwen3_run),)))
    recorder.calls.clear()
    with running(create_app(Engine(model, max_batch_size=1, batch_wait_s=0.0), endpoints)) as url:
        import httpx

        reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "tuned", "max_tokens": 2, "messages": [{"role": "user", "content": "hello"}]})
    assert reply.status_code == 200, reply.text
    assert recorder.first_prompt() == expected, "serve"
