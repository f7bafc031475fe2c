"""FastDropout keeps torch dropout's statistics: keep rate, scaling, independence between calls."""

import torch

from lorakit.config import LoraConfig
from lorakit.model import attach_lora
from lorakit.train.dropout import FastDropout, use_fast_dropout

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
