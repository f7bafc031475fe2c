"""Several adapters on one base model: `load_adapters()` puts them on by name, `use_adapter()` picks one per call
("base" for none), `mix_adapters()` combines them into a new adapter and `save_adapter()` writes it as an ordinary
adapter folder. `mix()` is the whole road behind `lorakit adapters mix`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import BASE, AdapterSpec, ModelConfig, check_adapter_names, parse_adapter  # noqa: F401
from lorakit.errors import ConfigError
from lorakit.files import atomic_dir, write_text
from lorakit.infer import load_inference_tokenizer
from lorakit.infer.decoder import adapter_names, use_adapter  # noqa: F401  (picked per call there)
from lorakit.runs import adapter_base_model, check_same_base, find_adapter_dir
from lorakit.templates import Template, resolve_template

COMBINATIONS = ("linear", "cat", "svd")


def parse_weights(text: str, count: int) -> list[float]:
    """`0.7,0.3` as floats; empty means equal weights summing to 1 for `count` adapters."""
    if not text.strip():
        return [1.0 / count] * count if count else []
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"weights must be numbers separated by commas (e.g. 0.7,0.3); got '{text}'.") from None


def _check_adapter_dir(spec: AdapterSpec, model: PreTrainedModel, base_name: str) -> None:
    try:
        adapter_dir = find_adapter_dir(spec.path)
    except ConfigError as err:
        raise ConfigError(f"Adapter '{spec.name}': {err}") from None
    check_same_base(adapter_dir, model, base_name)


def load_adapters(model: PreTrainedModel, specs: Sequence[AdapterSpec], base_name: str):
    """`model` wrapped in a PeftModel holding every adapter of `specs` under its name (`model` itself when empty).

    Every adapter is checked against the plain base first: one trained on another base model raises ConfigError
    before anything is loaded. The adapters are frozen (inference mode); select one with `use_adapter()`.
    """
    from peft import PeftModel

    check_adapter_names(specs, base_name)
    for spec in specs:
        _check_adapter_dir(spec, model, base_name)
    if not specs:
        return model
    peft_model = PeftModel.from_pretrained(model, str(specs[0].path), adapter_name=specs[0].name)
    for spec in specs[1:]:
        peft_model.load_adapter(str(spec.path), adapter_name=spec.name)
    return peft_model.eval()


def resolve_adapter_dirs(specs: Sequence[AdapterSpec]) -> tuple[AdapterSpec, ...]:
    """`specs` with each path pointing at the adapter folder itself (a lorakit run folder means its `adapter/`)."""
    return tuple(AdapterSpec(spec.name, find_adapter_dir(spec.path)) for spec in specs)


def adapter_tokenizer(path: Path, base_tokenizer: PreTrainedTokenizerBase,
                      base_name: str) -> tuple[PreTrainedTokenizerBase, Template]:
    """The tokenizer and chat template to talk to an adapter: its own saved ones (the template it was trained
    with) when the folder has a tokenizer, else the base model's tokenizer and its template."""
    if (path / "tokenizer_config.json").is_file():
        return load_inference_tokenizer(ModelConfig(name=base_name), path)
    return base_tokenizer, resolve_template(None, base_tokenizer)


def mix_adapters(model, names: Sequence[str], weights: Sequence[float], combination: str, new_name: str) -> None:
    """Add adapter `new_name` to `model`: the loaded adapters `names` combined with `weights`.

    `combination` is PEFT's combination_type: linear (all ranks equal; the A and B matrices are averaged, a rough
    approximation), cat (exact; rank = sum of the ranks) or svd (the weighted update truncated to the largest rank).
    """
    _check_mix(model, names, weights, combination, new_name)
    try:
        model.add_weighted_adapter(adapters=list(names), weights=[float(w) for w in weights],
                                   adapter_name=new_name, combination_type=combination)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"Cannot combine adapters {', '.join(names)} with combination={combination}: {err}") \
            from None


def check_mix_arguments(count: int, weights: Sequence[float], combination: str) -> None:
    """What can be checked before any model is loaded: the combination, two or more adapters, one weight each."""
    if combination not in COMBINATIONS:
        raise ConfigError(f"combination must be one of {', '.join(COMBINATIONS)}; got '{combination}'.")
    if count < 2:
        raise ConfigError(f"Mixing needs at least two adapters; got {count}. Add more adapters (NAME=PATH).")
    if len(weights) != count:
        raise ConfigError(f"weights has {len(weights)} values but {count} adapters are given; give one weight "
                          "per adapter, in the order of the adapters (e.g. weights 0.7,0.3).")


