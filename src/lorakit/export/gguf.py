"""GGUF export: a run, adapter or model folder -> one file for llama.cpp, LM Studio and Ollama.

The conversion is llama.cpp's own: its `convert_hf_to_gguf.py` (f32/f16/bf16/q8_0 in one pass) and
`convert_lora_to_gguf.py` (an adapter on its own), run from the llama.cpp release that llama-cpp-python vendors, and
its quantizer (`llama_model_quantize`, through llama-cpp-python) for k-quants. lorakit writes no GGUF itself; it
decides what goes in: the model (an adapter is merged first), and the chat template the run was trained with, with
its rendering options baked in and without a leading BOS where the tokenizer adds one (no double BOS).

Where the converter scripts live: `$LORAKIT_LLAMA_CPP` (a llama.cpp checkout) or, as `make install-export` unpacks
them, `<venv>/share/lorakit/llama.cpp`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.config import GGUFConfig, MergeConfig
from lorakit.config.export import GGUF_DIRECT_TYPES
from lorakit.errors import ConfigError, LorakitError
from lorakit.files import write_json
from lorakit.progress import ProgressTarget

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lorakit.templates import Template

LLAMA_CPP_ENV = "LORAKIT_LLAMA_CPP"
REPORT_SUFFIX = ".json"  # the report beside `model.gguf` is `model.gguf.json`


@dataclass(frozen=True)
class GGUFExport:
    """What `export_gguf` wrote and what it checked; also saved as JSON beside the file."""

    path: Path
    outtype: str
    adapter_only: bool
    base_model: str | None
    template: str | None
    bos_stripped_from_template: bool
    context_length: int | None
    merged_onto: str | None
    perplexity: dict[str, float] | None
    perplexity_data: str | None
    # The merge check of an adapter merged for the export: max abs logit diff and KL per token (see merge.py).
    merge_check: dict[str, float] | None = None

    @property
    def report_path(self) -> Path:
        return self.path.with_name(self.path.name + REPORT_SUFFIX)


@dataclass(frozen=True)
class _Source:
    """What is being exported: a Hugging Face model folder, or an adapter with its base; and how it is prompted."""

    model_dir: Path | None
    adapter_dir: Path | None
    base_model: str | None
    template: Template | None
    is_quantized_run: bool


def export_gguf(config: GGUFConfig, progress: ProgressTarget = True) -> GGUFExport:
    """Write `config.output` (a .gguf file) from `config.source`; return what was written and measured.

    The file appears only when everything succeeded: the work happens in a temporary folder beside it. An
    existing output is refused unless `config.force`. Raises ConfigError for a source that is not a model, an
    adapter or a run, an outtype or architecture llama.cpp cannot write, or missing export tools.
    """
    output = config.output
    _refuse_existing(output, config.force)
    source = _open_source(config)
    with _work_dir(output) as work:
        if config.adapter_only:
            written, merged_onto, model_dir, stripped = _write_adapter_gguf(config, source, work), None, None, False
            merge_check = None
        else:
            model_dir, merged_onto, merge_check = _model_folder(config, source, work, progress)
            written, stripped = _write_model_gguf(config, model_dir, source.template, work)
        context_length = _context_length(model_dir or _base_dir(source))
        perplexity = None
        if config.outtype not in ("f32", "f16", "bf16") and not config.adapter_only:
            perplexity = _quantisation_cost(config, model_dir, written, work, source.template, progress)
        result = GGUFExport(path=output, outtype=config.outtype, adapter_only=config.adapter_only,
                            base_model=source.base_model, template=source.template.name if source.template else None,
                            bos_stripped_from_template=stripped, context_length=context_length,
                            merged_onto=merged_onto, perplexity=perplexity,
                            perplexity_data=str(config.perplexity_data) if perplexity and config.perplexity_data
                            else ("the run's data" if perplexity else None), merge_check=merge_check)
        write_json(work / (output.name + REPORT_SUFFIX), {**asdict(result), "path": output.name})
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / (output.name + REPORT_SUFFIX), result.report_path)
        os.replace(written, output)  # last: a .gguf at the output path means the export finished
    return result


# --- sources ------------------------------------------------------------------------------------------------------


def _refuse_existing(output: Path, force: bool) -> None:
    if output.suffix != ".gguf":
        raise ConfigError(f"output must be a .gguf file name, got '{output}'.")
    if output.is_dir():
        raise ConfigError(f"output {output} is a folder; give the .gguf file to write, e.g. {output / 'model.gguf'}.")
    if output.exists() and not force:
        raise ConfigError(f"{output} already exists. Choose another output, or set force=true to replace it.")


def _open_source(config: GGUFConfig) -> _Source:
    from lorakit.runs import open_run

    path = config.source
    if not path.exists():
        raise ConfigError(f"source {path} does not exist: give a run folder, an adapter folder or a model folder.")
    run = open_run(path)
    if not run.is_adapter:
        return _Source(run.weights_dir, None, run.base_model, _saved_template(run.weights_dir), False)
    base = config.base or run.require_base_model()
    quantized = bool(run.config and run.config.model.quantization != "none")
    return _Source(None, run.weights_dir, base, _saved_template(run.weights_dir), quantized)


def _saved_template(folder: Path) -> Template | None:
    """The template a run was trained with, with its options; None for a folder lorakit did not make."""
    from transformers import AutoTokenizer

    from lorakit.runs import open_run

    if not (folder / "tokenizer_config.json").is_file():
        return None
    return open_run(folder).template(AutoTokenizer.from_pretrained(str(folder)))


def _base_dir(source: _Source) -> Path:
    from lorakit.model import resolve_model_path

    return Path(resolve_model_path(source.base_model)) if source.base_model else source.adapter_dir


def _model_folder(config: GGUFConfig, source: _Source, work: Path,
                  progress: ProgressTarget) -> tuple[Path, str | None, dict[str, float] | None]:
    """The Hugging Face folder to convert: the source itself, or base + adapter merged into `work`; what it was
    merged onto and the merge check's figures."""
    if source.model_dir is not None:
        return source.model_dir, None, None
    from lorakit.export.merge import merge_adapter

    report = merge_adapter(MergeConfig(source=config.source, output=work / "merged", base=config.base,
                                       onto=config.onto, force=True), progress=progress)
    check = {"max_abs_diff": report.max_abs_diff, "kl_divergence": report.kl_divergence} \
        if report.max_abs_diff is not None else None
    return report.output, report.merged_onto, check


