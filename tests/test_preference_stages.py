"""Stages kto (unpaired answers, a reference that never moves), orpo and simpo (reference-free pairs): their data
layouts, TRL's constraints said before training, and short runs that log each stage's metrics."""

import json

import pytest
import torch

from lorakit.config import DataConfig, PreferenceConfig, TrainConfig, load_config
from lorakit.data.unpaired import load_unpaired
from lorakit.errors import ConfigError, DataError
from lorakit.train import prepare_data, train
from lorakit.train.preference import _policy, build_preference_trainer

from conftest import make_model, shared_data
from test_dpo import completion_logps, make_config

WORDS = ("hi", "yes", "no", "cat", "dog", "sun", "moon", "tea")
ANSWERS = [{"prompt": f"say {word}", "completion": f"{word} {word}." if good else f"not {word}!", "label": good}
           for word in WORDS for good in (True, False)]
PAIRS = [{"prompt": f"say {word}", "chosen": f"{word} {word}.", "rejected": f"not {word}!"} for word in WORDS]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return path


# --- kto -----------------------------------------------------------------------------------------------------------


def test_kto_reference_stays_the_base_while_the_policy_moves(tiny_tokenizer, tmp_path):
    config = make_config(tmp_path, write_jsonl(tmp_path / "kto.jsonl", ANSWERS), "kto", max_steps=2)
    data = prepare_data(config, tiny_tokenizer)
    policy, peft_config = _policy(make_model("llama", len(tiny_tokenizer)), config)
    trainer = build_preference_trainer(policy, peft_config, tiny_tokenizer, data, config, [])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    base = completion_logps(make_model("llama", len(tiny_tokenizer)), batch)

    reference_before, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    trainer.train()
    reference_after, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    trainer.model.eval()

    assert torch.allclose(reference_before, base, atol=1e-4) and torch.equal(reference_before, reference_after)
    assert (completion_logps(trainer.model, batch) - base).abs().max() > 1e-3
    rows = [trainer.train_dataset[i] for i in range(4)]  # KL completions: each prompt with its neighbour's answer
    assert [row["KL_completion_ids"] for row in rows] == [rows[-1]["completion_ids"]] + \
        [row["completion_ids"] for row in rows[:-1]]


def test_kto_run_writes_adapter_and_logs_kto_metrics(tiny_model, tiny_tokenizer, tmp_path):
    frozen = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    config = make_config(tmp_path, write_jsonl(tmp_path / "kto.jsonl", ANSWERS), "kto", val_size=4,
                         preference=PreferenceConfig(beta=0.2, desirable_weight=1.0, undesirable_weight=1.5))

    output_dir = train(tiny_model, tiny_tokenizer, prepare_data(config, tiny_tokenizer), config, progress=False)

    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()
    for name in ("rewards.png", "loss.png", "metrics.json", "trainer_state.json", "README.md"):
        assert (output_dir / name).is_file(), name
    logged = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any({"loss", "kl", "rewards/chosen", "rewards/rejected"} <= entry.keys() for entry in logged)
    assert "eval_rewards/margins" in json.loads((output_dir / "metrics.json").read_text())
    for name, parameter in tiny_model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(parameter, frozen[name.replace("base_layer.", "").replace("base_model.model.", "")])


def test_kto_reads_llamafactory_kto_tag_entries(tiny_tokenizer):
    folder = shared_data("llamafactory")
    config = TrainConfig(stage="kto", data=DataConfig(paths=("kto_en_demo",), dataset_dir=folder, template="chatml",
                                                      max_samples=40, max_seq_len=10**6, cache_tokens=False))
    data = prepare_data(config, tiny_tokenizer)

    labels = data.train["label"]
    assert len(labels) == 40 and 0 < sum(labels) < 40
    prompt = "".join(tiny_tokenizer.convert_ids_to_tokens(data.train[0]["prompt_ids"]))
    completion = "".join(tiny_tokenizer.convert_ids_to_tokens(data.train[0]["completion_ids"]))
    assert prompt.startswith("<|im_start|>user\nThe Federal Trade Commission")
    assert prompt.endswith("<|im_start|>assistant\n") and completion.endswith("<|im_end|>")


def test_kto_reads_trl_layouts_and_unpairs_pairs(tmp_path):
    conversational = {"prompt": [{"role": "user", "content": "hi?"}],
                      "completion": [{"role": "assistant", "content": "hello."}], "label": False}
    paths = (str(write_jsonl(tmp_path / "plain.jsonl", ANSWERS[:2])),
             str(write_jsonl(tmp_path / "chat.jsonl", [conversational])),
             str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:1])))

    examples, summary = load_unpaired(DataConfig(paths=paths))

    assert [e.desirable for e in examples[:3]] == [True, False, False] and examples[3].rejected == "not hi!"
    assert examples[2].messages[-1] == {"role": "assistant", "content": "hello."}
    assert summary.formats == {paths[0]: "prompt_completion", paths[1]: "prompt_completion", paths[2]: "preference"}


