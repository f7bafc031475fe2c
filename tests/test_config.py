"""Config loading: YAML + overrides into frozen dataclasses, LLaMA-Factory aliases, errors that suggest a fix."""

from pathlib import Path

import pytest

from lorakit.config import (AdapterSpec, EndpointConfig, EvalRunConfig, GenerateConfig, GenerationConfig, ServeConfig,
                            SuiteConfig, TrainConfig, load_config, save_config)
from lorakit.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_and_overrides_end_up_in_dataclasses(tmp_path):
    path = write(tmp_path, "model:\n  name: smollm2-135m\nlora:\n  rank: 4\nlearning_rate: 2e-4\n")

    config = load_config(path, ["lora.rank=16", "max_steps=200", "data.paths=[a.json, b.jsonl]"])

    assert config.lora.rank == 16
    assert config.max_steps == 200
    assert config.learning_rate == 2e-4  # YAML reads 2e-4 as a string; it must still be a float
    assert config.data.paths == ("a.json", "b.jsonl")


def test_llamafactory_flat_keys_are_translated(tmp_path):
    path = write(tmp_path, """
model_name_or_path: /models/qwen
stage: sft
do_train: true
dataset: identity,alpaca_en_demo
dataset_dir: data
template: qwen
finetuning_type: lora
lora_rank: 16
lora_alpha: 32
lora_dropout: 0.1
lora_target: all
cutoff_len: 512
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 2.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
logging_steps: 5
save_steps: 50
val_size: 0.1
output_dir: saves/qwen/lora
quantization_bit: 4
""")
    config = load_config(path)

    assert config.model.name == "/models/qwen"
    assert config.data.paths == ("identity", "alpaca_en_demo")
    assert config.data.dataset_dir == Path("data")
    assert config.data.template == "qwen"
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout) == (16, 32, 0.1)
    assert config.lora.targets == ("all-linear",)
    assert config.data.max_seq_len == 512
    assert (config.batch_size, config.gradient_accumulation, config.epochs) == (2, 8, 2.0)
    assert config.save_steps == 50 and config.data.val_size == 0.1
    assert config.model.quantization == "4bit"
    assert config.output_dir == Path("saves/qwen/lora")


def test_unknown_key_suggests_the_closest(tmp_path):
    path = write(tmp_path, "lora:\n  rnak: 8\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'lora.rnak'. Did you mean 'lora.rank'\?"):
        load_config(path)


def test_unknown_flat_key_suggests_the_alias(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'lora_rank'"):
        load_config(write(tmp_path, "lora_rnak: 8\n"))


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="Config key 'learning_rate' must be float, got 'fast'"):
        load_config(None, ["learning_rate=fast"])


def test_bad_choice_lists_valid_values():
    with pytest.raises(ConfigError, match="model.quantization must be one of none, 4bit, 8bit; got '3bit'"):
        load_config(None, ["model.quantization=3bit"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="Override 'lora.rank' is not of the form key=value"):
        load_config(None, ["lora.rank"])


def test_early_stopping_needs_validation_split():
    with pytest.raises(ConfigError, match="early_stopping_patience needs a validation set; set data.val_size"):
        load_config(None, ["early_stopping_patience=2"])


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["lora.rank=4", "data.paths=[x.json]", "data.columns={output: answer}"])
    save_config(config, tmp_path / "config.yaml")

    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_example_config_loads(path):
    """Training configs as TrainConfig; evaluation suites (configs/eval-*.yaml) as SuiteConfig; dataset generation
    (configs/generate-*.yaml) as GenerateConfig."""
    kind = {"eval": SuiteConfig, "generate": GenerateConfig}.get(path.name.split("-")[0], TrainConfig)
    assert isinstance(load_config(path, cls=kind), kind)


def test_suite_task_errors_name_the_task(tmp_path):
    path = write(tmp_path, "tasks:\n  - name: mmlu\n    kind: choice\n")
    with pytest.raises(ConfigError, match="Task 'mmlu' \\(choice\\) needs a source"):
        load_config(path, cls=SuiteConfig)
    path = write(tmp_path, "tasks:\n  - kind: perplexity\n    data: {paths: [a.json]}\n    shotz: 3\n")
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.shotz.*Did you mean 'tasks\[0\]\.shots'"):
        load_config(path, cls=SuiteConfig)
    path = write(tmp_path, "tasks:\n  - {kind: gsm8k, source: a.jsonl}\n  - {kind: gsm8k, source: b.jsonl}\n")
    with pytest.raises(ConfigError, match="several tasks named gsm8k"):
        load_config(path, cls=SuiteConfig)