@contextmanager
def _work_dir(output: Path) -> Iterator[Path]:
    """A temporary folder beside `output` (same file system, so the final move is a rename), always removed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- converting ---------------------------------------------------------------------------------------------------


def converter_dir() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py, or ConfigError saying how to get it."""
    candidates = [Path(os.environ[LLAMA_CPP_ENV]).expanduser()] if os.environ.get(LLAMA_CPP_ENV) else []
    candidates.append(Path(sys.prefix) / "share" / "lorakit" / "llama.cpp")
    for folder in candidates:
        if (folder / "convert_hf_to_gguf.py").is_file():
            return folder
    raise ConfigError(f"llama.cpp's converter (convert_hf_to_gguf.py) was not found in {' or '.join(map(str, candidates))}"
                      f". Run `make install-export` in the lorakit checkout, or set {LLAMA_CPP_ENV} to a llama.cpp "
                      "checkout (git clone https://github.com/ggml-org/llama.cpp) whose gguf-py matches the installed "
                      "`gguf` package.")


def _write_model_gguf(config: GGUFConfig, model_dir: Path, template: Template | None,
                      work: Path) -> tuple[Path, bool]:
    """Convert with llama.cpp's converter (one pass for f32/f16/bf16/q8_0), then quantise for the k-quants.

    Also says whether the template's leading BOS was left out (see `standalone_jinja`)."""
    staged, stripped = _stage_with_template(model_dir, template, work / "staged")
    direct = config.outtype if config.outtype in GGUF_DIRECT_TYPES else "f16"
    converted = work / f"model.{direct}.gguf"
    _run_converter("convert_hf_to_gguf.py", [str(staged), "--outfile", str(converted), "--outtype", direct,
                                             "--model-name", _model_name(config)])
    if config.outtype in GGUF_DIRECT_TYPES:
        return converted, stripped
    quantized = work / f"model.{config.outtype}.gguf"
    quantize(converted, quantized, config.outtype)
    return quantized, stripped