def _check_mix(model, names: Sequence[str], weights: Sequence[float], combination: str, new_name: str) -> None:
    check_mix_arguments(len(names), weights, combination)
    configs = getattr(model, "peft_config", {})
    missing = [name for name in names if name not in configs]
    if missing:
        raise ConfigError(f"No adapter called {', '.join(missing)} is loaded; loaded: {', '.join(configs)}.")
    if new_name in configs:
        raise ConfigError(f"An adapter called '{new_name}' is already loaded; give the mix another name.")
    dora = [name for name in names if getattr(configs[name], "use_dora", False)]
    if dora:
        raise ConfigError(f"Adapters {', '.join(dora)} use DoRA, which PEFT cannot combine (its magnitude vectors "
                          "would be dropped); mix plain LoRA adapters only.")
    ranks = {name: configs[name].r for name in names}
    if combination == "linear" and len(set(ranks.values())) > 1:
        listed = ", ".join(f"{name} r={rank}" for name, rank in ranks.items())
        raise ConfigError(f"combination=linear needs adapters of equal rank; got {listed}. Use combination cat "
                          "(rank = their sum) or svd (rank = the largest), or retrain with one lora.rank.")
    if len({type(configs[name].target_modules) for name in names}) > 1:
        raise ConfigError(f"Adapters {', '.join(names)} name their target modules in different forms (a list in "
                          "some, a regular expression in others), which PEFT cannot combine; retrain one of them "
                          "with lora.targets written the same way.")


def save_adapter(model, name: str, out_dir: Path, tokenizer_from: Path | None = None,
                 readme: str | None = None) -> Path:
    """Write adapter `name` as an ordinary adapter folder at `out_dir` (atomically) and return `out_dir`.

    The folder holds adapter_model.safetensors and adapter_config.json, plus the tokenizer and chat template of
    `tokenizer_from` (an adapter folder) when it has one, and `readme` as README.md.
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=[name])
        nested = tmp / name  # PEFT writes any adapter not called "default" into a subfolder of that name
        if nested.is_dir():
            for item in nested.iterdir():
                shutil.move(str(item), tmp / item.name)
            nested.rmdir()
        if tokenizer_from is not None and (tokenizer_from / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(str(tmp))
        if readme is not None:
            write_text(tmp / "README.md", readme)
    return out_dir


def mix(model_config: ModelConfig | None, specs: Sequence[AdapterSpec], weights: Sequence[float],
        combination: str, out_dir: Path) -> Path:
    """Load the base model and `specs`, combine them with `weights`, save the mix at `out_dir`; return `out_dir`.

    Without `model_config` the base is the one the first adapter was trained on (its run's config.yaml, else its
    adapter_config.json), loaded in float32 on the CPU.
    """
    from lorakit.model import load_model

    if not specs:
        raise ConfigError("Nothing to mix: give at least two adapters (NAME=PATH).")
    check_mix_arguments(len(specs), weights, combination)
    check_adapter_names(specs, model_config.name if model_config is not None else BASE)
    specs = resolve_adapter_dirs(specs)
    if model_config is None:
        model_config = ModelConfig(name=adapter_base_model(specs[0].path), device="cpu", dtype="float32")
    model = load_model(model_config)
    peft_model = load_adapters(model, specs, model_config.name)
    names = [spec.name for spec in specs]
    new_name = "mix"
    while new_name in names:
        new_name += "_"
    mix_adapters(peft_model, names, weights, combination, new_name)
    readme = _mix_readme(model_config.name, specs, weights, combination, peft_model.peft_config[new_name].r)
    return save_adapter(peft_model, new_name, out_dir, tokenizer_from=specs[0].path, readme=readme)


def _mix_readme(base_name: str, specs: Sequence[AdapterSpec], weights: Sequence[float], combination: str,
                rank: int) -> str:
    rows = "\n".join(f"| {spec.name} | {spec.path} | {weight:g} |" for spec, weight in zip(specs, weights))
    return (f"# Mixed LoRA adapter\n\nBase model: {base_name}. Combination: {combination} (PEFT "
            f"add_weighted_adapter), rank {rank}. Tokenizer and chat template from {specs[0].path}.\n\n"
            f"| adapter | folder | weight |\n|---|---|---|\n{rows}\n")
