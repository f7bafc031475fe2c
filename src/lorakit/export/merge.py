"""Merge stage: `merge_adapter()` folds a LoRA adapter into its base model and writes one Hugging Face model folder.

The folder loads with plain `AutoModelForCausalLM.from_pretrained` (no PEFT) and prompts the way training did: the
tokenizer carries the training chat template, generation_config.json stops at its end-of-turn tokens and
lorakit.json keeps the template's options for chat, predict and serve. A merge check compares the merged model's
logits with base + adapter before anything is moved into place; merge_check.json keeps its figures.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorakit.config.export import MergeConfig
from lorakit.errors import ConfigError, LorakitError
from lorakit.export.merge_check import CHECK_PROMPTS, check_merge
from lorakit.files import atomic_dir, write_json, write_text
from lorakit.progress import ProgressTarget, track
from lorakit.runs import (Run, base_reference, check_same_base, model_card, open_run, read_json_dict,
                          write_settings)
from lorakit.templates import Template, install_template, resolve_template

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGE_CHECK_FILE = "merge_check.json"  # the merge check's figures, beside the merged weights
_PEFT_PREFIX = "base_model.model."
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class MergeReport:
    """What `merge_adapter` wrote: the folder, what was merged onto what, and the merge check's figures.

    `merged_onto` is "full" (the base's own weights), "4bit" or "8bit" (the dequantised quantised weights a QLoRA
    adapter was trained against) or "copied" (a full or freeze run, whose model folder is copied as it is; no check).
    `max_abs_diff` is the largest logit difference and `kl_divergence` the mean KL(base+adapter || merged) per
    token, in nats, over the check prompts.
    """

    output: Path
    base_model: str | None
    adapter: Path | None
    merged_onto: str
    max_abs_diff: float | None
    kl_divergence: float | None
    shards: int


@dataclass
class _ModuleUpdate:
    """An adapter's tensors for one base module, and the scale its LoRA product is multiplied by."""

    scale: float = 1.0
    lora_A: torch.Tensor | None = None
    lora_B: torch.Tensor | None = None
    lora_bias: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    embedding: bool = False


@dataclass
class _Adapter:
    """A PEFT LoRA adapter read into memory (adapters are small): per-module updates and whole replaced tensors."""

    updates: dict[str, _ModuleUpdate] = field(default_factory=dict)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    fan_in_fan_out: bool = False


@dataclass(frozen=True)
class _Entry:
    """One output tensor: its name, where its base value is read, and its shape and dtype once written."""

    name: str
    shard: Path
    source: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def merge_adapter(config: MergeConfig, progress: ProgressTarget = False) -> MergeReport:
    """Write base model + LoRA adapter (`config.source`) as one model folder at `config.output`.

    Works tensor by tensor and shard by shard, so memory holds one output shard and one model (for the check), never
    two. Everything is written to a temporary folder beside `config.output` and moved into place only after the
    merge check passes; on any error nothing is left at `config.output`. A full or freeze run's model is copied.
    Raises ConfigError for an existing output (unless `config.force`), a missing adapter file or an adapter of
    another base model, and LorakitError when the merge check fails or the output cannot be written.
    """
    if config.output.exists() and not config.force:
        raise ConfigError(f"{config.output} already exists. Choose another output, or set force=true to replace it.")
    run = open_run(config.source)
    if not run.is_adapter:
        return _copy_model(run, config)
    adapter_dir = run.weights_dir
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"Adapter folder {adapter_dir} has no {ADAPTER_WEIGHTS}. Point source at a complete adapter "
                          "(PEFT's save_pretrained writes it), or re-run the training.")
    base_name = config.base or run.require_base_model()
    base_dir = _base_folder(base_name)
    skeleton = _meta_model(base_dir)
    check_same_base(adapter_dir, skeleton, base_name)
    quantization = _quantization_to_replay(run, config)
    adapter = _read_adapter(adapter_dir)
    tokenizer, template = _tokenizer_and_template(run, base_dir)
    entries = _plan_entries(base_dir, skeleton, adapter, config.dtype)
    _check_adapter_fits(adapter, entries, base_dir)
    try:
        with atomic_dir(config.output) as tmp:
            shards = _write_weights(entries, skeleton, adapter, quantization, config, tmp, progress)
            _write_config(base_dir, any(entry.name != entry.source for entry in entries), config, tmp)
            _write_tokenizer_files(tokenizer, template, base_dir, tmp)
            write_settings(tmp, base_name, "merged", template)
            max_abs_diff, kl = check_merge(base_dir, adapter_dir, tmp, tokenizer, template, quantization, config)
            write_json(tmp / MERGE_CHECK_FILE, {"max_abs_diff": max_abs_diff, "kl_divergence": kl,
                                                "check_prompts": CHECK_PROMPTS, "tolerance": config.check_tolerance})
            write_text(tmp / "README.md", _card(run, base_name, template, quantization, max_abs_diff, kl))
    except OSError as err:
        raise _write_error(config.output, err) from err
    return MergeReport(config.output, base_name, adapter_dir, quantization or "full", max_abs_diff, kl, shards)


