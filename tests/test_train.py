"""Training: adapters saved in standard PEFT form, base weights untouched, outputs complete, resume exact."""

import json
import math
import threading

import pytest
import torch
from peft import PeftModel

from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig
from lorakit.errors import ConfigError
from lorakit.progress import TrainProgress
from lorakit.train import prepare_data, train

from conftest import ARCHITECTURES, make_model

RECORDS = [{"instruction": f"say {word}", "output": f"{word} {word}."} for word in
           ("hi", "yes", "no", "cat", "dog", "sun", "moon", "tea", "red", "blue", "one", "two")]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(RECORDS))
    return path


def make_config(tmp_path, data_file, **overrides) -> TrainConfig:
    data = overrides.pop("data", DataConfig(paths=(str(data_file),), template="chatml", max_seq_len=64))
    settings = dict(model=ModelConfig(name="tiny", dtype="float32", device="cpu"), data=data,
                    lora=LoraConfig(rank=2, alpha=4, dropout=0.0), output_dir=tmp_path / "run", max_steps=2,
                    batch_size=4, learning_rate=1e-2, logging_steps=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def fit(model, tokenizer, config, **options):
    return train(model, tokenizer, prepare_data(config, tokenizer), config, **options)


def test_train_writes_adapter_and_report_and_leaves_base_weights(tiny_model, tiny_tokenizer, tmp_path, data_file):
    frozen = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    config = make_config(tmp_path, data_file, max_steps=4)

    output_dir = fit(tiny_model, tiny_tokenizer, config)

    adapter = output_dir / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja",
                 "README.md"):
        assert (adapter / name).is_file(), name
    for name in ("config.yaml", "manifest.json", "metrics.json", "trainer_state.json", "loss.png", "README.md"):
        assert (output_dir / name).is_file(), name
    base = tiny_model.get_base_model() if hasattr(tiny_model, "get_base_model") else tiny_model
    for name, parameter in base.named_parameters():
        if "lora_" not in name:
            assert torch.equal(parameter, frozen[name.replace("base_layer.", "")]), name
    manifest = json.loads((output_dir / "manifest.json").read_text())
    assert manifest["data_files"] == {str(data_file): manifest["data_files"][str(data_file)]}
    assert len(manifest["data_files"][str(data_file)]) == 64
    assert manifest["template"]["name"] == "chatml" and manifest["seed"] == 42
    assert manifest["data"]["train_examples"] == 12 and manifest["packages"]["peft"]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert (output_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Final metrics" in (output_dir / "README.md").read_text()


def test_adapter_loads_with_plain_peft_and_gives_same_logits(tiny_model, tiny_tokenizer, tmp_path, data_file):
    output_dir = fit(tiny_model, tiny_tokenizer, make_config(tmp_path, data_file, max_steps=3))
    tiny_model.eval()
    inputs = tiny_tokenizer("say hi", return_tensors="pt")
    expected = tiny_model(**inputs).logits

    fresh = PeftModel.from_pretrained(make_model("llama", len(tiny_tokenizer)), str(output_dir / "adapter")).eval()

    assert torch.allclose(fresh(**inputs).logits, expected, atol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_lora_trains_every_architecture(architecture, tiny_tokenizer, tmp_path, data_file):
    model = make_model(architecture, len(tiny_tokenizer))
    output_dir = fit(model, tiny_tokenizer, make_config(tmp_path, data_file))
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["train_loss"] > 0 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("lora", [LoraConfig(rank=2, alpha=4, rslora=True), LoraConfig(rank=2, alpha=4, dora=True),
                                  LoraConfig(rank=2, alpha=4, loraplus_ratio=16.0),
                                  LoraConfig(rank=2, alpha=4, targets=("q_proj", "v_proj"))],
                         ids=["rslora", "dora", "loraplus", "explicit-targets"])
def test_lora_variants(lora, tiny_model, tiny_tokenizer, tmp_path, data_file):
    output_dir = fit(tiny_model, tiny_tokenizer, make_config(tmp_path, data_file, lora=lora))
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["use_rslora"] == lora.rslora and adapter_config["use_dora"] == lora.dora
    if lora.targets != ("all-linear",):
        assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj"}


def test_unknown_lora_target_lists_module_names(tiny_model, tiny_tokenizer, tmp_path, data_file):
    config = make_config(tmp_path, data_file, lora=LoraConfig(targets=("query",)))
    with pytest.raises(ConfigError, match=r"lora.targets=\['query'\] does not fit LlamaForCausalLM.*q_proj"):
        fit(tiny_model, tiny_tokenizer, config)


@pytest.mark.parametrize("finetuning", ["full", "freeze"])
def test_full_and_freeze_finetuning_save_a_model(finetuning, tiny_model, tiny_tokenizer, tmp_path, data_file):
    embedding = tiny_model.model.embed_tokens.weight.detach().clone()
    output_dir = fit(tiny_model, tiny_tokenizer, make_config(tmp_path, data_file, finetuning=finetuning,
                                                             freeze_trainable_layers=1))
    assert (output_dir / "model" / "model.safetensors").is_file()
    changed = not torch.equal(tiny_model.model.embed_tokens.weight, embedding)
    assert changed == (finetuning == "full")


def test_progress_callback_gets_every_step_with_finite_loss(tiny_model, tiny_tokenizer, tmp_path, data_file):
    events: list[TrainProgress] = []
    stop = threading.Event()

    def stop_at_the_last_step(event: TrainProgress) -> None:
        events.append(event)
        if event.completed == 4:
            stop.set()

    output_dir = fit(tiny_model, tiny_tokenizer, make_config(tmp_path, data_file, max_steps=4),
                     progress=stop_at_the_last_step, stop=stop)

    assert all(isinstance(event, TrainProgress) and event.total == 4 for event in events)
    assert sorted({event.completed for event in events}) == [0, 1, 2, 3, 4]
    logged = [event for event in events if event.loss is not None]
    assert [event.completed for event in logged] == [1, 2, 3, 4]  # logging_steps=1
    assert all(math.isfinite(event.loss) and event.learning_rate is not None for event in logged)
    assert all(event.tokens_per_second > 0 for event in events[1:])
    assert events[-1].finished and not events[-1].stopped and events[-1].remaining_seconds == 0.0
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert "stopped" not in metrics  # a stop asked for at the last step changes nothing
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 4


def test_stop_event_ends_training_with_a_checkpoint_and_outputs(tiny_model, tiny_tokenizer, tmp_path, data_file):
    stop = threading.Event()
    events: list[TrainProgress] = []

    def stop_after_first_step(event: TrainProgress) -> None:
        events.append(event)
        if event.completed >= 1:
            stop.set()  # as a web UI's stop button would, from another thread

    output_dir = fit(tiny_model, tiny_tokenizer, make_config(tmp_path, data_file, max_steps=8),
                     progress=stop_after_first_step, stop=stop)

    steps = json.loads((output_dir / "trainer_state.json").read_text())["global_step"]
    assert 1 <= steps <= 2
    assert (output_dir / "checkpoints" / f"checkpoint-{steps}" / "adapter_model.safetensors").is_file()
    assert (output_dir / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["stopped"] is True and math.isfinite(metrics["train_loss"])
    assert events[-1].finished and events[-1].stopped and events[-1].completed == steps


def test_validation_early_stopping_and_best_model(tiny_model, tiny_tokenizer, tmp_path, data_file):
    data = DataConfig(paths=(str(data_file),), template="chatml", max_seq_len=64, val_size=0.25)
    config = make_config(tmp_path, data_file, data=data, max_steps=None, epochs=20, save_steps=2,
                         early_stopping_patience=1, learning_rate=0.5)
    output_dir = fit(tiny_model, tiny_tokenizer, config)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["best_metric"] is not None
    assert state["global_step"] < 60  # stopped early: 20 epochs of 3 steps would be 60
    assert "eval_loss" in json.loads((output_dir / "metrics.json").read_text())


def test_an_evaluation_at_the_last_step_is_not_repeated(tiny_model, tiny_tokenizer, tmp_path, data_file,
                                                         monkeypatch):
    from transformers import Trainer

    passes = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: passes.append(self.state.global_step)
                        or evaluate(self, *a, **k))
    data = DataConfig(paths=(str(data_file),), template="chatml", max_seq_len=64, val_size=0.25)
    output_dir = fit(tiny_model, tiny_tokenizer, make_config(tmp_path, data_file, data=data, max_steps=4,
                                                             eval_steps=2))
    assert passes == [2, 4]  # no third pass over the validation set after training
    evaluations = [entry for entry in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())
                   if "eval_loss" in entry]
    assert json.loads((output_dir / "metrics.json").read_text())["eval_loss"] == evaluations[-1]["eval_loss"]


def test_resume_matches_uninterrupted_run(tiny_tokenizer, tmp_path, data_file, monkeypatch):
    def losses(output_dir):
        state = json.loads((output_dir / "trainer_state.json").read_text())
        return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    common = dict(max_steps=6, save_steps=3, save_total_limit=3, batch_size=2,
                  lora=LoraConfig(rank=2, alpha=4, dropout=0.1))
    straight = fit(make_model("llama", len(tiny_tokenizer)), tiny_tokenizer,
                   make_config(tmp_path, data_file, output_dir=tmp_path / "straight", **common))

    import transformers

    original_step = transformers.Trainer.training_step
    calls = {"n": 0}

    def crash_after_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("simulated crash")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", crash_after_three)
    interrupted = make_config(tmp_path, data_file, output_dir=tmp_path / "resumed", **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(make_model("llama", len(tiny_tokenizer)), tiny_tokenizer, interrupted)
    monkeypatch.setattr(transformers.Trainer, "training_step", original_step)
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-3").is_dir()
    assert not (tmp_path / "resumed" / "adapter").exists()

    resumed = fit(make_model("llama", len(tiny_tokenizer)), tiny_tokenizer,
                  make_config(tmp_path, data_file, output_dir=tmp_path / "resumed", resume=True, **common))

    expected, got = losses(straight), losses(resumed)
    for step in (4, 5, 6):
        assert abs(expected[step] - got[step]) < 1e-3, (step, expected[step], got[step])


def test_resume_without_checkpoint_is_a_clear_error(tiny_model, tiny_tokenizer, tmp_path, data_file):
    with pytest.raises(ConfigError, match="resume is set but .*checkpoints holds no checkpoint-N folder"):
        fit(tiny_model, tiny_tokenizer, make_config(tmp_path, data_file, resume=True))


def test_all_labels_masked_is_an_error_before_training(tiny_tokenizer, tmp_path):
    from lorakit.errors import DataError

    path = tmp_path / "long.json"
    path.write_text(json.dumps([{"instruction": "x" * 80, "output": "y"}] * 3))
    config = make_config(tmp_path, path, data=DataConfig(paths=(str(path),), template="chatml", max_seq_len=32))
    with pytest.raises(DataError, match=r"All 3 examples would train on nothing.*max_seq_len=32.*longest example: 1"):
        prepare_data(config, tiny_tokenizer)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_trains_on_a_quantized_base(bits, tiny_model_dir, tiny_tokenizer, tmp_path, data_file):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    from lorakit.model import load_model

    config = make_config(tmp_path, data_file, model=ModelConfig(name=str(tiny_model_dir), dtype="float32",
                                                                device="cpu", quantization=bits), max_steps=3)
    model = load_model(config.model)
    layer_type = bnb.nn.Linear4bit if bits == "4bit" else bnb.nn.Linear8bitLt
    assert isinstance(model.model.layers[0].self_attn.q_proj, layer_type)

    output_dir = fit(model, tiny_tokenizer, config)

    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 2
    assert "Quantization: " + bits in (output_dir / "README.md").read_text()


def test_bf16_training_leaves_a_model_that_generates(tiny_tokenizer, tmp_path, data_file):
    """bf16 autocast tricks used in training are undone: the same model object answers right after."""
    model = make_model("llama", len(tiny_tokenizer)).to(torch.bfloat16)
    config = make_config(tmp_path, data_file, model=ModelConfig(name="tiny", dtype="bfloat16", device="cpu"),
                         lora=LoraConfig(rank=2, alpha=4, dropout=0.1))
    fit(model, tiny_tokenizer, config)
    model.eval()
    inputs = tiny_tokenizer(["say hi", "say a longer thing"], return_tensors="pt", padding=True)
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert model.config._attn_implementation == "sdpa"
    assert all("forward" not in vars(m) for m in model.modules())
