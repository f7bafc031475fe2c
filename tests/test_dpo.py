"""Stage dpo: preference data in its layouts, a reference that never moves, DPO after SFT, and the run folder."""

import json

import pytest
import torch
from peft import PeftModel

from lorakit.config import DataConfig, LoraConfig, ModelConfig, PreferenceConfig, TrainConfig, load_config
from lorakit.data.preference import load_preferences
from lorakit.errors import ConfigError, DataError
from lorakit.train import prepare_data, train
from lorakit.train.preference import _policy, build_preference_trainer

from conftest import make_model, shared_data

WORDS = ("hi", "yes", "no", "cat", "dog", "sun", "moon", "tea")
PAIRS = [{"prompt": f"say {word}", "chosen": f"{word} {word}.", "rejected": f"not {word}!"} for word in WORDS]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


def make_config(tmp_path, data_file, stage="dpo", **overrides) -> TrainConfig:
    data = DataConfig(paths=(str(data_file),), template="chatml", max_seq_len=64, cache_tokens=False,
                      val_size=overrides.pop("val_size", 0.0))
    settings = dict(model=ModelConfig(name="tiny", dtype="float32", device="cpu"), data=data, stage=stage,
                    lora=LoraConfig(rank=2, alpha=4, dropout=0.0), output_dir=tmp_path / stage, max_steps=3,
                    batch_size=4, learning_rate=5e-2, logging_steps=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def completion_logps(model, batch) -> torch.Tensor:
    """Summed log-probs of each sequence's completion tokens, computed here from plain logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(dim=1)


def reference_and_policy(trainer, batch):
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    trainer.model.eval()
    policy = completion_logps(trainer.model, batch)
    return torch.cat([chosen, rejected]), policy


def train_measured(config, tiny_tokenizer):
    """A DPO trainer trained on `config`, a batch of its pairs, and the reference and policy log-probs of that batch
    before and after training."""
    data = prepare_data(config, tiny_tokenizer)
    policy, peft_config = _policy(make_model("llama", len(tiny_tokenizer)), config)
    trainer = build_preference_trainer(policy, peft_config, tiny_tokenizer, data, config, [])
    batch = trainer.data_collator([data.train[i] for i in range(4)])
    reference_before, policy_before = reference_and_policy(trainer, batch)
    trainer.train()
    reference_after, policy_after = reference_and_policy(trainer, batch)
    return trainer, batch, reference_before, policy_before, reference_after, policy_after


def test_reference_stays_the_base_while_the_policy_moves(tiny_tokenizer, tmp_path, pairs_file):
    config = make_config(tmp_path, pairs_file, max_steps=4)
    base = make_model("llama", len(tiny_tokenizer))  # same seed: the same weights as the policy's base

    _, batch, reference_before, policy_before, reference_after, policy_after = train_measured(config, tiny_tokenizer)

    assert torch.allclose(reference_before, completion_logps(base, batch), atol=1e-4)
    assert torch.equal(reference_before, reference_after)
    assert (policy_after - policy_before).abs().max() > 1e-3
    assert torch.allclose(policy_before, reference_before, atol=1e-4)  # a new adapter starts as the base


def test_precomputed_reference_is_the_base(tiny_tokenizer, tmp_path, pairs_file):
    config = make_config(tmp_path, pairs_file, max_steps=2, preference=PreferenceConfig(precompute_reference=True))
    data = prepare_data(config, tiny_tokenizer)
    policy, peft_config = _policy(make_model("llama", len(tiny_tokenizer)), config)
    trainer = build_preference_trainer(policy, peft_config, tiny_tokenizer, data, config, [])
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)

    trainer.train()

    expected = completion_logps(make_model("llama", len(tiny_tokenizer)), batch)
    assert torch.allclose(torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]), expected, atol=1e-4)


def sft_run(tiny_tokenizer, tmp_path, pairs_file):
    config = TrainConfig(model=ModelConfig(name="tiny", dtype="float32", device="cpu"),
                         data=DataConfig(paths=(str(pairs_file),), template="chatml", max_seq_len=64,
                                         cache_tokens=False),
                         lora=LoraConfig(rank=2, alpha=4, dropout=0.0), output_dir=tmp_path / "sft", max_steps=3,
                         batch_size=4, learning_rate=5e-2, logging_steps=1)
    return train(make_model("llama", len(tiny_tokenizer)), tiny_tokenizer, prepare_data(config, tiny_tokenizer),
                 config, progress=False)


def test_dpo_after_sft_starts_from_and_is_kept_near_the_sft_adapter(tiny_tokenizer, tmp_path, pairs_file):
    sft_dir = sft_run(tiny_tokenizer, tmp_path, pairs_file)
    config = make_config(tmp_path, pairs_file, adapter=sft_dir)
    sft_model = PeftModel.from_pretrained(make_model("llama", len(tiny_tokenizer)), str(sft_dir / "adapter"))
    base = make_model("llama", len(tiny_tokenizer))

    trainer, batch, reference_before, policy_before, reference_after, policy_after = train_measured(
        config, tiny_tokenizer)

    sft_logps = completion_logps(sft_model, batch)
    assert torch.allclose(reference_before, sft_logps, atol=1e-4)
    assert not torch.allclose(reference_before, completion_logps(base, batch), atol=1e-2)
    assert torch.allclose(policy_before, sft_logps, atol=1e-4)  # the policy starts as the SFT model
    assert torch.equal(reference_before, reference_after)
    assert (policy_after - policy_before).abs().max() > 1e-3
    assert not any(p.requires_grad for name, p in trainer.model.named_parameters() if ".ref." in name)


def test_dpo_run_writes_adapter_metrics_and_plots(tiny_model, tiny_tokenizer, tmp_path, pairs_file):
    frozen = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    sft_dir = sft_run(tiny_tokenizer, tmp_path, pairs_file)
    config = make_config(tmp_path, pairs_file, val_size=2, adapter=sft_dir,
                         preference=PreferenceConfig(beta=0.2, losses=("sigmoid", "ipo"), loss_weights=(1.0, 0.5),
                                                     sft_weight=0.1))

    output_dir = train(tiny_model, tiny_tokenizer, prepare_data(config, tiny_tokenizer), config, progress=False)

    adapter = output_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    for name in ("rewards.png", "loss.png", "metrics.json", "manifest.json", "trainer_state.json", "README.md"):
        assert (output_dir / name).is_file(), name
    metrics = json.loads((output_dir / "metrics.json").read_text())
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert f"eval_{key}" in metrics, key
    logged = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any("rewards/margins" in entry and "loss" in entry for entry in logged)
    for name, parameter in tiny_model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(parameter, frozen[name.replace("base_layer.", "").replace("base_model.model.", "")])
    reloaded = PeftModel.from_pretrained(make_model("llama", len(tiny_tokenizer)), str(adapter))
    assert list(reloaded.peft_config) == ["default"]
    assert load_config(output_dir / "config.yaml").adapter == sft_dir


# --- data ----------------------------------------------------------------------------------------------------------


def test_reads_sharegpt_and_alpaca_ranking_entries_of_a_registry(tmp_path):
    sharegpt = [{"conversations": [{"from": "human", "value": "hi?"}], "chosen": {"from": "gpt", "value": "hello."},
                 "rejected": {"from": "gpt", "value": "go away."}}]
    alpaca = [{"instruction": "add", "input": "1 1", "chosen": "2", "rejected": "3"}]
    (tmp_path / "share.json").write_text(json.dumps(sharegpt))
    (tmp_path / "alp.json").write_text(json.dumps(alpaca))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "share": {"file_name": "share.json", "ranking": True, "formatting": "sharegpt",
                  "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
        "alp": {"file_name": "alp.json", "ranking": True,
                "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}}}))

    pairs, summary = load_preferences(DataConfig(paths=("share", "alp"), dataset_dir=tmp_path))

    assert [p.messages[-1]["content"] for p in pairs] == ["hello.", "2"]
    assert [p.rejected for p in pairs] == ["go away.", "3"]
    assert pairs[1].messages[0] == {"role": "user", "content": "add\n1 1"}
    assert summary.used == 2


@pytest.mark.parametrize("conversational", [False, True])
def test_reads_prompt_chosen_rejected_jsonl(tmp_path, conversational):
    record = {"prompt": "hi?", "chosen": "hello.", "rejected": "go away."}
    if conversational:
        record = {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi?"}],
                  "chosen": [{"role": "assistant", "content": "hello."}],
                  "rejected": [{"role": "assistant", "content": "go away."}]}
    path = write_jsonl(tmp_path / "p.jsonl", [record])

    (pair,), summary = load_preferences(DataConfig(paths=(str(path),)))

    assert pair.messages[-2:] == ({"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello."})
    assert pair.rejected == "go away." and summary.formats == {str(path): "preference"}
    assert (pair.messages[0]["role"] == "system") is conversational


def test_llamafactory_dpo_demo_tokenises_with_lorakit_template(tiny_tokenizer):
    folder = shared_data("llamafactory")
    config = TrainConfig(stage="dpo", data=DataConfig(paths=("dpo_en_demo",), dataset_dir=folder, template="chatml",
                                                      max_samples=20, max_seq_len=10**6, cache_tokens=False))
    data = prepare_data(config, tiny_tokenizer)

    assert len(data.train) == 20 and data.load_summary.formats == {"dpo_en_demo": "sharegpt"}
    row = data.train[0]
    text = {name: "".join(tiny_tokenizer.convert_ids_to_tokens(ids)) for name, ids in row.items()}
    assert text["prompt_ids"].startswith("<|im_start|>user\nHi! I'd like to create a new language game")
    assert text["prompt_ids"].endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text["chosen_ids"].startswith("That sounds like a fun") and text["chosen_ids"].endswith("<|im_end|>")
    assert text["rejected_ids"].endswith("<|im_end|>")
    assert row["chosen_ids"] != row["rejected_ids"]


ALPACA_PAIR = {"instruction": "hi?", "chosen": "hello.", "rejected": "bye."}


@pytest.mark.parametrize("first, record, message", [
    (PAIRS[0], {"prompt": "hi?", "chosen": "hello."}, "line 2: missing field 'rejected'"),
    (PAIRS[0], {"prompt": "hi?", "chosen": "hello.", "rejected": " hello. "},
     "line 2: 'chosen' and 'rejected' are the same"),
    (PAIRS[0], {"prompt": " ", "chosen": "hello.", "rejected": "bye."}, "line 2: field 'prompt' is empty"),
    (ALPACA_PAIR, {"instruction": "hi?", "output": "hello."}, "line 2: no rejected answer"),
    (ALPACA_PAIR, {"instruction": "", "chosen": "hello.", "rejected": "bye."}, "line 2: field 'instruction' is empty"),
])
def test_bad_preference_record_names_file_and_line(tmp_path, first, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [first, record])

    with pytest.raises(DataError, match=f"bad.jsonl, {message}"):
        load_preferences(DataConfig(paths=(str(path),)))

    pairs, summary = load_preferences(DataConfig(paths=(str(path),), skip_bad=True))
    assert len(pairs) == 1 and summary.skipped == 1


# --- config --------------------------------------------------------------------------------------------------------


def test_llamafactory_preference_keys(tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("stage: dpo\npref_beta: 0.3\npref_loss: ipo\npref_ftx: 0.2\nadapter_name_or_path: saves/sft\n")

    config = load_config(path)

    assert config.stage == "dpo" and config.adapter.name == "sft"
    assert config.preference == PreferenceConfig(beta=0.3, losses=("ipo",), sft_weight=0.2)


@pytest.mark.parametrize("settings, message", [
    ({"stage": "rm"}, "stage is 'rm', which lorakit does not train yet"),
    ({"stage": "dpo", "finetuning": "full"}, "stage dpo trains a LoRA adapter"),
    ({"stage": "sft", "adapter": "runs/x"}, "adapter .* is used by the preference stages"),
    ({"preference": {"losses": ["simpo"]}}, "'simpo', which is its own stage, not a DPO loss; set stage: simpo"),
    ({"preference": {"losses": ["sigmod"]}}, "Did you mean 'sigmoid'"),
    ({"preference": {"losses": ["sigmoid", "sft"]}}, "set preference.sft_weight"),
    ({"preference": {"losses": ["sigmoid", "ipo"], "loss_weights": [1.0]}}, "one weight per loss"),
])
def test_preference_config_mistakes_are_named(settings, message):
    from lorakit.config.core import build

    with pytest.raises(ConfigError, match=message):
        build(TrainConfig, settings)