@pytest.mark.parametrize("record, message", [
    ({"prompt": "hi?", "completion": "hello.", "label": "yes"}, "line 3: field 'label' must be true or false"),
    ({"prompt": "hi?", "completion": "hello."}, "line 3: no desirable/undesirable label"),
])
def test_bad_kto_record_names_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", ANSWERS[:2] + [record])

    with pytest.raises(DataError, match=f"bad.jsonl, {message}"):
        load_unpaired(DataConfig(paths=(str(path),)))
    examples, summary = load_unpaired(DataConfig(paths=(str(path),), skip_bad=True))
    assert len(examples) == 2 and summary.skipped == 1


def test_kto_data_of_one_kind_is_refused_before_training(tmp_path):
    path = write_jsonl(tmp_path / "good.jsonl", [a for a in ANSWERS if a["label"]])

    with pytest.raises(DataError, match="all 8 labelled answers are desirable, none undesirable"):
        prepare_data(make_config(tmp_path, path, "kto"), None)


@pytest.mark.parametrize("text, message", [
    ("stage: kto\nper_device_train_batch_size: 1\ngradient_accumulation_steps: 8\n",
     "stage kto needs batch_size of at least 2, got 1"),
    ("stage: kto\nlora_target: q_proj,lm_head\n", "cannot train a LoRA adapter on lm_head"),
    ("stage: kto\nexample_order: by_length\n", "example_order=by_length is not available for stage kto"),
    ("stage: kto\npref_loss: ipo\n", "preference.losses chooses stage dpo's loss"),
])
def test_kto_constraints_are_config_errors(tmp_path, text, message):
    path = tmp_path / "kto.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_llamafactory_kto_and_reference_free_keys(tmp_path):
    path = tmp_path / "kto.yaml"
    path.write_text("stage: kto\npref_beta: 0.3\nkto_chosen_weight: 1.5\nkto_rejected_weight: 0.5\n")
    assert load_config(path).preference == PreferenceConfig(beta=0.3, desirable_weight=1.5, undesirable_weight=0.5)
    for loss in ("orpo", "simpo"):
        path.write_text(f"stage: dpo\npref_loss: {loss}\npref_beta: 2.0\nsimpo_gamma: 0.8\npref_ftx: 0.1\n")
        config = load_config(path)
        assert config.stage == loss and config.preference == PreferenceConfig(beta=2.0, simpo_gamma=0.8,
                                                                               sft_weight=0.1)


# --- orpo, simpo ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, metrics", [("orpo", ("log_odds_ratio", "nll_loss")), ("simpo", ("nll_loss",))])
def test_reference_free_stage_trains_and_logs_its_metrics(tiny_model, tiny_tokenizer, tmp_path, stage, metrics):
    frozen = tiny_model.lm_head.weight.detach().clone()
    config = make_config(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", PAIRS), stage, val_size=2,
                         preference=PreferenceConfig(beta=2.0 if stage == "simpo" else 0.1))
    data = prepare_data(config, tiny_tokenizer)

    output_dir = train(tiny_model, tiny_tokenizer, data, config, progress=False)

    logged = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    expected = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", *metrics}
    assert any(expected <= entry.keys() for entry in logged)
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged if "loss" in entry)
    assert "eval_rewards/accuracies" in json.loads((output_dir / "metrics.json").read_text())
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file() and (output_dir / "rewards.png").is_file()
    assert torch.equal(tiny_model.lm_head.weight, frozen)


def test_reference_free_rows_train_on_the_answers_only(tiny_tokenizer, tmp_path):
    config = make_config(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", PAIRS), "orpo")
    data = prepare_data(config, tiny_tokenizer)
    policy, peft_config = _policy(make_model("llama", len(tiny_tokenizer)), config)

    trainer = build_preference_trainer(policy, peft_config, tiny_tokenizer, data, config, [])

    row, pair = trainer.train_dataset[0], data.train[0]
    prompt = pair["prompt_ids"]
    for side in ("chosen", "rejected"):
        assert row[f"{side}_input_ids"] == prompt + pair[f"{side}_ids"]
        assert row[f"{side}_labels"] == [-100] * len(prompt) + pair[f"{side}_ids"]