@pytest.mark.parametrize("cls, text, overrides, expected", [
    (GenerationConfig, "max_new_tokens: 64\nstop: ['###']\n", ["temperature=0.7", "seed=3"],
     dict(max_new_tokens=64, stop=("###",), temperature=0.7, seed=3)),
    (ServeConfig, "model:\n  name: tiny\nadapters:\n  - {name: tuned, path: runs/a/adapter}\n  - zh=runs/b\n",
     ["port=9000", "engine=vllm"],
     dict(port=9000, engine="vllm", adapters=(AdapterSpec("tuned", Path("runs/a/adapter")),
                                             AdapterSpec("zh", Path("runs/b"))))),
    (EndpointConfig, "base_url: http://localhost:8000/v1\nmodel: judge\n", ["concurrency=2", "timeout=30"],
     dict(base_url="http://localhost:8000/v1", model="judge", concurrency=2, timeout=30.0)),
    (EvalRunConfig, "suite: configs/eval-forgetting.yaml\nadapters: [tuned=runs/a]\n", ["limit=5", "use_cache=false"],
     dict(suite=Path("configs/eval-forgetting.yaml"), adapters=(AdapterSpec("tuned", Path("runs/a")),), limit=5,
          use_cache=False)),
])
def test_inference_and_eval_configs_load_from_yaml_and_overrides(tmp_path, cls, text, overrides, expected):
    config = load_config(write(tmp_path, text), overrides, cls)

    assert isinstance(config, cls)
    assert {key: getattr(config, key) for key in expected} == expected


def test_inference_and_eval_configs_load_from_overrides_alone():
    assert load_config(None, ["max_new_tokens=32", "stop=[END]"], GenerationConfig) == GenerationConfig(
        max_new_tokens=32, stop=("END",))
    serve = load_config(None, ["model.name=tiny", "adapters=[tuned=runs/a]", "api_key=k"], ServeConfig)
    assert serve.model.name == "tiny" and serve.adapters == (AdapterSpec("tuned", Path("runs/a")),)
    assert load_config(None, ["base_url=https://api.test/v1", "model=m"], EndpointConfig).api_key == "EMPTY"
    run = load_config(None, ["data=[a.jsonl, b.jsonl]", "base=tiny", "output_dir=out"], EvalRunConfig)
    assert (run.data, run.base, run.output_dir) == (("a.jsonl", "b.jsonl"), "tiny", Path("out"))


@pytest.mark.parametrize("cls, typo, closest", [
    (GenerationConfig, "max_new_token", "max_new_tokens"), (ServeConfig, "engin", "engine"),
    (EndpointConfig, "base_ur", "base_url"), (EvalRunConfig, "adapter", "adapters"),
])
def test_unknown_key_of_each_config_suggests_the_closest(cls, typo, closest):
    with pytest.raises(ConfigError, match=rf"Unknown config key '{typo}'. Did you mean '{closest}'\?"):
        load_config(None, [f"{typo}=1"], cls)


def test_only_training_configs_translate_llamafactory_keys():
    assert load_config(None, ["template=qwen"]).data.template == "qwen"
    with pytest.raises(ConfigError, match="Unknown config key 'template'"):
        load_config(None, ["template=qwen"], GenerationConfig)


def test_a_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="The endpoint's model is empty; set it to a model served at base_url"):
        load_config(None, ["base_url=http://localhost:8000/v1"], EndpointConfig)


def test_config_errors_name_keys_not_flags():
    with pytest.raises(ConfigError, match="^engine must be one of transformers, vllm; got 'vlm'. Did you mean 'vllm'"):
        ServeConfig(engine="vlm")
    with pytest.raises(ConfigError, match="^max_batch_size must be at least 1"):
        load_config(None, ["max_batch_size=0"], ServeConfig)
    with pytest.raises(ConfigError, match="^batching must be one of continuous, static; got 'contiuous'. Did you "
                                          "mean 'continuous'"):
        load_config(None, ["batching=contiuous"], ServeConfig)


def test_old_import_locations_still_work():
    from lorakit.adapters import AdapterSpec as FromAdapters
    from lorakit.eval.judge import EndpointConfig as FromJudge
    from lorakit.infer import GenerationConfig as FromInfer
    from lorakit.serve import ServeConfig as FromServe

    assert (FromAdapters, FromJudge, FromInfer, FromServe) == (AdapterSpec, EndpointConfig, GenerationConfig,
                                                               ServeConfig)
