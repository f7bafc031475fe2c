"""`lorakit predict`: one prediction per record, references set aside, and a killed run resumed without losing or
duplicating a record."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lorakit.config import DataConfig, ModelConfig
from lorakit.errors import ConfigError, DataError
from lorakit.data import load_conversations
from lorakit.infer import GenerationConfig, generate, predict, prediction_requests, run_predict
from lorakit.templates import TEMPLATES, resolve_template

from conftest import make_tokenizer
from test_infer import lively_model, save_lively_model

RECORDS = [{"instruction": f"say {word}", "output": f"{word} {word}."} for word in
           ("hi", "yes", "no", "cat", "dog", "sun", "moon", "tea", "red", "blue", "one")]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(RECORDS))
    return path


@pytest.fixture
def lively():
    tokenizer = make_tokenizer()
    return lively_model(tokenizer), tokenizer, resolve_template(None, tokenizer)


def requests_of(path, **data_options):
    conversations, _ = load_conversations(DataConfig(paths=(str(path),), **data_options))
    return prediction_requests(conversations, data_options.get("system"))


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_record_once_with_prompt_and_reference(lively, data_file, tmp_path):
    output = tmp_path / "out" / "predictions.jsonl"
    config = GenerationConfig(max_new_tokens=6, batch_size=4)

    summary = predict(*lively, requests_of(data_file, system="be brief"), output, config, show_progress=False)

    lines = read_lines(output)
    assert [line["index"] for line in lines] == list(range(len(RECORDS))) and summary.written == len(RECORDS)
    assert lines[3]["prompt"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say cat"}]
    assert lines[3]["reference"] == "cat cat."
    assert lines[3]["prediction"] == generate(*lively, [lines[3]["prompt"]], config)[0]


def test_multi_turn_record_keeps_earlier_turns_in_the_prompt(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                             {"role": "user", "content": "c"},
                                             {"role": "assistant", "content": "d"}]}) + "\n")
    (request,) = requests_of(path)
    assert request.reference == "d" and [m["content"] for m in request.prompt] == ["a", "b", "c"]


def test_function_schemas_reach_the_prompt_and_the_output(tmp_path, monkeypatch):
    path = tmp_path / "tools.jsonl"
    schema = {"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object", "properties": {}}}}
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "rain?"},
                                             {"role": "assistant", "content": "no"}], "tools": [schema]}) + "\n")
    tokenizer = make_tokenizer()
    (request,) = requests_of(path)
    module = importlib.import_module("lorakit.infer.generate")
    rendered = []
    real_render = module.render
    monkeypatch.setattr(module, "render", lambda *args, **kwargs: rendered.append(real_render(*args, **kwargs))
                        or rendered[-1])

    predict(lively_model(tokenizer), tokenizer, TEMPLATES["chatml"], [request], tmp_path / "out.jsonl",
            GenerationConfig(max_new_tokens=2), show_progress=False)

    assert request.tools == [schema] and "get_weather" in rendered[0]
    assert read_lines(tmp_path / "out.jsonl")[0]["tools"] == [schema]


class Crash(Exception):
    pass


def test_interrupted_run_with_a_half_written_line_resumes_exactly_once(lively, data_file, tmp_path, monkeypatch):
    module = importlib.import_module("lorakit.infer.predict")  # the module, not the function of the same name

    output = tmp_path / "predictions.jsonl"
    requests = requests_of(data_file)
    config = GenerationConfig(max_new_tokens=6, batch_size=3)
    real_generate, calls = module.generate, []

    def crash_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Crash
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(module, "generate", crash_on_third_batch)
    with pytest.raises(Crash):
        predict(*lively, requests, output, config, show_progress=False)
    assert [line["index"] for line in read_lines(output)] == list(range(6))
    with output.open("ab") as handle:  # what a kill in the middle of a write leaves behind
        handle.write(b'{"index": 6, "prompt": [{"role": "us')

    summary = predict(*lively, requests, output, config, show_progress=False)

    indices = [line["index"] for line in read_lines(output)]
    assert indices == list(range(len(RECORDS)))
    assert (summary.already_done, summary.written, summary.dropped_partial_line) == (6, 5, True)
    before = output.read_bytes()
    again = predict(*lively, requests, output, config, show_progress=False)
    assert again.written == 0 and output.read_bytes() == before


def test_complete_last_line_without_newline_is_redone_not_duplicated(lively, data_file, tmp_path):
    output = tmp_path / "predictions.jsonl"
    requests = requests_of(data_file)
    config = GenerationConfig(max_new_tokens=4, batch_size=5)
    predict(*lively, requests[:5], output, config, show_progress=False)
    output.write_bytes(output.read_bytes()[:-1])  # the newline of record 4 never reached the disk

    predict(*lively, requests, output, config, show_progress=False)

    assert [line["index"] for line in read_lines(output)] == list(range(len(RECORDS)))


def test_killed_cli_run_resumes_with_every_record_once(tmp_path):
    count = 200  # many small batches, so the kill lands between the first and the last even on a busy machine
    model_dir = save_lively_model(tmp_path / "base")
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps({"question": f"question number {i}?", "answer": str(i)}) + "\n"
                            for i in range(count)))
    output = tmp_path / "predictions.jsonl"
    command = [sys.executable, "-m", "lorakit.cli", "predict", str(data), "--output", str(output), "--model",
               str(model_dir), "--batch-size", "2", "--max-new-tokens", "12", "--device", "cpu", "--dtype",
               "float32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # a tiny model gains nothing from threads
    log = tmp_path / "first-run.log"

    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and (not output.exists()
                                                                     or output.stat().st_size == 0):
            time.sleep(0.02)
        assert process.poll() is None, f"the first run ended before it was killed:\n{log.read_text()}"
        process.send_signal(signal.SIGKILL)
        process.wait()
    written_before = len(output.read_text().splitlines()) if output.exists() else 0
    assert 0 < written_before < count, (f"the run should be killed after its first batch and before its last; "
                                        f"{written_before} lines were written\n{log.read_text()}")

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    assert finished.returncode == 0, finished.stderr
    assert "already there" in finished.stdout
    indices = [line["index"] for line in read_lines(output)]
    assert sorted(indices) == list(range(count)) and len(indices) == count
    assert read_lines(output)[5]["reference"] == "5"


def test_output_of_another_dataset_is_refused(lively, data_file, tmp_path):
    output = tmp_path / "predictions.jsonl"
    config = GenerationConfig(max_new_tokens=2)
    predict(*lively, requests_of(data_file), output, config, show_progress=False)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"instruction": "something else", "output": "x"}]))
    with pytest.raises(DataError, match=r"predictions.jsonl, line 1: the prediction for record 0 was made for "
                                        r"another prompt.*Choose another output file"):
        predict(*lively, requests_of(other), output, config, show_progress=False)


def test_rerun_with_other_settings_is_refused_before_loading(data_file, tmp_path):
    model = ModelConfig(name=str(save_lively_model(tmp_path / "model")), dtype="float32", device="cpu")
    output = tmp_path / "predictions.jsonl"
    data = DataConfig(paths=(str(data_file),))
    run_predict(data, model, output, GenerationConfig(max_new_tokens=2), show_progress=False)
    saved = json.loads((tmp_path / "predictions.jsonl.settings.json").read_text())
    assert saved["generation"]["max_new_tokens"] == 2 and saved["model"] == model.name

    again = run_predict(data, model, output, GenerationConfig(max_new_tokens=2, batch_size=3), show_progress=False)
    assert again.written == 0 and again.already_done == len(RECORDS)  # the batch size may change
    with pytest.raises(DataError, match=r"other settings \(generation: .*'max_new_tokens': 2.*Rerun with the same"):
        run_predict(data, model, output, GenerationConfig(max_new_tokens=5), show_progress=False)


def test_damaged_output_line_is_an_error(lively, data_file, tmp_path):
    output = tmp_path / "predictions.jsonl"
    requests = requests_of(data_file)
    predict(*lively, requests[:1], output, GenerationConfig(max_new_tokens=2), show_progress=False)
    first = output.read_text()
    output.write_text(first + "not json\n" + first)
    with pytest.raises(DataError, match=r"predictions.jsonl, line 2: not a prediction record.*delete it or choose "
                                        r"another output file"):
        predict(*lively, requests, output, GenerationConfig(), show_progress=False)


def test_plain_text_records_cannot_be_predicted(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "just prose"}) + "\n")
    with pytest.raises(DataError, match="corpus.jsonl, line 1: a plain-text record has no prompt to answer"):
        requests_of(path)


def test_missing_file_and_bad_settings_fail_before_loading_a_model(tmp_path):
    with pytest.raises(DataError, match="Dataset file .*missing.json does not exist"):
        run_predict(DataConfig(paths=(str(tmp_path / "missing.json"),)), ModelConfig(name="no-such-model"),
                    tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        GenerationConfig(batch_size=0)


def test_cli_error_is_one_line_with_status_2(tmp_path):
    missing = subprocess.run([sys.executable, "-m", "lorakit.cli", "predict", str(tmp_path / "nope.jsonl"), "--output",
                              str(tmp_path / "o.jsonl")], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 2
    assert "DataError: Dataset file" in missing.stderr and "Traceback" not in missing.stderr
    with pytest.raises(ConfigError, match="data.format must be one of .*Did you mean 'alpaca'"):
        DataConfig(paths=("x.json",), format="alpacca")
