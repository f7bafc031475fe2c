"""Several adapters on one base: chosen per call, refused when trained on another base, mixed and saved."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from lorakit.adapters import (BASE, AdapterSpec, load_adapters, mix, mix_adapters, parse_adapter, parse_weights,
                              save_adapter, use_adapter)
from lorakit.cli import app
from lorakit.errors import ConfigError

from conftest import make_model, make_tokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(folder: Path, seed: int = 1, rank: int = 4, base=None, scale: float = 4.0) -> Path:
    """A saved adapter with random, large A and B (so it changes greedy outputs), plus the tokenizer."""
    tokenizer = make_tokenizer()
    base = base if base is not None else make_model("llama", len(tokenizer))
    torch.manual_seed(seed)
    model = get_peft_model(base, PeftLoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS,
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(scale)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def two_adapters(tmp_path) -> list[AdapterSpec]:
    return [AdapterSpec("first", make_adapter(tmp_path / "first", seed=1)),
            AdapterSpec("second", make_adapter(tmp_path / "second", seed=2))]


def logits(model, text: str = "hello there") -> torch.Tensor:
    inputs = make_tokenizer()(text, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_several_adapters_chosen_per_call(two_adapters, tiny_tokenizer):
    model = load_adapters(make_model("llama", len(tiny_tokenizer)), two_adapters, "tiny")
    plain = make_model("llama", len(tiny_tokenizer)).eval()
    alone = PeftModel.from_pretrained(make_model("llama", len(tiny_tokenizer)), str(two_adapters[1].path)).eval()

    with use_adapter(model, "first"):
        first = logits(model)
    with use_adapter(model, "second"):
        second = logits(model)
    with use_adapter(model, BASE):
        base = logits(model)

    assert not torch.allclose(first, second, atol=1e-3)
    assert not torch.allclose(first, base, atol=1e-3)
    assert torch.allclose(base, logits(plain), atol=1e-6)  # "base" is the plain model, adapters off
    assert torch.allclose(second, logits(alone), atol=1e-6)  # same as loading that adapter alone


def test_unknown_adapter_name_lists_the_loaded_ones(two_adapters, tiny_tokenizer):
    model = load_adapters(make_model("llama", len(tiny_tokenizer)), two_adapters, "tiny")
    with pytest.raises(ConfigError, match="No adapter called 'third'.*base, first, second"):
        with use_adapter(model, "third"):
            pass


def test_refuses_adapter_trained_on_another_base(tmp_path, tiny_tokenizer):
    wider = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=24, intermediate_size=48,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    wider.name_or_path = "tiny-qwen2-wide"
    foreign = AdapterSpec("foreign", make_adapter(tmp_path / "foreign", base=wider))
    good = AdapterSpec("good", make_adapter(tmp_path / "good"))

    with pytest.raises(ConfigError, match="was trained on tiny-qwen2-wide, not on tiny-llama.*does not fit this model"):
        load_adapters(make_model("llama", len(tiny_tokenizer)), [good, foreign], "tiny-llama")


def test_refuses_missing_folder_and_clashing_names(tmp_path, two_adapters, tiny_tokenizer):
    base = make_model("llama", len(tiny_tokenizer))
    with pytest.raises(ConfigError, match="not a LoRA adapter folder"):
        load_adapters(base, [AdapterSpec("nothing", tmp_path)], "tiny")
    with pytest.raises(ConfigError, match="Two adapters are called 'first'"):
        load_adapters(base, [two_adapters[0], AdapterSpec("first", two_adapters[1].path)], "tiny")
    with pytest.raises(ConfigError, match="reserved for the base model"):
        load_adapters(base, [AdapterSpec("tiny", two_adapters[0].path)], "tiny")
    with pytest.raises(ConfigError, match="PEFT's parameter prefix 'lora_'"):
        load_adapters(base, [AdapterSpec("a", two_adapters[0].path)], "tiny")


def test_parse_adapter_and_weights(tmp_path, monkeypatch):
    assert parse_adapter("tuned=/x/y") == AdapterSpec("tuned", Path("/x/y"))
    assert parse_adapter("outputs/run-1.2/adapter").name == "run-1-2"  # lorakit's layout: named after the run
    assert parse_adapter("other/my_adapter").name == "my_adapter"
    with pytest.raises(ConfigError, match="Adapter name 'a b'"):
        parse_adapter("a b=/x")
    swept = tmp_path / "runs" / "lr=1e-4"
    assert parse_adapter("runs/lr=1e-4/adapter") == AdapterSpec("lr-1e-4", Path("runs/lr=1e-4/adapter"))
    (swept / "adapter").mkdir(parents=True)
    (tmp_path / "lr=1e-4").mkdir()  # an existing folder is a path even where its text looks like NAME=PATH
    assert parse_adapter(str(swept / "adapter")) == AdapterSpec("lr-1e-4", swept / "adapter")
    assert parse_adapter(f"tuned={swept}") == AdapterSpec("tuned", swept)
    monkeypatch.chdir(tmp_path)
    assert parse_adapter("lr=1e-4") == AdapterSpec("lr-1e-4", Path("lr=1e-4"))
    assert parse_weights("0.7, 0.3", 2) == [0.7, 0.3]
    assert parse_weights("", 4) == [0.25] * 4
    with pytest.raises(ConfigError, match="weights must be numbers"):
        parse_weights("0.7;0.3", 2)


@pytest.mark.parametrize("combination, rank", [("linear", 4), ("cat", 8), ("svd", 4)])
def test_mix_saves_a_normal_adapter_that_reloads(combination, rank, two_adapters, tiny_tokenizer, tmp_path):
    model = load_adapters(make_model("llama", len(tiny_tokenizer)), two_adapters, "tiny")
    mix_adapters(model, ["first", "second"], [0.7, 0.3], combination, "mixed")
    with use_adapter(model, "mixed"):
        expected = logits(model)
    with use_adapter(model, "first"):
        first = logits(model)

    out = save_adapter(model, "mixed", tmp_path / "mixed", tokenizer_from=two_adapters[0].path, readme="# mix\n")

    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "README.md"):
        assert (out / name).is_file(), name
    assert not (out / "mixed").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == rank
    reloaded = PeftModel.from_pretrained(make_model("llama", len(tiny_tokenizer)), str(out)).eval()
    assert torch.allclose(logits(reloaded), expected, atol=1e-4)
    assert not torch.allclose(expected, first, atol=1e-3)


def test_cat_mix_is_the_weighted_sum_of_updates(two_adapters, tiny_tokenizer):
    model = load_adapters(make_model("llama", len(tiny_tokenizer)), two_adapters, "tiny")
    mix_adapters(model, ["first", "second"], [0.7, 0.3], "cat", "mixed")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    combined = 0.7 * layer.get_delta_weight("first") + 0.3 * layer.get_delta_weight("second")
    assert torch.allclose(layer.get_delta_weight("mixed"), combined, atol=1e-5)


def test_mix_violations_are_config_errors(tmp_path, two_adapters, tiny_tokenizer):
    wider = AdapterSpec("wide", make_adapter(tmp_path / "wide", rank=8))
    model = load_adapters(make_model("llama", len(tiny_tokenizer)), [*two_adapters, wider], "tiny")
    with pytest.raises(ConfigError, match="linear needs adapters of equal rank; got first r=4, wide r=8"):
        mix_adapters(model, ["first", "wide"], [0.5, 0.5], "linear", "mixed")
    with pytest.raises(ConfigError, match="weights has 1 values but 2 adapters"):
        mix_adapters(model, ["first", "second"], [1.0], "cat", "mixed")
    with pytest.raises(ConfigError, match="one of linear, cat, svd; got 'ties'"):
        mix_adapters(model, ["first", "second"], [0.5, 0.5], "ties", "mixed")
    with pytest.raises(ConfigError, match="at least two adapters"):
        mix_adapters(model, ["first"], [1.0], "cat", "mixed")
    mix_adapters(model, ["first", "wide"], [0.5, 0.5], "cat", "mixed")  # cat and svd take unequal ranks
    assert model.peft_config["mixed"].r == 12


def test_mix_road_uses_the_base_the_adapter_names(tmp_path, tiny_model_dir, tiny_tokenizer):
    base = make_model("llama", len(tiny_tokenizer))
    base.name_or_path = str(tiny_model_dir)  # what PEFT records as base_model_name_or_path
    specs = [AdapterSpec("one", make_adapter(tmp_path / "one", seed=1, base=base)),
             AdapterSpec("two", make_adapter(tmp_path / "two", seed=2))]
    out = mix(None, specs, [0.5, 0.5], "svd", tmp_path / "mix")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    assert "svd" in (out / "README.md").read_text()


def test_mix_checks_its_arguments_before_loading_a_model(tmp_path, monkeypatch):
    monkeypatch.setattr("lorakit.model.load_model", lambda config: pytest.fail("the model was loaded"))
    one = AdapterSpec("one", tmp_path / "absent-one")
    two = AdapterSpec("two", tmp_path / "absent-two")
    with pytest.raises(ConfigError, match="at least two adapters"):
        mix(None, [one], [1.0], "cat", tmp_path / "out")
    with pytest.raises(ConfigError, match="weights has 1 values but 2 adapters"):
        mix(None, [one, two], [1.0], "cat", tmp_path / "out")
    with pytest.raises(ConfigError, match="got 'ties'"):
        mix(None, [one, two], [0.5, 0.5], "ties", tmp_path / "out")
    with pytest.raises(ConfigError, match="Two adapters are called 'one'"):
        mix(None, [one, AdapterSpec("one", tmp_path)], [0.5, 0.5], "cat", tmp_path / "out")


def test_cli_adapters_mix(tmp_path, tiny_model_dir):
    first, second = make_adapter(tmp_path / "first", seed=1), make_adapter(tmp_path / "second", seed=2)
    result = CliRunner().invoke(app, ["adapters", "mix", str(tmp_path / "out"), "--adapter", f"first={first}",
                                      "--adapter", f"second={second}", "--weights", "0.7,0.3",
                                      "--combination", "cat", "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "combined adapter (cat)" in result.output
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 8
    assert (tmp_path / "out" / "tokenizer.json").is_file()

    bad = CliRunner().invoke(app, ["adapters", "mix", str(tmp_path / "bad"), "--adapter", f"first={first}",
                                   "--adapter", f"second={second}", "--weights", "1", "--model", str(tiny_model_dir)])
    assert isinstance(bad.exception, ConfigError) and "weights has 1 values" in str(bad.exception)
    assert not (tmp_path / "bad").exists()