def _model_name(config: GGUFConfig) -> str:
    """general.name in the GGUF: the run's folder name, not the staging folder's."""
    source = config.source.resolve()
    return source.parent.name if source.name in ("adapter", "model") else source.name


def _write_adapter_gguf(config: GGUFConfig, source: _Source, work: Path) -> Path:
    """llama.cpp's LoRA GGUF of the adapter, for runtimes that load it onto a base GGUF (`--lora`, Ollama ADAPTER)."""
    if source.adapter_dir is None:
        raise ConfigError(f"adapter_only needs an adapter or a LoRA run; {config.source} is a whole model. Export it "
                          "without adapter_only.")
    _require_adapter_weights(source.adapter_dir)
    written = work / "adapter.gguf"
    _run_converter("convert_lora_to_gguf.py", ["--base", str(_base_dir(source)), "--outfile", str(written),
                                               "--outtype", config.outtype, str(source.adapter_dir)])
    return written


def _require_adapter_weights(adapter_dir: Path) -> None:
    if not any((adapter_dir / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ConfigError(f"{adapter_dir} has adapter_config.json but no adapter_model.safetensors: the adapter's "
                          "weights are missing. Copy the whole adapter folder, or train the run again.")


def _run_converter(script: str, arguments: list[str]) -> None:
    """Run one of llama.cpp's converter scripts in its own process; its errors become LorakitErrors."""
    path = converter_dir() / script
    # The scripts put their own gguf-py first on the path: it is newer than the `gguf` release of the same number.
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    env.pop("NO_LOCAL_GGUF", None)
    finished = subprocess.run([sys.executable, str(path), *arguments], capture_output=True, text=True, env=env)
    if finished.returncode == 0:
        return
    log = finished.stderr + finished.stdout
    unknown = re.search(r"Model (\S+) is not supported", log)
    if unknown:
        raise ConfigError(f"llama.cpp's converter does not know the architecture {unknown.group(1)}, so it cannot "
                          "become a GGUF. Check llama.cpp's supported models, or export a merged model folder "
                          "(`lorakit merge`) for runtimes that read Hugging Face folders (transformers, vLLM).")
    tail = "\n".join(line for line in log.strip().splitlines()[-8:])
    raise LorakitError(f"llama.cpp's {script} failed (exit status {finished.returncode}); its last lines:\n{tail}")


def quantize(source: Path, target: Path, outtype: str) -> None:
    """llama.cpp's quantizer, from llama-cpp-python: an f16/f32 GGUF -> `outtype` (q4_k_m, q6_k, ...)."""
    llama_cpp = _import_llama_cpp("quantise to " + outtype)
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}", None)
    if ftype is None:
        raise ConfigError(f"This llama.cpp build has no quantisation type '{outtype}'.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), llama_cpp.byref(params)) != 0:
        raise LorakitError(f"llama.cpp could not quantise {source.name} to {outtype} (see its log above).")


def _import_llama_cpp(purpose: str) -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError(f"To {purpose}, lorakit needs llama-cpp-python: run `make install-export`, or "
                          "`pip install llama-cpp-python` (it compiles llama.cpp; CMake and a C++ compiler are "
                          "needed).") from None
    return llama_cpp


# --- the chat template inside the GGUF ----------------------------------------------------------------------------

# Templates that open with the BOS token: `{{ bos_token }}` as their first output.
_LEADING_BOS = re.compile(r"^((?:\{%-?[^%]*?-?%\}\s*)*)\{\{-?\s*bos_token\s*-?\}\}")


def standalone_jinja(template: Template, tokenizer: PreTrainedTokenizerBase) -> tuple[str, bool]:
    """The template's Jinja for consumers that know nothing of lorakit, and whether a leading BOS was removed.

    The run's rendering options are baked in (its system prompt when a conversation has none, its thinking
    setting as the default of `enable_thinking`). Where the tokenizer adds BOS itself (llama.cpp's
    `add_bos_token`), the template's leading `{{ bos_token }}` is removed, so the prompt holds one BOS, not two.
    """
    jinja = template.jinja
    stripped = False
    if getattr(tokenizer, "add_bos_token", False) or _adds_bos(tokenizer):
        jinja, count = _LEADING_BOS.subn(r"\1", jinja.lstrip(), count=1)
        stripped = count == 1 and "bos_token" not in jinja
        if not stripped:
            jinja = template.jinja
    prelude = []
    if template.thinking is not None:
        prelude.append("{%- if enable_thinking is not defined %}{%- set enable_thinking = "
                       f"{'true' if template.thinking else 'false'} %}}{{%- endif %}}")
    if template.system is not None:
        prelude.append("{%- if not messages or messages[0]['role'] != 'system' %}{%- set messages = "
                       f"[{{'role': 'system', 'content': {json.dumps(template.system, ensure_ascii=False)}}}] + messages"
                       " %}{%- endif %}")
    return "\n".join([*prelude, jinja]), stripped


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _stage_with_template(model_dir: Path, template: Template | None, staged: Path) -> tuple[Path, bool]:
    """A folder of links to `model_dir`'s files whose tokenizer carries the standalone template, for the converter."""
    from transformers import AutoTokenizer

    staged.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.is_file():
            (staged / item.name).symlink_to(item.resolve())
    if template is None:
        return staged, False
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    jinja, stripped = standalone_jinja(template, tokenizer)
    config_path = staged / "tokenizer_config.json"
    settings = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    settings["chat_template"] = jinja  # the converter prefers this key over chat_template.jinja
    config_path.unlink(missing_ok=True)
    config_path.write_text(json.dumps(settings, ensure_ascii=False, indent=2), encoding="utf-8")
    return staged, stripped


def read_metadata(gguf: Path) -> dict[str, Any]:
    """The GGUF's key-value metadata (strings, numbers, booleans; arrays left out), read with the `gguf` package."""
    from gguf import GGUFReader, GGUFValueType

    values: dict[str, Any] = {}
    for name, field in GGUFReader(str(gguf)).fields.items():
        if not field.types or field.types[0] == GGUFValueType.ARRAY:
            continue
        part = field.parts[field.data[0]]
        values[name] = bytes(part).decode("utf-8") if field.types[0] == GGUFValueType.STRING else part.tolist()[0]
    return values


def _context_length(model_dir: Path | None) -> int | None:
    if model_dir is None or not (model_dir / "config.json").is_file():
        return None
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    return config.get("max_position_embeddings")


# --- what quantisation cost ---------------------------------------------------------------------------------------


def _quantisation_cost(config: GGUFConfig, model_dir: Path, quantized: Path, work: Path, template: Template | None,
                       progress: ProgressTarget) -> dict[str, float] | None:
    """Perplexity on held-out text of the HF model, its f16 GGUF and the quantised GGUF, on the same token ids."""
    features = _held_out_features(config, model_dir, template)
    if not features:
        return None
    f16 = work / "model.f16.gguf"
    if not f16.exists():  # q8_0 is converted in one pass: the f16 to compare with is made for the purpose
        (work / "reference").mkdir()
        f16, _ = _write_model_gguf(replace(config, outtype="f16"), model_dir, template, work / "reference")
    results = {"hf": _hf_perplexity(model_dir, features, progress), "gguf_f16": gguf_perplexity(f16, features),
               f"gguf_{config.outtype}": gguf_perplexity(quantized, features)}
    return results


def _held_out_features(config: GGUFConfig, model_dir: Path, template: Template | None) -> list[dict[str, list[int]]]:
    """Token ids and labels of the held-out records, tokenised and masked as in training."""
    from transformers import AutoTokenizer

    from lorakit.config import DataConfig
    from lorakit.data.load import load_conversations, split_validation
    from lorakit.data.tokenize import tokenize_conversations
    from lorakit.runs import saved_config
    from lorakit.templates import resolve_template

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    run_config = saved_config(config.source) if config.source.is_dir() else None
    if config.perplexity_data is not None:
        data = DataConfig(paths=(str(config.perplexity_data),), max_samples=config.perplexity_records)
        conversations, _ = load_conversations(data)
    elif run_config is not None:
        data = run_config.data
        conversations, _ = load_conversations(data)
        if data.val_size:
            conversations = split_validation(conversations, data.val_size, run_config.seed).validation
        conversations = conversations[-config.perplexity_records:]
    else:
        return []
    template = template or resolve_template(None, tokenizer)
    dataset, _ = tokenize_conversations(conversations[:config.perplexity_records], tokenizer, template,
                                        replace(data, max_seq_len=min(data.max_seq_len, 1024)))
    return [{"input_ids": ids, "labels": labels} for ids, labels in zip(dataset["input_ids"], dataset["labels"])]


def _hf_perplexity(model_dir: Path, features: list[dict[str, list[int]]], progress: ProgressTarget) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.eval.perplexity import summed_loss

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    total, count = summed_loss(model, AutoTokenizer.from_pretrained(str(model_dir)), features, 4, progress)
    return math.exp(total / count)


def gguf_perplexity(gguf: Path, features: list[dict[str, list[int]]]) -> float:
    """exp(mean NLL) of the supervised tokens of `features`, scored by llama.cpp on exactly these token ids."""
    import numpy as np

    llm = load_gguf(gguf, n_ctx=max(len(f["input_ids"]) for f in features) + 8, logits_all=True)
    total, count = 0.0, 0
    for feature in features:
        ids, labels = feature["input_ids"], feature["labels"]
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        for position in range(1, len(ids)):
            if labels[position] != -100:
                total -= log_probs[position - 1, ids[position]]
                count += 1
    llm.close()
    return math.exp(total / count)


@contextmanager
def _without_weight_repacking(llama_cpp: Any) -> Iterator[None]:
    """Models loaded inside skip llama.cpp's repacked weight buffers (its AMX and AArch64 CPU kernels).

    With them, llama-cpp-python 0.3.36 built on an Intel Xeon with AMX crashed (segmentation fault) scoring a Q4_K_M
    GGUF; with the plain CPU kernels the GGUF tests' perplexity and logit checks pass. `Llama` takes no argument for
    it and reads the binding's default model parameters, so those are swapped while the model loads, then restored.
    """
    bindings = llama_cpp.llama_cpp
    defaults = bindings.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params
    bindings.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        bindings.llama_model_default_params = defaults


def load_gguf(gguf: Path, n_ctx: int = 2048, logits_all: bool = False, lora_path: Path | None = None,
              float32_cache: bool = False) -> Any:
    """A llama-cpp-python `Llama` on `gguf` (CPU, quiet), optionally with a LoRA GGUF applied.

    llama.cpp keeps keys and values in f16 by default; `float32_cache` keeps them in f32, for comparing a GGUF's
    logits with the float32 model it came from.
    """
    llama_cpp = _import_llama_cpp("load a GGUF")
    cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if float32_cache else {}
    with _without_weight_repacking(llama_cpp):
        return llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, logits_all=logits_all, verbose=False,
                               n_gpu_layers=0, lora_path=str(lora_path) if lora_path else None, seed=0,
                               n_threads=os.cpu_count() or 1, **cache)
