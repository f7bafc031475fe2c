"""GPU paths (skipped without CUDA): QLoRA through bitsandbytes on CUDA, bf16 auto dtype, device placement."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from lorakit.model import load_model, resolve_device, resolve_dtype
from lorakit.train import prepare_data, train

pytestmark = pytest.mark.gpu


@pytest.fixture
def small_model_dir(tmp_path, tiny_tokenizer):
    """A random Llama big enough for bitsandbytes' CUDA kernels (hidden 256), saved as a folder."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    folder = tmp_path / "small-llama"
    LlamaForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_auto_device_and_dtype_pick_cuda_bf16():
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_dtype("auto", device) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


def test_qlora_4bit_trains_on_cuda(small_model_dir, tiny_tokenizer, tmp_path):
    import bitsandbytes as bnb

    data_file = tmp_path / "train.json"
    data_file.write_text(json.dumps([{"instruction": f"say {w}", "output": f"{w} {w}."} for w in "abcdefgh"]))
    config = TrainConfig(model=ModelConfig(name=str(small_model_dir), quantization="4bit"),
                         data=DataConfig(paths=(str(data_file),), template="chatml", max_seq_len=64),
                         lora=LoraConfig(rank=4, alpha=8), output_dir=tmp_path / "run", max_steps=10, batch_size=4,
                         learning_rate=5e-3, logging_steps=1)
    model = load_model(config.model)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.device.type == "cuda"

    output_dir = train(model, tiny_tokenizer, prepare_data(config, tiny_tokenizer), config)

    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((output_dir / "manifest.json").read_text())["device"] == "cuda"
