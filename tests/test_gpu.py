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


def test_chunked_loss_on_cuda_matches_full_logits_loss():
    """On CUDA the loss goes through Liger's fused kernel when installed, else the chunked path: same value."""
    from lorakit.data.tokenize import IGNORE_INDEX
    from lorakit.train.loss import chunked_lm_loss

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).cuda()
    model.lm_head.weight.requires_grad_(False)
    input_ids = torch.randint(0, 4096, (2, 64), device="cuda")
    labels = input_ids.clone()
    labels[:, :20] = IGNORE_INDEX
    expected = model(input_ids=input_ids, labels=labels).loss
    outputs = model(input_ids=input_ids, output_hidden_states=True)
    loss = chunked_lm_loss(outputs.hidden_states[-1], labels, model.lm_head)
    assert abs(loss.item() - expected.item()) < 1e-4


def test_padding_free_forward_on_cuda_matches_padded_batches(small_model_dir, tiny_tokenizer, tmp_path):
    from lorakit.train.packing import concatenate_batch, use_varlen_attention
    from lorakit.data.tokenize import pad_batch

    model = load_model(ModelConfig(name=str(small_model_dir), dtype="bfloat16")).eval()
    features = [{"input_ids": list(range(6, 6 + n)), "labels": list(range(6, 6 + n))} for n in (9, 33, 17)]
    padded = {k: v.cuda() for k, v in pad_batch(features, 0).items() if k != "labels"}
    with torch.no_grad():
        expected = model(**padded).logits
        use_varlen_attention(model)
        batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in concatenate_batch(features).items()
                 if k != "labels"}
        packed = model(**batch).logits
    for row, (start, length) in enumerate(((0, 9), (9, 33), (42, 17))):
        assert torch.allclose(packed[0, start:start + length].float(), expected[row, :length].float(), atol=3e-2)


@pytest.mark.parametrize("window", [None, 64])
def test_varlen_flash_kernel_matches_per_example_attention(window):
    """On sm80+ CUDA with torch's varlen kernel, one call for all examples equals attending to each on its own."""
    import torch.nn.functional as F

    from lorakit.train.packing import _flash_varlen, _sliding_causal_mask, _varlen_kernel_parameters

    parameters = _varlen_kernel_parameters()
    if parameters is None or "scale" not in parameters or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the varlen kernel path needs torch >= 2.11 (varlen_attn with scale=) and an sm80+ GPU")
    torch.manual_seed(0)
    lengths = [53, 164, 320, 90]
    bounds = [0]
    for length in lengths:
        bounds.append(bounds[-1] + length)
    q, k, v = (torch.randn(1, heads, bounds[-1], 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for heads in (9, 3, 3))
    kwargs = {"cu_seq_lens_q": torch.tensor(bounds, dtype=torch.int32, device="cuda"), "max_length_q": max(lengths)}
    if window and "window_size" not in parameters:
        pytest.skip("this torch's varlen_attn has no window_size")
    fused = _flash_varlen(q, k, v, kwargs, window=window, scaling=0.125, dropout=0.0)
    assert fused is not None and fused.shape == (1, bounds[-1], 9, 64)

    def attend(s: int, e: int) -> torch.Tensor:
        mask = _sliding_causal_mask(e - s, window, q.device) if window else None
        return F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], attn_mask=mask,
                                              is_causal=mask is None, scale=0.125, enable_gqa=True)
    expected = torch.cat([attend(s, e) for s, e in zip(bounds[:-1], bounds[1:])], dim=2).transpose(1, 2)
    assert (fused.float() - expected.float()).abs().max() < 2e-2
    grad = torch.randn_like(fused)
    for got, want in zip(torch.autograd.grad(fused, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        assert (got.float() - want.float()).abs().max() < 5e-2
