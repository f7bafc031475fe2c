"""Perplexity equals a masked NLL computed by hand with a plain forward pass, whatever the batch size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCHITECTURES, make_model

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.errors import DataError
from lorakit.eval.perplexity import evaluate_perplexity
from lorakit.templates import render, resolve_template

CONVERSATIONS = [
    Conversation("t:1", ({"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello there."})),
    Conversation("t:2", ({"role": "system", "content": "be terse"}, {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4"})),
    Conversation("t:3", ({"role": "user", "content": "name?"}, {"role": "assistant", "content": "lumi"},
                         {"role": "user", "content": "and yours?"}, {"role": "assistant", "content": "none, sorry"})),
]


def chatml_by_hand(tokenizer, messages, train_on_prompt: bool) -> tuple[list[int], list[int]]:
    """ChatML ids and labels assembled turn by turn: the loss is on each reply and its <|im_end|> only."""
    ids, labels = [], []
    for message in messages:
        header = tokenizer.encode(f"<|im_start|>{message['role']}\n", add_special_tokens=False)
        body = tokenizer.encode(message["content"] + "<|im_end|>", add_special_tokens=False)
        newline = tokenizer.encode("\n", add_special_tokens=False)
        learn = train_on_prompt or message["role"] == "assistant"
        ids += header + body + newline
        labels += (header if train_on_prompt else [-100] * len(header)) + (body if learn else [-100] * len(body))
        labels += newline if train_on_prompt else [-100]
    return ids, labels


def nll_by_hand(model, tokenizer, template, conversations, train_on_prompt=False) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for conversation in conversations:
            ids, labels = chatml_by_hand(tokenizer, conversation.messages, train_on_prompt)
            rendered = render(template, tokenizer, list(conversation.messages))
            assert ids == tokenizer.encode(rendered, add_special_tokens=False)  # the hand assembly is the real text
            logits = model(torch.tensor([ids])).logits[0].float()
            targets = torch.tensor(labels[1:])
            total += F.cross_entropy(logits[:-1], targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    return total / count, count


@pytest.fixture
def chatml(tiny_tokenizer):
    return resolve_template("chatml", tiny_tokenizer)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_equals_masked_nll_by_hand(architecture, tiny_tokenizer, chatml):
    model = make_model(architecture, len(tiny_tokenizer)).eval()
    loss, count = nll_by_hand(model, tiny_tokenizer, chatml, CONVERSATIONS)

    result = evaluate_perplexity(model, tiny_tokenizer, chatml, CONVERSATIONS, DataConfig(), progress=False)

    assert result["loss"] == pytest.approx(loss, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    # Replies with their <|im_end|>: "hello there." 12+1, "4" 1+1, "lumi" 4+1 and "none, sorry" 11+1.
    assert result["tokens"] == count == 13 + 2 + 5 + 12
    assert result["samples"] == 3 and result["truncated"] == 0 and result["dropped"] == 0


def test_batch_size_does_not_change_the_result(tiny_model, tiny_tokenizer, chatml):
    results = [evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, DataConfig(), batch_size=size,
                                   progress=False) for size in (1, 2, 3, 8)]
    for result in results[1:]:
        assert result["loss"] == pytest.approx(results[0]["loss"], abs=1e-6)
        assert result["tokens"] == results[0]["tokens"]


def test_masking_follows_train_on_prompt(tiny_model, tiny_tokenizer, chatml):
    tiny_model.eval()
    loss, count = nll_by_hand(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, train_on_prompt=True)

    result = evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS,
                                 DataConfig(train_on_prompt=True), progress=False)

    assert result["loss"] == pytest.approx(loss, abs=1e-5)
    assert result["tokens"] == count  # every token but each sequence's first
    assert count > evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, DataConfig(),
                                       progress=False)["tokens"]


def test_with_a_lora_adapter(tiny_model, tiny_tokenizer, chatml):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.eval()
    loss, _ = nll_by_hand(model, tiny_tokenizer, chatml, CONVERSATIONS)
    with model.disable_adapter():
        base_loss, _ = nll_by_hand(model, tiny_tokenizer, chatml, CONVERSATIONS)

    result = evaluate_perplexity(model, tiny_tokenizer, chatml, CONVERSATIONS, DataConfig(), progress=False)

    assert result["loss"] == pytest.approx(loss, abs=1e-5)
    assert abs(loss - base_loss) > 1e-4  # the adapter does change the answer


def test_overlong_examples_are_cut_or_dropped_as_in_training(tiny_model, tiny_tokenizer, chatml):
    # 36, 44 and 72 tokens; cut at 48, the third keeps its first reply ("lumi<|im_end|>") and loses the second.
    cut = evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, DataConfig(max_seq_len=48),
                              progress=False)
    dropped = evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS,
                                  DataConfig(max_seq_len=48, overlong="drop"), progress=False)
    assert (cut["samples"], cut["truncated"], cut["tokens"]) == (3, 1, 13 + 2 + 5)
    assert (dropped["samples"], dropped["dropped"], dropped["tokens"]) == (2, 1, 13 + 2)


def test_leaves_the_model_mode_and_refuses_empty_data(tiny_model, tiny_tokenizer, chatml):
    tiny_model.train()
    evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS[:1], DataConfig(), progress=False)
    assert tiny_model.training
    with pytest.raises(DataError, match="No conversations to measure perplexity on"):
        evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, [], DataConfig(), progress=False)


@pytest.mark.slow
@pytest.mark.timeout(180)  # about 10 s on two idle CPU cores, one batch of 8
def test_smollm2_perplexity_on_demo_data():
    from lorakit.config import ModelConfig
    from lorakit.data import load_conversations
    from lorakit.model import load_model, load_tokenizer

    demo = Path(__file__).resolve().parents[1] / "src" / "lorakit" / "samples" / "demo_train.json"
    data = DataConfig(paths=(str(demo),), max_samples=8, max_seq_len=256)
    model_config = ModelConfig(name="smollm2-135m", device="cpu")
    model, tokenizer = load_model(model_config), load_tokenizer(model_config)
    conversations, _ = load_conversations(data)

    result = evaluate_perplexity(model, tokenizer, resolve_template("auto", tokenizer), conversations, data,
                                 progress=False)

    assert result["samples"] == 8 and result["tokens"] > 50
    # An untuned 135M instruct model on short invented facts: worse than a fine-tuned one, far from chance (49k).
    assert math.isfinite(result["loss"]) and 1.5 < result["perplexity"] < 500
