"""`merge_adapter` and `lorakit merge`: merged weights equal PEFT's merge_and_unload, the folder prompts like training,
and bad input leaves nothing behind."""

from __future__ import annotations

import errno
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_tokenizer
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from lorakit.config import DataConfig, ModelConfig, TrainConfig, save_config
from lorakit.config.export import MergeConfig
from lorakit.errors import ConfigError, LorakitError
from lorakit.export.merge import MergeReport, merge_adapter
from lorakit.runs import write_settings
from lorakit.templates import TEMPLATES, install_template, render

TRAINING_TEMPLATE = replace(TEMPLATES["chatml"], system="Answer briefly.")
PROMPT_IDS = torch.tensor([[6, 40, 41, 42, 8, 50, 60, 70, 80, 90, 12, 5]])


def _save_base(folder: Path, architecture: str = "llama") -> Path:
    tokenizer = make_tokenizer()
    make_model(architecture, len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _make_adapter(base_dir: Path, adapter_dir: Path, **lora) -> PeftModel:
    """A PEFT adapter on the base at `base_dir` with random (nonzero) trained values, saved as lorakit saves one."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    settings = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    peft_model = get_peft_model(model, LoraConfig(**{**settings, **lora}, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(1)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name or "lora_magnitude_vector" in name or "modules_to_save" in name:
            parameter.data += 0.3 * torch.randn(parameter.shape, generator=generator)
    peft_model.save_pretrained(adapter_dir)
    tokenizer = make_tokenizer()
    install_template(tokenizer, TRAINING_TEMPLATE)
    tokenizer.save_pretrained(adapter_dir)
    write_settings(adapter_dir, str(base_dir), "lora", TRAINING_TEMPLATE)
    return peft_model.eval()


@pytest.fixture
def base_dir(tmp_path) -> Path:
    return _save_base(tmp_path / "base")


@pytest.fixture
def adapter(base_dir, tmp_path) -> tuple[PeftModel, Path]:
    adapter_dir = tmp_path / "adapter"
    return _make_adapter(base_dir, adapter_dir), adapter_dir


def _logits(model, ids: torch.Tensor = PROMPT_IDS) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits


def _leftovers(output: Path) -> list[str]:
    return [path.name for path in output.parent.iterdir() if path.name.startswith(f".{output.name}.")]


@pytest.mark.parametrize("architecture, lora", [
    ("llama", {}),
    ("llama", {"use_rslora": True, "r": 8, "lora_alpha": 4}),
    ("llama", {"use_dora": True}),
    ("llama", {"rank_pattern": {"v_proj": 2}, "alpha_pattern": {"layers.1.self_attn.q_proj": 3}}),
    ("llama", {"modules_to_save": ["lm_head"]}),
    ("llama", {"target_modules": ["embed_tokens", "q_proj"], "use_dora": True}),
    ("qwen2", {"target_modules": ["q_proj", "k_proj", "v_proj"]}),  # attention biases pass through
    ("gemma3", {"use_dora": True, "modules_to_save": ["lm_head"]}),  # tied embeddings, untied by the adapter
], ids=["lora", "rslora", "dora", "patterns", "modules-to-save", "embedding-dora", "qwen2-bias", "gemma3-tied-dora"])
def test_merged_logits_equal_peft_merge_and_unload(tmp_path, architecture, lora):
    base_dir = _save_base(tmp_path / "base", architecture)
    peft_model = _make_adapter(base_dir, tmp_path / "adapter", **lora)
    before = _logits(peft_model)

    report = merge_adapter(MergeConfig(source=tmp_path / "adapter", output=tmp_path / "merged"))

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    reference = _logits(peft_model.merge_and_unload())
    assert torch.allclose(_logits(merged), reference, atol=1e-5)
    assert not torch.allclose(before, _logits(AutoModelForCausalLM.from_pretrained(base_dir)), atol=1e-3)
    assert report.merged_onto == "full" and report.max_abs_diff < 1e-4 and report.kl_divergence < 1e-6


def test_shards_index_and_plain_loading(adapter, tmp_path):
    peft_model, adapter_dir = adapter
    report = merge_adapter(MergeConfig(source=adapter_dir, output=tmp_path / "merged", max_shard_size="4KB"))

    shards = sorted((tmp_path / "merged").glob("model-*.safetensors"))
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert report.shards == len(shards) > 1
    assert set(index["weight_map"].values()) == {path.name for path in shards}
    assert all(path.stat().st_size < 4000 + 1024 for path in shards if len(_tensor_names(path)) > 1)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(merged), _logits(peft_model), atol=1e-5)
    check = json.loads((tmp_path / "merged" / "merge_check.json").read_text())  # what the web UI shows
    assert (check["max_abs_diff"], check["kl_divergence"]) == (report.max_abs_diff, report.kl_divergence)


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def test_dtype_is_stored_and_written_in_config(adapter, tmp_path):
    _, adapter_dir = adapter
    merge_adapter(MergeConfig(source=adapter_dir, output=tmp_path / "merged", dtype="bfloat16"))
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").dtype == torch.bfloat16


def test_merged_folder_prompts_like_training(adapter, tmp_path):
    _, adapter_dir = adapter
    merge_adapter(MergeConfig(source=adapter_dir, output=tmp_path / "merged"))

    merged = tmp_path / "merged"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == TRAINING_TEMPLATE.jinja
    eos = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    settings = json.loads((merged / "lorakit.json").read_text())
    assert settings["template"]["system"] == "Answer briefly." and settings["finetuning"] == "merged"
    card = (merged / "README.md").read_text()
    assert "## Merge" in card and "max abs diff" in card and str(tmp_path) not in card.split("## Load it")[1]
    from lorakit.runs import open_run

    assert open_run(merged).template(tokenizer) == TRAINING_TEMPLATE


def test_failed_merge_check_leaves_nothing(adapter, tmp_path, monkeypatch):
    from lorakit.export import merge

    _, adapter_dir = adapter
    perturb = merge._merged_weight
    monkeypatch.setattr(merge, "_merged_weight", lambda *args: perturb(*args) + 0.5)
    output = tmp_path / "merged"

    with pytest.raises(LorakitError, match=r"Merge check failed.*up to [\d.e+-]+ \(KL [\d.e+-]+ nats"):
        merge_adapter(MergeConfig(source=adapter_dir, output=output))
    assert not output.exists() and not _leftovers(output)


def test_existing_output_is_refused_unless_force(adapter, tmp_path):
    _, adapter_dir = adapter
    output = tmp_path / "merged"
    output.mkdir()
    (output / "old.txt").write_text("old")

    with pytest.raises(ConfigError, match="already exists.*force"):
        merge_adapter(MergeConfig(source=adapter_dir, output=output))
    assert (output / "old.txt").is_file()

    merge_adapter(MergeConfig(source=adapter_dir, output=output, force=True))
    assert not (output / "old.txt").exists() and (output / "model.safetensors").is_file()


def test_adapter_of_another_base_is_refused(adapter, tmp_path):
    _, adapter_dir = adapter
    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=106, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)

    with pytest.raises(ConfigError, match="was trained on .*not on"):
        merge_adapter(MergeConfig(source=adapter_dir, output=tmp_path / "merged", base=str(other)))
    assert not (tmp_path / "merged").exists()


def test_missing_adapter_file(adapter, tmp_path):
    _, adapter_dir = adapter
    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="has no adapter_model.safetensors"):
        merge_adapter(MergeConfig(source=adapter_dir, output=tmp_path / "merged"))
    assert not (tmp_path / "merged").exists()


def test_full_disk_leaves_nothing(adapter, tmp_path, monkeypatch):
    from lorakit.export import merge

    def full_disk(tensors, path):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    _, adapter_dir = adapter
    monkeypatch.setattr(merge, "_save_shard", full_disk)
    output = tmp_path / "merged"
    with pytest.raises(LorakitError, match="No space left on the device while writing"):
        merge_adapter(MergeConfig(source=adapter_dir, output=output, max_shard_size="4KB"))
    assert not output.exists() and not _leftovers(output)


def test_full_run_is_copied(tmp_path):
    run_dir = tmp_path / "run"
    _save_base(run_dir / "model")
    report = merge_adapter(MergeConfig(source=run_dir, output=tmp_path / "merged"))
    assert report == MergeReport(tmp_path / "merged", None, None, "copied", None, None, 1)
    assert (tmp_path / "merged" / "config.json").is_file()


def _qlora_run(base_dir: Path, run_dir: Path) -> PeftModel:
    """A run folder whose config.yaml says the base was loaded in 4-bit, with an adapter beside it."""
    peft_model = _make_adapter(base_dir, run_dir / "adapter")
    save_config(TrainConfig(model=ModelConfig(name=str(base_dir), quantization="4bit"),
                            data=DataConfig(paths=("train.json",)), output_dir=run_dir), run_dir / "config.yaml")
    return peft_model


def test_qlora_merged_onto_quantized_weights_matches_the_4bit_model(tmp_path):
    pytest.importorskip("bitsandbytes")
    from lorakit.model import bitsandbytes_config

    tokenizer = make_tokenizer()
    base_dir = tmp_path / "base"
    torch.manual_seed(0)  # wider than conftest's models, so 4-bit rounding moves the logits measurably
    model_config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(model_config).save_pretrained(base_dir)
    _qlora_run(base_dir, tmp_path / "run")
    quantized_base = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=torch.float32, quantization_config=bitsandbytes_config("4bit", torch.float32),
        device_map={"": "cpu"})
    seen = _logits(PeftModel.from_pretrained(quantized_base, str(tmp_path / "run" / "adapter")))

    onto_quantized = merge_adapter(MergeConfig(source=tmp_path / "run", output=tmp_path / "q"))
    onto_full = merge_adapter(MergeConfig(source=tmp_path / "run", output=tmp_path / "f", onto="full"))

    assert (onto_quantized.merged_onto, onto_full.merged_onto) == ("4bit", "full")
    error_quantized = (_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "q")) - seen).abs().max()
    error_full = (_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "f")) - seen).abs().max()
    # bitsandbytes' CPU 4-bit kernels differ by CPU (max logit error 2.6e-3 on an AVX-512 BF16 EPYC, under 1e-4 on
    # an AVX2 one), so the contract is relative: the 4-bit model is far closer to the merge onto what it saw.
    assert error_quantized * 10 < error_full


def test_cli_prints_summary(adapter, tmp_path):
    from lorakit.cli import app

    _, adapter_dir = adapter
    result = CliRunner().invoke(app, ["merge", str(adapter_dir), "-o", str(tmp_path / "merged"),
                                      "--max-shard-size", "4KB"])
    assert result.exit_code == 0, result.output
    assert "merged onto the base's full-precision weights" in result.output and "KL" in result.output
    again = CliRunner().invoke(app, ["merge", str(adapter_dir), "-o", str(tmp_path / "merged")])
    assert again.exit_code != 0 and "force" in str(again.exception)


@pytest.mark.slow
def test_smollm2_merged_answers_like_base_plus_adapter(tmp_path):
    from lorakit.model import resolve_model_path
    from lorakit.templates import resolve_template

    base_path = resolve_model_path("smollm2-135m")
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"],
                                                 task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.data += 0.02 * torch.randn(parameter.shape, generator=generator)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    template = replace(resolve_template(None, tokenizer), system="You are a terse assistant.")
    tokenizer.save_pretrained(adapter_dir)
    write_settings(adapter_dir, "smollm2-135m", "lora", template)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Italy? Tell me about it."}]
    ids = tokenizer(render(template, tokenizer, messages, add_generation_prompt=True), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = peft_model.generate(input_ids=ids, max_new_tokens=20, do_sample=False)
    del peft_model, base

    report = merge_adapter(MergeConfig(source=adapter_dir, output=tmp_path / "merged", max_shard_size="200MB"))

    assert report.kl_divergence < 1e-3 and report.shards == 3
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.inference_mode():
        answer = merged.generate(input_ids=ids, max_new_tokens=20, do_sample=False)
    assert torch.equal(answer, expected), (tokenizer.decode(answer[0, ids.shape[1]:]),
                                           tokenizer.decode(expected[0, ids.shape[1]:]))
