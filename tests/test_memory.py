"""The memory estimate scales with what it should, and a run that would not fit gets a smaller micro-batch."""

from lorakit.config import LoraConfig, TrainConfig
from lorakit.model import attach_lora
from lorakit.train.memory import GIB, estimate_memory, fit_micro_batch

from conftest import make_model


def lora_model():
    return attach_lora(make_model("llama", 106), LoraConfig(rank=4))


def test_estimate_counts_each_part():
    model = lora_model()
    small = estimate_memory(model, [100] * 8, batch_size=2)
    large = estimate_memory(model, [100] * 8, batch_size=4)
    frozen = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert small.weights == frozen and small.trainable == trainable * 16
    assert small.batch_tokens == 200 and large.batch_tokens == 400
    assert large.activations > 1.9 * small.activations
    assert "memory estimate" in small.describe() and "activations (200 tokens)" in small.describe()


def test_micro_batch_halves_until_it_fits_keeping_the_effective_batch():
    model = lora_model()
    config = TrainConfig(batch_size=8, gradient_accumulation=2)
    lengths = [400] * 16
    budget = estimate_memory(model, lengths, 2).total + 1

    fitted, estimate = fit_micro_batch(model, lengths, config, budget)

    assert (fitted.batch_size, fitted.gradient_accumulation) == (2, 8)
    assert estimate.total <= budget
    unchanged, _ = fit_micro_batch(model, lengths, config, 100 * GIB)
    assert unchanged == config
