"""Tokenised datasets are cached: a second run skips reading and tokenising; any changed input is a miss."""

import json

import pytest

from lorakit.config import DataConfig, ModelConfig, TrainConfig
from lorakit.train import prepare_data


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}."} for i in range(10)]))
    return TrainConfig(model=ModelConfig(name="tiny"),
                       data=DataConfig(paths=(str(path),), template="chatml", max_seq_len=64, val_size=0.2))


def test_second_run_loads_tokens_from_cache(config, tiny_tokenizer, monkeypatch):
    first = prepare_data(config, tiny_tokenizer)

    def no_reading(*args, **kwargs):
        raise AssertionError("data was read again")

    monkeypatch.setattr("lorakit.train.trainer.load_conversations", no_reading)
    second = prepare_data(config, tiny_tokenizer)

    assert second.train["input_ids"] == first.train["input_ids"]
    assert second.validation["labels"] == first.validation["labels"]
    assert second.train_summary == first.train_summary and second.load_summary == first.load_summary


@pytest.mark.parametrize("change", ["max_seq_len", "data_bytes", "template", "tokenizer"])
def test_changed_inputs_miss_the_cache(change, config, tiny_tokenizer, monkeypatch):
    from dataclasses import replace

    prepare_data(config, tiny_tokenizer)
    reads = []
    import lorakit.train.trainer as trainer

    original = trainer.load_conversations
    monkeypatch.setattr(trainer, "load_conversations", lambda c: reads.append(1) or original(c))
    if change == "max_seq_len":
        config = replace(config, data=replace(config.data, max_seq_len=32))
    elif change == "data_bytes":
        path = config.data.paths[0]
        records = json.loads(open(path).read())
        records[0]["output"] = "changed."
        open(path, "w").write(json.dumps(records))
    elif change == "template":
        config = replace(config, data=replace(config.data, template="default"))
    else:
        tiny_tokenizer.add_tokens(["<extra>"])
    prepare_data(config, tiny_tokenizer)
    assert reads == [1]


def test_cache_can_be_turned_off(config, tiny_tokenizer, isolated_token_cache):
    from dataclasses import replace

    prepare_data(replace(config, data=replace(config.data, cache_tokens=False)), tiny_tokenizer)
    assert not isolated_token_cache.exists() or not any(isolated_token_cache.iterdir())
