"""Stage pt: documents joined with EOS and cut into blocks (or kept apart), every token trained, held-out perplexity
before and after training."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig, load_config
from lorakit.data.text import load_texts, tokenize_texts
from lorakit.errors import ConfigError, DataError
from lorakit.templates import resolve_template
from lorakit.train import prepare_data, train
from lorakit.train.packing import concatenate_batch, use_varlen_attention

from conftest import make_model, shared_data

DOCUMENTS = ["abc", "de", "fghij"]


def write_texts(path, texts):
    path.write_text("\n".join(texts) + "\n")
    return path


def tokenized(tokenizer, tmp_path, texts, **settings):
    config = DataConfig(paths=(str(write_texts(tmp_path / "docs.txt", texts)),), max_seq_len=8, **settings)
    documents, _ = load_texts(config)
    return tokenize_texts(documents, tokenizer, resolve_template("chatml", tokenizer), config)


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_blocks_join_documents_with_eos_and_train_every_token(tiny_tokenizer, tmp_path):
    dataset, summary = tokenized(tiny_tokenizer, tmp_path, DOCUMENTS)

    eos = tiny_tokenizer.eos_token_id
    stream = [*ids_of(tiny_tokenizer, "abc"), eos, *ids_of(tiny_tokenizer, "de"), eos,
              *ids_of(tiny_tokenizer, "fghij"), eos]
    blocks = dataset["input_ids"]
    assert [len(block) for block in blocks] == [8, 5]  # 13 tokens: one full block, the shorter rest kept
    assert [token for block in blocks for token in block] == stream  # EOS between documents, block crosses them
    assert dataset["labels"] == blocks  # the loss is on every token
    assert summary.tokens == 13 and summary.supervised_tokens == 7 + 4 and summary.examples == 2


def test_a_last_block_of_one_token_is_dropped_and_counted(tiny_tokenizer, tmp_path):
    dataset, summary = tokenized(tiny_tokenizer, tmp_path, ["abcdefg", "hijklmn", "o"])  # 8 + 8 + 2 tokens

    assert [len(block) for block in dataset["input_ids"]] == [8, 8, 2] and summary.dropped_no_labels == 0
    dataset, summary = tokenized(tiny_tokenizer, tmp_path, ["abcdefghijklmnopqrstuvwx"])  # 24 letters + EOS
    assert [len(block) for block in dataset["input_ids"]] == [8, 8, 8] and summary.dropped_no_labels == 1


def test_document_packing_keeps_each_document_its_own_example(tiny_tokenizer, tmp_path):
    dataset, _ = tokenized(tiny_tokenizer, tmp_path, DOCUMENTS + ["klmnopqrstu"], packing="documents")

    eos = tiny_tokenizer.eos_token_id
    expected = [[*ids_of(tiny_tokenizer, text), eos] for text in DOCUMENTS]
    long_document = [*ids_of(tiny_tokenizer, "klmnopqrstu"), eos]
    expected += [long_document[:8], long_document[8:]]  # longer than max_seq_len: cut into pieces, nothing lost
    assert dataset["input_ids"] == expected
    assert dataset["labels"] == expected


def test_packed_documents_do_not_attend_to_each_other(tiny_tokenizer, tmp_path):
    dataset, _ = tokenized(tiny_tokenizer, tmp_path, DOCUMENTS, packing="documents")
    model = make_model("llama", len(tiny_tokenizer)).eval()
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([ids])).logits[0] for ids in dataset["input_ids"]]
        use_varlen_attention(model)
        batch = concatenate_batch([dataset[i] for i in range(len(dataset))])
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]

    assert torch.allclose(packed, torch.cat(alone), atol=1e-5)
    assert batch["labels"][0, 4].item() == -100  # the second document's first token is not predicted from the first


def test_conversation_records_are_refused_by_name(tmp_path):
    texts = write_texts(tmp_path / "docs.txt", ["a document."])
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"prompt": "q?", "completion": "a."}) + "\n")
    paths = (str(texts), str(chat))

    with pytest.raises(DataError, match="chat.jsonl, line 1: not plain text. Stage pt trains on documents"):
        load_texts(DataConfig(paths=paths))
    documents, summary = load_texts(DataConfig(paths=paths, skip_bad=True))
    assert [d.text for d in documents] == ["a document."] and summary.skipped == 1


def make_config(tmp_path, data_file, **overrides) -> TrainConfig:
    data = DataConfig(paths=(str(data_file),), template="chatml", max_seq_len=32, cache_tokens=False,
                      val_size=overrides.pop("val_size", 4), packing=overrides.pop("packing", "blocks"))
    settings = dict(model=ModelConfig(name="tiny", dtype="float32", device="cpu"), data=data, stage="pt",
                    lora=LoraConfig(rank=4, alpha=8, dropout=0.0), output_dir=tmp_path / "pt", max_steps=8,
                    batch_size=4, learning_rate=0.2, logging_steps=4)
    settings.update(overrides)
    return TrainConfig(**settings)


def plain_perplexity(model, blocks) -> float:
    """exp(mean next-token NLL over every block's tokens), from plain logits."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in blocks:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            total += F.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    return math.exp(total / count)


def test_pt_run_lowers_heldout_perplexity_and_reports_it(tiny_tokenizer, tmp_path):
    words = ["the cat sat on the mat.", "a dog ran to the sun.", "the sun is hot today."]
    texts = [" ".join(words[(i + j) % 3] for j in range(3)) for i in range(24)]
    config = make_config(tmp_path, write_texts(tmp_path / "docs.txt", texts))
    data = prepare_data(config, tiny_tokenizer)
    heldout = data.validation["input_ids"]

    output_dir = train(make_model("llama", len(tiny_tokenizer)), tiny_tokenizer, data, config, progress=False)

    metrics = json.loads((output_dir / "metrics.json").read_text())
    base = make_model("llama", len(tiny_tokenizer))  # the same weights the run started from
    trained = PeftModel.from_pretrained(make_model("llama", len(tiny_tokenizer)), str(output_dir / "adapter"))
    assert metrics["perplexity_before"] == pytest.approx(plain_perplexity(base, heldout), rel=1e-4)
    assert metrics["perplexity_after"] == pytest.approx(plain_perplexity(trained, heldout), rel=1e-4)
    assert metrics["perplexity_after"] < metrics["perplexity_before"]
    assert (output_dir / "loss.png").is_file() and load_config(output_dir / "config.yaml").stage == "pt"


def test_llamafactory_text_entries_read_as_documents(tiny_tokenizer):
    folder = shared_data("llamafactory")
    for name in ("wiki_demo", "c4_demo"):
        config = TrainConfig(stage="pt", data=DataConfig(paths=(name,), dataset_dir=folder, max_samples=3,
                                                         max_seq_len=512, cache_tokens=False))
        data = prepare_data(config, tiny_tokenizer)
        assert data.load_summary.formats == {name: "text"}
        assert all(len(ids) == 512 for ids in data.train["input_ids"][:-1]) and data.train["labels"] == \
            data.train["input_ids"]


@pytest.mark.parametrize("settings, message", [
    ({"stage": "sft", "data": {"packing": "documents"}}, "data.packing is stage pt's"),
    ({"stage": "pt", "data": {"packing": "doc"}}, "data.packing must be one of blocks, documents"),
    ({"stage": "pt", "adapter": "runs/x"}, "adapter .* is used by the preference stages"),
])
def test_pt_config_mistakes_are_named(settings, message):
    from lorakit.config.core import build

    with pytest.raises(ConfigError, match=message):
        build(TrainConfig, settings)
