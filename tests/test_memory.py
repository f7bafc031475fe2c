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


def test_attention_probabilities_are_counted_only_where_16_bit_matmul_attention_keeps_them():
    import torch

    model = lora_model()
    one_long, two_short = [400, 400], [200, 200, 200, 200]
    float32 = [estimate_memory(model, lengths, batch_size=len(lengths) // 2).activations
               for lengths in (one_long, two_short)]
    model.to(torch.bfloat16)
    bfloat16 = [estimate_memory(model, lengths, batch_size=len(lengths) // 2).activations
                for lengths in (one_long, two_short)]
    assert float32[0] == float32[1]  # the same 400 tokens: the same estimate, however they are split
    assert bfloat16[0] > bfloat16[1]  # one 400-token example: 4x the probabilities of two 200-token ones


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


def test_plan_before_loading_weights_matches_the_loaded_model(tmp_path, tiny_model_dir):
    """The web UI's estimate (meta-device model, no weights read) equals the one training prints."""
    import json

    from lorakit.config import DataConfig, ModelConfig
    from lorakit.model import load_model, load_tokenizer, prepare_for_training
    from lorakit.train import prepare_data
    from lorakit.train.memory import plan_memory, training_lengths

    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": "say " + "word " * n, "output": "ok."} for n in range(1, 9)]))
    config = TrainConfig(model=ModelConfig(name=str(tiny_model_dir), dtype="float32"),
                         data=DataConfig(paths=(str(data),), template="chatml", cache_tokens=False),
                         lora=LoraConfig(rank=4), batch_size=4)

    prepared = prepare_data(config, load_tokenizer(config.model))
    plan = plan_memory(config, training_lengths(prepared, config))

    model = prepare_for_training(load_model(config.model), config)
    loaded = estimate_memory(model, prepared.train_summary.lengths, 4)
    assert plan.estimate == loaded and plan.batch_size == plan.fitted_batch_size == 4 and plan.fits
    quantized = plan_memory(TrainConfig(**{**config.__dict__, "model": ModelConfig(
        name=str(tiny_model_dir), dtype="float32", quantization="4bit")}), training_lengths(prepared, config))
    assert quantized.estimate.weights < plan.estimate.weights  # linear weights at 4 bits