def _write_error(output: Path, err: OSError) -> LorakitError:
    if err.errno == errno.ENOSPC:
        return LorakitError(f"No space left on the device while writing {output}; nothing was left there. Free "
                            "some space or choose an output on another disk, then merge again.")
    return LorakitError(f"Could not write {output} ({err}); nothing was left there. Check the folder's permissions "
                        "and free space, then merge again.")


# --- what to merge ------------------------------------------------------------------------------------------------


def _base_folder(name: str) -> Path:
    """The base model's local folder: bundled names and folders as they are, hub ids from the local cache."""
    from lorakit.model import resolve_model_path

    path = Path(resolve_model_path(name))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                            "*.jinja"]))
    except Exception as err:  # the hub client raises many kinds: offline, unknown repo, gated
        raise ConfigError(f"Could not fetch base model '{name}' ({type(err).__name__}). Download it "
                          f"(`hf download {name} --local-dir DIR`) and set base to DIR.") from None


def _meta_model(base_dir: Path) -> PreTrainedModel:
    """The base model's module tree with no weights (meta device): names, Linear layers and tied embeddings."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    model.tie_weights()
    return model


def _quantization_to_replay(run: Run, config: MergeConfig) -> str | None:
    """"4bit"/"8bit" when a QLoRA adapter is merged onto the quantised weights it saw, else None."""
    trained = run.config
    quantization = trained.model.quantization if trained is not None else "none"
    if quantization == "none" or config.onto != "quantized":
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(f"The run was trained on a {quantization} base (QLoRA); merging onto the quantised weights "
                          "it saw needs bitsandbytes (`pip install bitsandbytes`), or set onto=full.") from None
    return quantization


def _read_adapter(adapter_dir: Path) -> _Adapter:
    """The adapter's tensors by base module, with PEFT's scale for each (rank_pattern, alpha_pattern, rsLoRA)."""
    from peft.utils.other import get_pattern_key
    from safetensors.torch import load_file

    settings = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if settings.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{adapter_dir} holds a {settings['peft_type']} adapter; lorakit merges LoRA adapters only.")
    for unsupported in ("trainable_token_indices", "layer_replication"):
        if settings.get(unsupported):
            raise ConfigError(f"{adapter_dir}/adapter_config.json sets {unsupported}, which lorakit's merge does not "
                              "handle. Merge it with PEFT's merge_and_unload instead.")
    adapter = _Adapter(fan_in_fan_out=bool(settings.get("fan_in_fan_out")))
    rank_pattern, alpha_pattern = settings.get("rank_pattern") or {}, settings.get("alpha_pattern") or {}
    for key, tensor in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        key = key.removeprefix(_PEFT_PREFIX)
        match = re.fullmatch(r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector(?:\.weight)?|"
                             r"lora_embedding_A|lora_embedding_B)", key)
        if match is None:
            # modules_to_save: the trained copy, under the base's name; with LoRA on embeddings PEFT also saves the
            # base embedding itself (as `base_layer`), which the LoRA update then applies to.
            adapter.replacements[key.replace(".base_layer.", ".")] = tensor
            continue
        module, part = match.groups()
        update = adapter.updates.setdefault(module, _ModuleUpdate())
        if part.startswith("lora_magnitude_vector"):
            update.magnitude = tensor
        elif part == "lora_B.bias":
            update.lora_bias = tensor
        else:
            update.embedding = part.startswith("lora_embedding")
            setattr(update, "lora_A" if part in ("lora_A.weight", "lora_embedding_A") else "lora_B", tensor)
    for module, update in adapter.updates.items():
        if update.lora_A is None or update.lora_B is None:
            raise ConfigError(f"{adapter_dir / ADAPTER_WEIGHTS} has lora_A or lora_B of {module} but not both; the "
                              "file is damaged. Re-save the adapter.")
        rank = update.lora_A.shape[0]
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), settings.get("lora_alpha", 8))
        expected_rank = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), settings.get("r", rank))
        if expected_rank != rank:
            raise ConfigError(f"{adapter_dir}: {module} has rank {rank} in {ADAPTER_WEIGHTS} but {expected_rank} in "
                              "adapter_config.json (r, rank_pattern). The two files come from different adapters.")
        update.scale = alpha / math.sqrt(rank) if settings.get("use_rslora") else alpha / rank
    return adapter


def _tokenizer_and_template(run: Run, base_dir: Path) -> tuple[PreTrainedTokenizerBase, Template]:
    """The adapter's tokenizer (the base's when it saved none) and the chat template the run was trained with."""
    from transformers import AutoTokenizer

    saved = run.weights_dir if (run.weights_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = AutoTokenizer.from_pretrained(str(saved))
    template = run.template(tokenizer) or resolve_template(None, tokenizer)
    install_template(tokenizer, template)
    return tokenizer, template


# --- weights ------------------------------------------------------------------------------------------------------

# Own tensor-by-tensor merge, not PEFT's merge_and_unload: that needs the whole model in memory (twice over while
# it is saved), while this streams the base's shards and holds one output shard at a time. merge_and_unload stays
# the reference the tests compare against.


def _write_weights(entries: list[_Entry], skeleton: PreTrainedModel, adapter: _Adapter, quantization: str | None,
                   config: MergeConfig, output: Path, progress: ProgressTarget) -> int:
    """Write the merged tensors as safetensors shards of at most `max_shard_size` (plus the index); return the count."""
    from safetensors import safe_open

    shards = _plan_shards(entries, _parse_size(config.max_shard_size))
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    quantized = _quantized_weights(skeleton, quantization) if quantization else set()
    with contextlib.ExitStack() as stack, track("merge", len(entries), progress, unit="tensor") as advance:
        handles: dict[Path, Any] = {}
        for name, shard in zip(names, shards):
            tensors = {}
            for entry in shard:
                if entry.shard not in handles:
                    handles[entry.shard] = stack.enter_context(safe_open(str(entry.shard), framework="pt"))
                base = handles[entry.shard].get_tensor(entry.source)
                if quantization and entry.name in quantized:
                    base = _replay_quantization(base, quantization)
                tensors[entry.name] = _merged_tensor(entry.name, base, adapter).to(entry.dtype).contiguous()
                advance(1)
            _save_shard(tensors, output / name)
            del tensors
    if len(shards) > 1:
        weight_map = {entry.name: name for name, shard in zip(names, shards) for entry in shard}
        write_json(output / "model.safetensors.index.json",
                   {"metadata": {"total_size": sum(entry.nbytes for entry in entries)}, "weight_map": weight_map})
    return len(shards)


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def _base_shards(base_dir: Path) -> dict[str, Path]:
    """Each base tensor's name -> the safetensors file holding it."""
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: base_dir / file for name, file in weight_map.items()}
    single = base_dir / "model.safetensors"
    if not single.is_file():
        raise ConfigError(f"Base model folder {base_dir} has no safetensors weights (model.safetensors or its index). "
                          "Re-save the base model with save_pretrained (safe_serialization) and set base to it.")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def _plan_entries(base_dir: Path, skeleton: PreTrainedModel, adapter: _Adapter, dtype: str) -> list[_Entry]:
    """Every output tensor in the base's order; a tied output embedding the adapter changes gets its own tensor."""
    from safetensors import safe_open

    entries = []
    by_file: dict[Path, list[str]] = {}
    for name, shard in _base_shards(base_dir).items():
        by_file.setdefault(shard, []).append(name)
    for shard, names in by_file.items():
        with safe_open(str(shard), framework="pt") as handle:
            for name in sorted(names):
                part = handle.get_slice(name)
                stored = _torch_dtype(part.get_dtype())
                target = _DTYPES[dtype] if dtype != "auto" and stored.is_floating_point else stored
                entries.append(_Entry(name, shard, name, tuple(part.get_shape()), target))
    untied = _untied_output_embedding(skeleton, adapter, {entry.name for entry in entries})
    if untied is not None:
        output_name, input_name = untied
        source = next(entry for entry in entries if entry.name == input_name)
        entries.append(_Entry(output_name, source.shard, source.source, source.shape, source.dtype))
    return entries


