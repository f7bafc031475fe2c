"""Finding and loading models: bundled names, folders, .gguf files, hub ids (offline: a clear message)."""

import json

import pytest
import torch

from lorakit.config import LoraConfig, ModelConfig
from lorakit.errors import ConfigError
from lorakit.infer import load_adapter
from lorakit.model import attach_lora, load_model, load_tokenizer, resolve_dtype, resolve_model_path

from conftest import make_model


def test_local_folder_loads_with_requested_dtype(tiny_model_dir):
    model = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bfloat16", device="cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert load_tokenizer(ModelConfig(name=str(tiny_model_dir))).pad_token == "<pad>"


def test_hub_id_offline_names_the_fix():
    with pytest.raises(ConfigError, match=r"Could not load 'someone/missing-model' from the Hugging Face Hub .*"
                                          r"hf download someone/missing-model .*smollm2-135m"):
        load_tokenizer(ModelConfig(name="someone/missing-model"))


def test_missing_folder_and_bad_names(tmp_path):
    with pytest.raises(ConfigError, match="is not a bundled model .*an existing folder or a .gguf file"):
        resolve_model_path("./no/such/folder")
    with pytest.raises(ConfigError, match="GGUF file .*nope.gguf does not exist"):
        resolve_model_path(str(tmp_path / "nope.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json; it is not a Hugging Face model folder"):
        resolve_model_path(str(tmp_path / "empty"))


def test_explicit_cuda_without_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="model.device is 'cuda' but no CUDA GPU is visible"):
        load_model(ModelConfig(name="smollm2-135m", device="cuda"))


def test_auto_dtype_on_cpu_follows_the_hardware(monkeypatch):
    import lorakit.model as model_module

    monkeypatch.setattr(model_module, "cpu_supports_bf16", lambda: True)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(model_module, "cpu_supports_bf16", lambda: False)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.parametrize("environ, capped", [
    ({}, False), ({"ATEN_CPU_CAPABILITY": "avx512"}, False), ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, False),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, True), ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, True),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core"}, True)])
def test_auto_dtype_is_float32_where_torch_is_held_to_an_isa_without_bf16(environ, capped):
    """ATEN_CPU_CAPABILITY=avx2 / ONEDNN_MAX_CPU_ISA=AVX2 (how an AVX2-only CPU is emulated) would emulate bf16."""
    from lorakit.model import _isa_capped_below_bf16

    assert _isa_capped_below_bf16(environ) is capped


def test_adapter_for_another_base_model_is_refused(tiny_tokenizer, tmp_path):
    small = attach_lora(make_model("llama", len(tiny_tokenizer)), LoraConfig(rank=2))
    small.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-llama-16"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ConfigError, match=r"was trained on tiny-llama-16, not on wide-base: its weight .* does not "
                                          r"fit this model"):
        load_adapter(wider, tmp_path / "adapter", "wide-base")


def test_not_an_adapter_folder(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="is not a LoRA adapter folder \\(no adapter_config.json\\)"):
        load_adapter(tiny_model, tmp_path, "tiny")


@pytest.mark.slow
def test_bundled_gemma3_converts_once_and_trains_with_qlora(tmp_path):
    """The second bundled model: GGUF -> cached safetensors, then a short 4-bit QLoRA run from its example config."""
    from pathlib import Path

    from lorakit.bundled import MARKER, bundled_path, list_models
    from lorakit.config import load_config
    from lorakit.train import run_training

    folder = bundled_path("gemma3-270m")
    info = json.loads((folder / MARKER).read_text())
    assert info["upstream"] == "google/gemma-3-270m" and info["dequantized"] and info["quantization"] == "Q4_K_M"
    assert "dequantised from a Q4_K_M GGUF" in (folder / "README.md").read_text()
    assert any(m.name == "gemma3-270m" and m.status == "cached" for m in list_models())

    config = load_config(Path(__file__).parents[1] / "configs" / "gemma3-qlora.yaml",
                         [f"output_dir={tmp_path / 'gemma'}", "max_steps=3", "data.max_samples=12", "logging_steps=1"])
    output_dir = run_training(config)

    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()
