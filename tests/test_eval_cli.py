"""`lorakit inspect`, `lorakit compare` and `lorakit judge` from the command line, on a tiny model."""

import json

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from lorakit.cli import app
from lorakit.errors import ConfigError

from conftest import make_tokenizer


def _run_folder(tiny_model_dir, tmp_path):
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=2, lora_alpha=64, target_modules=["q_proj", "v_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = str(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 5)
    peft_model.save_pretrained(tmp_path / "run" / "adapter")
    make_tokenizer().save_pretrained(tmp_path / "run" / "adapter")
    return tmp_path / "run"


def test_inspect_compare_and_judge_commands(tiny_model_dir, tmp_path):
    run = _run_folder(tiny_model_dir, tmp_path)
    runner = CliRunner()

    result = runner.invoke(app, ["inspect", str(run), "--output", str(tmp_path / "inspect"), "--top", "3"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "inspect" / "update_norms.png").is_file()
    assert len(json.loads((tmp_path / "inspect" / "inspect.json").read_text())["modules"]) == 4  # 2 layers x q, v

    (tmp_path / "q.txt").write_text("hi\n[bold]why?[/]\n")
    result = runner.invoke(app, ["compare", str(tmp_path / "q.txt"), "--adapter", str(run / "adapter"), "--output",
                                 str(tmp_path / "cmp"), "--max-new-tokens", "4", "--device", "cpu"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "cmp" / "answers.jsonl").read_text().splitlines()]
    assert [row["question"] for row in rows] == ["hi", "[bold]why?[/]"]
    assert {"base", "tuned"} <= set(rows[0]["answers"])
    assert (tmp_path / "cmp" / "answers.html").is_file()

    result = runner.invoke(app, ["judge", str(tmp_path / "cmp" / "answers.jsonl")])
    assert isinstance(result.exception, ConfigError) and "Choose one judge" in str(result.exception)