def _untied_output_embedding(skeleton: PreTrainedModel, adapter: _Adapter, stored: set[str]) -> tuple[str, str] | None:
    """(output, input) embedding weight names when the base ties them, stores one, and the adapter changes either.

    PEFT's unmerged model then computes with two different matrices, so the merged folder must store both.
    """
    output_module, input_module = skeleton.get_output_embeddings(), skeleton.get_input_embeddings()
    if output_module is None or output_module.weight is not input_module.weight:
        return None
    names = {id(module): name for name, module in skeleton.named_modules()}
    output_name, input_name = f"{names[id(output_module)]}.weight", f"{names[id(input_module)]}.weight"
    if output_name in stored or input_name not in stored:
        return None
    changed = {f"{module}.weight" for module in adapter.updates} | set(adapter.replacements)
    return (output_name, input_name) if changed & {output_name, input_name} else None


def _check_adapter_fits(adapter: _Adapter, entries: list[_Entry], base_dir: Path) -> None:
    shapes = {entry.name: entry.shape for entry in entries}
    for module in adapter.updates:
        if f"{module}.weight" not in shapes:
            raise ConfigError(f"The adapter changes {module}, which base model {base_dir} does not have. Merge it onto "
                              "the base model it was trained on (set base).")
    for name, tensor in adapter.replacements.items():
        if shapes.get(name) != tuple(tensor.shape):
            raise ConfigError(f"The adapter replaces {name} (modules_to_save, shape {tuple(tensor.shape)}), which base "
                              f"model {base_dir} does not have in that shape. Merge it onto the base model it was "
                              "trained on (set base).")


