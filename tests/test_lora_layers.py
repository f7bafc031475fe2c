"""Faster LoRA arithmetic: FastDropout keeps dropout's statistics; the fast forward computes PEFT's function."""

import pytest
import torch

from lorakit.config import LoraConfig
from lorakit.model import attach_lora
from lorakit.train.lora_layers import FastDropout, use_fast_dropout, use_fast_lora_forward

from conftest import make_model


def test_keep_rate_scaling_and_fresh_masks():
    dropout = FastDropout(0.05).train()
    x = torch.ones(1000, 1000)
    first, second = dropout(x), dropout(x)
    kept = first != 0
    assert abs(kept.float().mean().item() - 0.95) < 0.002
    assert torch.allclose(first[kept], torch.tensor(1 / 0.95))
    assert not torch.equal(first, second)
    assert abs(((first != 0) & (second != 0)).float().mean().item() - 0.95 ** 2) < 0.002  # independent draws


def test_eval_mode_and_zero_rate_are_identity():
    x = torch.randn(10, 10)
    assert torch.equal(FastDropout(0.3).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_swapped_into_every_lora_layer():
    model = attach_lora(make_model("llama", 106), LoraConfig(rank=2, dropout=0.1))
    assert use_fast_dropout(model) == 14  # 7 linear layers x 2 decoder layers
    assert all(isinstance(d, FastDropout) for m in model.modules() if hasattr(m, "lora_dropout")
               for d in m.lora_dropout.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_forward_matches_peft_forward_and_gradients(dtype):
    torch.manual_seed(0)
    model = attach_lora(make_model("llama", 106).to(dtype), LoraConfig(rank=4, alpha=32, dropout=0.0))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    input_ids = torch.randint(6, 100, (2, 12))
    expected = model(input_ids=input_ids).logits.float()
    expected.sum().backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    restore = use_fast_lora_forward(model)
    got = model(input_ids=input_ids).logits.float()
    got.sum().backward()

    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(parameter.grad, expected_grads[name], atol=tolerance, rtol=tolerance), name
    restore()
    assert all("forward" not in vars(m) for m in model.modules())


def test_fast_forward_with_fast_dropout_keeps_the_expected_scale():
    torch.manual_seed(0)
    model = attach_lora(make_model("llama", 106), LoraConfig(rank=4, alpha=8, dropout=0.5))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.1)
    use_fast_dropout(model)
    use_fast_lora_forward(model)
    layer.train()
    x = torch.randn(20000, 16)
    with torch.no_grad():
        delta = layer(x) - layer.base_layer(x)
        exact = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    # Dropout is unbiased: averaged over many rows the adapter's contribution matches the undropped one.
    assert torch.allclose(delta.mean(0), exact.mean(0), atol=0.02)
