"""Configuration for every stage: frozen dataclasses, loaded from YAML and overridden by `key=value` pairs.

`load_config(path, overrides, cls)` is the one way in, for every kind of config. By topic: train.py (model, data,
LoRA, training; LLaMA-Factory aliases), evaluate.py (suites, eval runs, the judge's endpoint), inference.py
(generation, serving, adapters by name), export.py (merge, GGUF, Ollama, Hub), core.py (building, coercion,
YAML, errors that suggest a fix).
"""

from lorakit.config.core import DEVICES, DTYPES, check_choice, parse_overrides, read_yaml, save_config, to_dict
from lorakit.config.evaluate import (CHOICE_SCORINGS, EVAL_KINDS, EndpointConfig, EvalRunConfig, EvalTaskConfig,
                                     SuiteConfig)
from lorakit.config.export import GGUF_OUTTYPES, ONTO, GGUFConfig, HubConfig, MergeConfig, OllamaConfig
from lorakit.config.inference import (BASE, ENGINES, AdapterSpec, GenerationConfig, ServeConfig, check_adapter_names,
                                      parse_adapter)
from lorakit.config.load import load_config
from lorakit.config.train import (ALIASES, EXAMPLE_ORDERS, FINETUNING, FORMATS, IGNORED_KEYS, OVERLONG, QUANTIZATIONS,
                                  SCHEDULERS, DataConfig, LoraConfig, ModelConfig, PreferenceConfig, TrainConfig)

__all__ = ["ALIASES", "BASE", "CHOICE_SCORINGS", "DEVICES", "DTYPES", "ENGINES", "EVAL_KINDS", "EXAMPLE_ORDERS",
           "FINETUNING", "FORMATS", "GGUF_OUTTYPES", "IGNORED_KEYS", "ONTO", "OVERLONG", "QUANTIZATIONS", "SCHEDULERS",
           "AdapterSpec", "DataConfig", "EndpointConfig", "EvalRunConfig", "EvalTaskConfig", "GGUFConfig",
           "GenerationConfig", "HubConfig", "LoraConfig", "MergeConfig", "ModelConfig", "OllamaConfig",
           "PreferenceConfig", "ServeConfig", "SuiteConfig", "TrainConfig", "check_adapter_names", "check_choice",
           "load_config", "parse_adapter", "parse_overrides", "read_yaml", "save_config", "to_dict"]