def _plan_shards(entries: list[_Entry], max_bytes: int) -> list[list[_Entry]]:
    """Consecutive entries packed into shards of at most `max_bytes` (a bigger tensor gets a shard of its own)."""
    shards: list[list[_Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def _parse_size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([A-Za-z]+)", text.strip()).groups()
    return int(float(number) * _SIZE_UNITS[unit.upper()])


def _torch_dtype(safetensors_dtype: str) -> torch.dtype:
    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
    return names[safetensors_dtype]


def _merged_tensor(name: str, base: torch.Tensor, adapter: _Adapter) -> torch.Tensor:
    """The base tensor `name` with the adapter applied, in float32 (other tensors pass through unchanged)."""
    base = adapter.replacements.get(name, base)
    module, _, kind = name.rpartition(".")
    update = adapter.updates.get(module)
    if update is None or kind not in ("weight", "bias"):
        return base
    if kind == "bias":
        return base.float() + update.scale * update.lora_bias.float() if update.lora_bias is not None else base
    return _merged_weight(base.float(), update, adapter.fan_in_fan_out)


def _merged_weight(weight: torch.Tensor, update: _ModuleUpdate, fan_in_fan_out: bool) -> torch.Tensor:
    """W + scale * B @ A; with DoRA, each output row rescaled to the trained magnitude (PEFT's merge formula)."""
    delta = update.scale * (update.lora_B.float() @ update.lora_A.float())
    if update.embedding:  # PEFT's embedding A is (rank, vocab) and B (dim, rank); DoRA's norm is per dim, over vocab
        merged = weight + delta.T
        if update.magnitude is None:
            return merged
        return (update.magnitude.float() / torch.linalg.norm(merged, dim=0)).view(1, -1) * merged
    if fan_in_fan_out:
        weight = weight.T
    merged = weight + delta
    if update.magnitude is not None:
        # PEFT: weight_norm = ||W + scale * B A|| over the input dimension (dim=1), one per output row.
        merged = (update.magnitude.float() / torch.linalg.norm(merged, dim=1)).view(-1, 1) * merged
    return merged.T if fan_in_fan_out else merged


def _quantized_weights(skeleton: PreTrainedModel, quantization: str) -> set[str]:
    """The weights bitsandbytes quantises when the base loads in 4/8-bit: Linear layers, as transformers picks them."""
    from transformers.quantizers.base import get_keys_to_not_convert

    kept = get_keys_to_not_convert(skeleton)
    return {f"{name}.weight" for name, module in skeleton.named_modules()
            if isinstance(module, torch.nn.Linear)
            and not any(name == key or name.endswith(f".{key}") or name.startswith(f"{key}.") for key in kept)}


def _replay_quantization(weight: torch.Tensor, quantization: str) -> torch.Tensor:
    """dequant(quant(W)) with the settings QLoRA training loads the base with (model.bitsandbytes_config)."""
    import bitsandbytes.functional as bnb

    from lorakit.model import bitsandbytes_config

    settings = bitsandbytes_config(quantization, torch.float32)
    weight = weight.float()
    if quantization == "4bit":
        packed, state = bnb.quantize_4bit(weight, quant_type=settings.bnb_4bit_quant_type,
                                          compress_statistics=settings.bnb_4bit_use_double_quant)
        return bnb.dequantize_4bit(packed, state).float()
    rows, scales, _ = bnb.int8_vectorwise_quant(weight.half())
    return bnb.int8_vectorwise_dequant(rows, scales).float()


# --- the rest of the folder ---------------------------------------------------------------------------------------


def _write_config(base_dir: Path, untied: bool, config: MergeConfig, output: Path) -> None:
    """The base's config.json, untied where the adapter split the embeddings, with the stored dtype."""
    model_config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    model_config.pop("quantization_config", None)
    if untied:
        model_config["tie_word_embeddings"] = False
        if isinstance(model_config.get("text_config"), dict):
            model_config["text_config"]["tie_word_embeddings"] = False
    if config.dtype != "auto":
        model_config["dtype"] = config.dtype
        if "torch_dtype" in model_config:
            model_config["torch_dtype"] = config.dtype
    write_json(output / "config.json", model_config)


def _write_tokenizer_files(tokenizer: PreTrainedTokenizerBase, template: Template, base_dir: Path,
                           output: Path) -> None:
    """The tokenizer with the training template, and generation_config.json stopping at the template's turn end."""
    from transformers import GenerationConfig

    from lorakit.infer.generate import stop_token_ids

    tokenizer.save_pretrained(str(output))
    try:
        generation = GenerationConfig.from_pretrained(str(base_dir))
    except OSError:
        generation = GenerationConfig()
    eos = generation.eos_token_id
    known = [eos] if isinstance(eos, int) else list(eos or [])
    generation.eos_token_id = sorted(set(known) | set(stop_token_ids(tokenizer, template)))
    if generation.pad_token_id is None and tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    generation.save_pretrained(str(output))


def _card(run: Run, base_name: str, template: Template, quantization: str | None, max_abs_diff: float,
          kl: float) -> str:
    """The run's model card, loaded as a plain model, with a section on the merge and its check."""
    base_ref = base_reference(base_name)
    trained = run.config
    adapter_name = run.folder.name if run.folder is not None else run.weights_dir.name
    onto = (f"the dequantised {quantization} weights the QLoRA adapter was trained against" if quantization
            else "the base model's full-precision weights")
    merge_section = [
        "## Merge",
        "",
        f"The LoRA adapter `{adapter_name}` is merged into `{base_ref}` (onto {onto}); this folder loads without PEFT.",
        "",
        f"- Base model: `{base_ref}`",
        f"- Adapter: `{adapter_name}`",
    ]
    if trained is not None:
        merge_section.append(f"- Data: {', '.join(trained.data.paths)}")
    merge_section += [
        f"- Merge check (base + adapter vs this folder, logits on {CHECK_PROMPTS} chat prompts): "
        f"max abs diff {max_abs_diff:.3g}, KL {kl:.3g} nats per token",
        "",
    ]
    if trained is not None:
        return model_card(trained, read_json_dict(run.folder / "metrics.json"),
                          read_json_dict(run.folder / "manifest.json"), template, merge_section=merge_section)
    load_section = [
        "## Load it",
        "",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("<this folder>")\n'
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")\n```\n',
        "The tokenizer carries the chat template used in training and generation_config.json stops at its end of "
        "turn: prompt with `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`.",
        "",
    ]
    return "\n".join([f"# {adapter_name} merged into {base_ref}", "", *merge_section, *load_section])


# --- full and freeze runs -----------------------------------------------------------------------------------------


def _copy_model(run: Run, config: MergeConfig) -> MergeReport:
    """A full or freeze run has nothing to merge: its model folder (weights, tokenizer, card) is copied as it is."""
    try:
        with atomic_dir(config.output) as tmp:
            shutil.copytree(run.weights_dir, tmp, dirs_exist_ok=True)
    except OSError as err:
        raise _write_error(config.output, err) from err
    shards = len(list(config.output.glob("*.safetensors")))
    return MergeReport(config.output, run.base_model, None, "copied", None, None, shards)


__all__ = ["MergeReport", "merge_adapter"]
