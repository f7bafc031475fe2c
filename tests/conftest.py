"""Shared fixtures: a character-level tokenizer and tiny random models of four architectures, built in memory."""

from __future__ import annotations

import os

# Before transformers/huggingface_hub are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import string
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Split
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: printable ASCII plus ChatML markers, ~106 tokens, nothing downloaded."""
    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {token: index for index, token in enumerate(SPECIALS + chars)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>", "</s>"])
    tokenizer.chat_template = CHATML
    return tokenizer


def make_template_tokenizer() -> PreTrainedTokenizerFast:
    """A four-token tokenizer: templates only need its special tokens' strings (<s>, </s>, <pad>, <unk>)."""
    backend = Tokenizer(WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def make_model(architecture: str, vocab_size: int):
    """A random 2-layer model of `architecture` (llama, qwen2, gemma3, mistral), a few thousand parameters."""
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0)
    if architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    if architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    if architecture == "mistral":
        return MistralForCausalLM(MistralConfig(**common))
    if architecture == "gemma3":
        return Gemma3ForCausalLM(Gemma3TextConfig(**common, head_dim=8, sliding_window=64))
    raise ValueError(architecture)


ARCHITECTURES = ("llama", "qwen2", "gemma3", "mistral")


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_model("llama", len(tiny_tokenizer))


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny llama saved as an ordinary Hugging Face folder, so code that loads by name can be tested."""
    folder = tmp_path / "tiny-llama"
    make_model("llama", len(tiny_tokenizer)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test where that folder is absent (a user's fresh clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the real datasets beside the repo; absent in a fresh clone)")
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def isolated_token_cache(tmp_path, monkeypatch):
    """Tokenised-dataset caches go to the test's own folder, never the user's ~/.cache."""
    folder = tmp_path / "token-cache"
    monkeypatch.setattr("lorakit.data.cache.datasets_cache_root", lambda: folder)
    return folder


@pytest.fixture(autouse=True)
def isolated_eval_cache(tmp_path, monkeypatch):
    """Evaluation results are cached per model+task; tests keep that cache in their own folder."""
    folder = tmp_path / "eval-cache"
    monkeypatch.setattr("lorakit.eval.suite.eval_cache_root", lambda: folder)
    return folder
