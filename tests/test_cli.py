"""The `lorakit` command: stages run from argv, user mistakes end in one line and exit status 2."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lorakit.cli import app

RECORDS = [{"instruction": f"say {w}", "output": f"{w}."} for w in ("hi", "yes", "no", "cat", "dog", "sun")]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(RECORDS))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorakit.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_from_overrides_alone(tiny_model_dir, data_file, tmp_path):
    result = CliRunner().invoke(app, ["train", f"model.name={tiny_model_dir}", "model.dtype=float32",
                                      f"data.paths=[{data_file}]", "data.template=chatml", f"output_dir={tmp_path / 'o'}",
                                      "max_steps=2", "lora.rank=2", "logging_steps=1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "adapter" / "adapter_model.safetensors").is_file()
    assert "done" in result.output


def test_saved_config_repeats_the_run(tiny_model_dir, data_file, tmp_path):
    first = CliRunner().invoke(app, ["train", f"model.name={tiny_model_dir}", "model.dtype=float32",
                                     f"data.paths=[{data_file}]", f"output_dir={tmp_path / 'a'}", "max_steps=1"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["train", str(tmp_path / "a" / "config.yaml"), f"output_dir={tmp_path / 'b'}"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "b" / "adapter" / "adapter_config.json").is_file()


def test_user_mistake_is_one_line_and_status_2(tmp_path):
    result = run_cli("train", "lora.rnak=4")
    assert result.returncode == 2
    assert result.stderr.strip() == "ConfigError: Unknown config key 'lora.rnak'. Did you mean 'lora.rank'?"
    assert "Traceback" not in result.stderr


def test_data_check_lists_every_bad_line_and_exits_1(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "completion": "a"}\n{"prompt": "q"\n{"prompt": "q2", "completion": ""}\n')
    result = run_cli("data", "check", str(path))
    assert result.returncode == 1, result.stderr
    assert "Read 3 records: 1 used, 2 skipped." in result.stdout
    assert f"{path}, line 2: not valid JSON" in result.stdout
    assert f"{path}, line 3: field 'completion' is empty" in result.stdout
    assert "Traceback" not in result.stderr
    skipped = CliRunner().invoke(app, ["data", "check", str(path), "--skip-bad"])
    assert skipped.exit_code == 1, skipped.output
    assert "Training skips the 2 bad records (data.skip_bad is true)." in skipped.output


def test_data_check_of_a_clean_file_exits_0(data_file):
    result = CliRunner().invoke(app, ["data", "check", str(data_file)])
    assert result.exit_code == 0, result.output
    assert "Read 6 records: 6 used, 0 skipped." in result.output


def test_bad_record_error_names_the_config_key_and_the_flag(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "completion": "a"}\n{"prompt": "q"\n')
    result = run_cli("data", "stats", str(path))
    assert result.returncode == 2
    assert f"DataError: {path}, line 2: not valid JSON" in result.stderr
    assert "set data.skip_bad=true (or --skip-bad) to skip it" in " ".join(result.stderr.split())


def test_existing_export_output_is_refused_naming_the_flag(tmp_path):
    output = tmp_path / "model.gguf"
    output.write_bytes(b"keep me")
    for command in (["export", "gguf", str(tmp_path), "-o", str(output)],
                    ["merge", str(tmp_path), "-o", str(tmp_path)]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        assert "already exists" in result.stderr and "force=true (or --force)" in " ".join(result.stderr.split())
    assert output.read_bytes() == b"keep me"


@pytest.mark.parametrize("args", [["bench"], ["eval", "--nosuch"], ["data", "check", "--nosuch"]])
def test_usage_mistake_shows_usage_and_exits_2(args):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Usage: " in result.stderr and "Traceback" not in result.stderr
    assert ("No such command 'bench'" if args == ["bench"] else "No such option: --nosuch") in result.stderr


def test_data_preview_and_stats(tiny_model_dir, data_file, tmp_path):
    runner = CliRunner()
    preview = runner.invoke(app, ["data", "preview", str(data_file), f"model.name={tiny_model_dir}",
                                  "data.template=chatml", "--count", "1"])
    assert preview.exit_code == 0, preview.output
    assert "«hi.<|im_end|>»" in preview.output
    plot = tmp_path / "lengths.png"
    stats = runner.invoke(app, ["data", "stats", str(data_file), f"model.name={tiny_model_dir}",
                                "data.template=chatml", "--plot", str(plot)])
    assert stats.exit_code == 0, stats.output
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_data_convert(data_file, tmp_path):
    target = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["data", "convert", str(data_file), str(target), "--to", "openai"])
    assert result.exit_code == 0, result.output
    lines = target.read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["messages"][-1] == {"role": "assistant", "content": "hi."}


def test_models_lists_bundled_models(tmp_path, monkeypatch):
    from lorakit.cli.app import console

    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    # The shared console fixes its width from COLUMNS when it is created, which depends on what ran first: pin it.
    monkeypatch.setattr(console, "_width", 200)
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.output and "HuggingFaceTB/SmolLM2-135M-Instruct" in result.output
    assert "gemma3-270m" in result.output and "dequantised from GGUF Q4_1" in result.output
