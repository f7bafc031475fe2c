"""Padding-free batches: examples concatenated in one row must not see each other."""

import pytest
import torch

from lorakit.data.tokenize import IGNORE_INDEX, pad_batch
from lorakit.train.packing import concatenate_batch, use_varlen_attention

from conftest import ARCHITECTURES, make_model


def examples(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = []
    for length in lengths:
        ids = torch.randint(6, 100, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2:]
        features.append({"input_ids": ids, "labels": labels})
    return features


def per_example_losses(logits, labels, boundaries):
    losses = []
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        piece_logits, piece_labels = logits[0, start:end - 1], labels[0, start + 1:end]
        losses.append(torch.nn.functional.cross_entropy(piece_logits, piece_labels, ignore_index=IGNORE_INDEX))
    return torch.stack(losses)


def test_concatenated_batch_layout():
    batch = concatenate_batch(examples([3, 5]))
    assert batch["input_ids"].shape == (1, 8)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 8] and batch["max_length_q"] == 5
    assert batch["segment_bounds"] == (0, 3, 8)
    assert batch["labels"][0, 3] == IGNORE_INDEX  # first token of an example is never a target across the seam


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_per_example_losses_agree_concatenated_and_padded(architecture):
    model = make_model(architecture, 106).eval()
    features = examples([7, 30, 12, 19])
    padded = pad_batch(features, pad_token_id=0)
    with torch.no_grad():
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    expected = torch.stack([
        torch.nn.functional.cross_entropy(padded_logits[row, :-1], padded["labels"][row, 1:],
                                          ignore_index=IGNORE_INDEX) for row in range(len(features))])

    use_varlen_attention(model)
    batch = concatenate_batch(features)
    labels = batch.pop("labels")
    with torch.no_grad():
        packed_logits = model(**batch).logits
    boundaries = batch["cu_seq_lens_q"].tolist()

    assert torch.allclose(per_example_losses(packed_logits, labels, boundaries), expected, atol=1e-5)


def test_sliding_window_applies_inside_an_example():
    """Mistral/Gemma 3 local layers: an example longer than the window sees only the window, as unpacked."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=106, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1, sliding_window=4)).eval()
    features = examples([9, 11])
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([f["input_ids"]])).logits for f in features]
        use_varlen_attention(model)
        batch = concatenate_batch(features)
        batch.pop("labels")
        packed = model(**batch).logits
    assert torch.allclose(packed[0, :9], alone[0][0], atol=1e-5)
    assert torch.allclose(packed[0, 9:], alone[1][0], atol=1e-5)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_attention_matches_sdpa_with_grouped_heads(window, dtype):
    """The CPU matmul path (query heads stacked per key/value head, bias and scaling inside baddbmm) is SDPA's
    causal attention, values and gradients; in bf16 within bf16 rounding of an fp32 reference."""
    from lorakit.train.packing import _matmul_attention, _sliding_causal_mask

    torch.manual_seed(0)
    length = 13
    inputs = [torch.randn(1, heads, length, 8).to(dtype).requires_grad_() for heads in (6, 2, 2)]
    grad_output = torch.randn(1, 6, length, 8).to(dtype)
    ours = _matmul_attention(*inputs, window or length, scaling=0.3)
    ours_grads = torch.autograd.grad(ours, inputs, grad_output)
    reference = [t.detach().float().requires_grad_() for t in inputs]
    mask = _sliding_causal_mask(length, window or length, torch.device("cpu"))
    expected = torch.nn.functional.scaled_dot_product_attention(*reference, attn_mask=mask, scale=0.3,
                                                                enable_gqa=True)
    expected_grads = torch.autograd.grad(expected, reference, grad_output.float())
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert ours.dtype == dtype and torch.allclose(ours.float(), expected, atol=tolerance)
    for got, want in zip(ours_grads, expected_grads):
        assert torch.allclose(got.float(), want, atol=tolerance * max(1.0, want.abs().max().item()))
