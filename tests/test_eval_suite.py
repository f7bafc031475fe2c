"""`lorakit eval`: one suite on a base model and its adapter, cached per model+task, with the before/after report."""

import json

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.config import EvalRunConfig, ModelConfig, SuiteConfig, load_config
from lorakit.errors import ConfigError
from lorakit.eval.suite import build_suite, model_specs, run_eval

from conftest import make_tokenizer

QUESTIONS = [("1+1=?", "2", "3", "4", "5", "A"), ("2+2=?", "1", "4", "6", "8", "B"),
             ("Sky colour?", "red", "green", "blue", "pink", "C"), ("Grass?", "blue", "red", "pink", "green", "D")]


def _adapter(model, folder, seed=1):
    """A LoRA adapter with large random weights, so the tuned model answers differently from the base."""
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def suite_file(tmp_path):
    """A suite over small local files: a 2-subject MMLU-layout folder, GSM8K lines, instruction data."""
    mmlu = tmp_path / "mmlu"
    for split in ("dev", "test"):
        (mmlu / split).mkdir(parents=True)
        for subject in ("astronomy", "philosophy"):
            rows = QUESTIONS if split == "test" else QUESTIONS[:1]
            lines = [",".join(row) for row in rows]
            (mmlu / split / f"{subject}_{split}.csv").write_text("\n".join(lines) + "\n")
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"What is {a} plus {a}?", "answer": f"{a}+{a}={2 * a}\n#### {2 * a}"})
                           + "\n" for a in (1, 2, 3)))
    data = tmp_path / "instructions.json"
    data.write_text(json.dumps([{"instruction": f"say {w}", "output": f"{w} {w}."} for w in ("hi", "yes", "no")]))
    suite = {"name": "tiny", "tasks": [
        {"name": "mmlu", "kind": "choice", "source": str(mmlu), "shots": 1},
        {"name": "gsm8k", "kind": "gsm8k", "source": str(gsm), "shots": 1, "max_new_tokens": 8},
        {"name": "rouge", "kind": "generation", "max_new_tokens": 8,
         "data": {"paths": [str(data)], "template": "chatml"}},
        {"name": "ppl", "kind": "perplexity", "data": {"paths": [str(data)], "template": "chatml"}}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_suite_runs_on_base_and_adapter_and_caches(tiny_model_dir, suite_file, tmp_path, isolated_eval_cache):
    from conftest import make_model

    adapter = _adapter(make_model("llama", len(make_tokenizer())), tmp_path / "tuned")
    suite = load_config(suite_file, [], SuiteConfig)
    specs = model_specs(str(tiny_model_dir), [f"tuned={adapter}"], [])
    assert [spec.label for spec in specs] == ["tiny-llama", "tuned"]
    lines = []
    config = ModelConfig(name=str(tiny_model_dir), dtype="float32", device="cpu")
    report = run_eval(suite, specs, tmp_path / "report", config, log=lines.append)

    scores = report["scores"]
    for model in ("tiny-llama", "tuned"):
        assert 0 <= scores[model]["mmlu/accuracy"]["value"] <= 1
        assert scores[model]["mmlu/accuracy"]["n"] == 8
        assert scores[model]["ppl/perplexity"]["value"] > 1
        assert "rouge/rougeL" in scores[model] and "gsm8k/accuracy" in scores[model]
    assert scores["tiny-llama"]["ppl/loss"]["value"] != scores["tuned"]["ppl/loss"]["value"]
    assert {row["key"] for row in report["changes"]["tuned"]} >= {"mmlu/accuracy", "ppl/loss", "rouge/rougeL"}
    for name in ("report.json", "report.md", "deltas.png"):
        assert (tmp_path / "report" / name).is_file(), name
    questions = (tmp_path / "report" / "details" / "tuned" / "mmlu" / "questions.jsonl").read_text().splitlines()
    assert len(questions) == 8
    assert sum(line.endswith("running") for line in lines) == 8

    lines.clear()
    again = run_eval(suite, specs, tmp_path / "report2", config, log=lines.append)
    assert sum(line.endswith("cached") for line in lines) == 8
    assert again["scores"] == report["scores"]
    assert (tmp_path / "report2" / "details" / "tuned" / "rouge" / "predictions.jsonl").is_file()

    data = tmp_path / "instructions.json"
    data.write_text(data.read_text().replace("say hi", "say hello"))  # an edited dataset is scored again
    lines.clear()
    run_eval(suite, specs, tmp_path / "report3", config, log=lines.append)
    rerun = sorted(line.split(": ")[0] for line in lines if line.endswith("running"))
    assert rerun == ["tiny-llama / ppl", "tiny-llama / rouge", "tuned / ppl", "tuned / rouge"]


def test_adapter_of_another_base_is_refused(tiny_model_dir, suite_file, tmp_path):
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=len(make_tokenizer()), hidden_size=32, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    adapter = _adapter(wider, tmp_path / "other")
    result = CliRunner().invoke(app, ["eval", "--base", str(tiny_model_dir), "--adapter", str(adapter),
                                      "--suite", str(suite_file), "--output", str(tmp_path / "r"),
                                      "--dtype", "float32"])
    assert isinstance(result.exception, ConfigError)
    assert "does not fit this model" in str(result.exception)


def test_eval_without_anything_to_run_says_what_to_do(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="Say what to evaluate on: set suite"):
        CliRunner().invoke(app, ["eval", "--base", str(tiny_model_dir)], catch_exceptions=False)
    with pytest.raises(ConfigError, match="Nothing to evaluate"):
        model_specs(None, [], [])
    with pytest.raises(ConfigError, match="not a LoRA adapter folder"):
        model_specs(str(tiny_model_dir), [str(tmp_path)], [])


def test_build_suite_adds_quick_tasks_and_caps_every_task(suite_file):
    run = EvalRunConfig(suite=suite_file, data=("data/zh.jsonl",), limit=3)

    suite = build_suite(run, ["noise_sigmas=3"])

    labels = [task.label for task in suite.tasks]
    assert labels[-2:] == ["zh-perplexity", "zh-generation"] and len(labels) > 2
    assert all(task.limit == 3 for task in suite.tasks) and suite.noise_sigmas == 3
    assert build_suite(EvalRunConfig(data=("a.jsonl",))).name == "quick"
