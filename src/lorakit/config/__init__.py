"""Configuration for every stage: frozen dataclasses, loaded from YAML and overridden by `key=value` pairs.

`load_config(path, overrides, cls)` is the one way in, for every kind of config. By topic: train.py (model, data,
LoRA, training; LLaMA-Factory aliases), evaluate.py (suites, eval runs, the judge's endpoint), inference.py
(generation, serving, adapters by name), export.py (merge, GGUF, Ollama, Hub), datatools.py (the dataset tools:
dedupe, split, mix, sample, filter), generate.py (documents to records by an LLM, with a judge), webui.py
(the web UI's address and folders), core.py (building, coercion, YAML, errors that suggest a fix).
"""

from lorakit.config.core import DEVICES, DTYPES, check_choice, parse_overrides, read_yaml, save_config, to_dict
from lorakit.config.datatools import (DEDUPE_METHODS, LANGUAGES, OUTPUT_FORMATS, DedupeConfig, FilterConfig,
                                      MixConfig, SampleConfig, SplitConfig)
from lorakit.config.evaluate import (CHOICE_SCORINGS, EVAL_KINDS, EndpointConfig, EvalRunConfig, EvalTaskConfig,
                                     SuiteConfig)
from lorakit.config.generate import (GENERATE_FORMATS, GENERATE_LANGUAGES, GENERATE_MODES, GenerateConfig,
                                     JudgeSettings)
from lorakit.config.export import GGUF_OUTTYPES, ONTO, GGUFConfig, HubConfig, MergeConfig, OllamaConfig
from lorakit.config.inference import (BASE, ENGINES, AdapterSpec, GenerationConfig, ServeConfig, check_adapter_names,
                                      parse_adapter)
from lorakit.config.load import load_config
from lorakit.config.webui import UI_LANGUAGES, WebUIConfig
from lorakit.config.train import (ALIASES, EXAMPLE_ORDERS, FINETUNING, FORMATS, IGNORED_KEYS, OVERLONG, QUANTIZATIONS,
                                  SCHEDULERS, DataConfig, LoraConfig, ModelConfig, PreferenceConfig, TrainConfig)

__all__ = ["ALIASES", "BASE", "CHOICE_SCORINGS", "DEDUPE_METHODS", "DEVICES", "DTYPES", "ENGINES", "EVAL_KINDS",
           "EXAMPLE_ORDERS", "FINETUNING", "FORMATS", "GENERATE_FORMATS", "GENERATE_LANGUAGES", "GENERATE_MODES",
           "GGUF_OUTTYPES", "IGNORED_KEYS", "LANGUAGES", "ONTO", "OUTPUT_FORMATS", "OVERLONG", "QUANTIZATIONS",
           "SCHEDULERS", "AdapterSpec", "DataConfig", "DedupeConfig",
           "EndpointConfig", "EvalRunConfig", "EvalTaskConfig", "FilterConfig", "GGUFConfig", "GenerateConfig",
           "GenerationConfig", "HubConfig", "JudgeSettings", "LoraConfig", "MergeConfig", "MixConfig", "ModelConfig",
           "OllamaConfig", "PreferenceConfig", "SampleConfig", "ServeConfig", "SplitConfig", "SuiteConfig",
           "TrainConfig", "UI_LANGUAGES", "WebUIConfig", "check_adapter_names", "check_choice",
           "load_config", "parse_adapter", "parse_overrides", "read_yaml", "save_config", "to_dict"]
