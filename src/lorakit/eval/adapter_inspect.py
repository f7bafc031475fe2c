"""Adapter inspection: `inspect_adapter()` shows where a LoRA adapter changed the model, without the base model.

For each adapted module it measures the update ΔW = scaling · B·A: its Frobenius and spectral norms, its singular
values and two effective ranks. It reads adapter_model.safetensors and adapter_config.json directly, so a 7B
adapter is inspected in seconds on a laptop.

The singular values come from the r x r core, not from ΔW: with A^T = Q_a R_a and B = Q_b R_b (thin QR),
B·A = Q_b (R_b R_a^T) Q_a^T, and Q_b, Q_a have orthonormal columns, so ΔW has the singular values of R_b R_a^T.
That costs O((in + out) r²) per module instead of building a 4096 x 14336 matrix hundreds of times, and is exact.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.errors import ConfigError
from lorakit.files import save_figure, write_json, write_text
from lorakit.runs import find_adapter_dir, open_run

ENERGY_SHARE = 0.9
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# `<module>.lora_A.weight`, `<module>.lora_A.default.weight`, `<module>.lora_embedding_A[.default]`,
# `<module>.lora_magnitude_vector[.default][.weight]` (DoRA).
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                       r"lora_magnitude_vector)(?:\.(?!weight$|bias$)(?P<adapter>[^.]+))?(?:\.(?P<leaf>weight|bias))?$")
_LAYER = re.compile(r"\.(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class ModuleUpdate:
    """The update one LoRA pair adds to one weight matrix; norms include the scaling."""

    name: str  # module path in the base model, e.g. model.layers.3.self_attn.q_proj
    layer: int | None  # decoder layer index; None for embeddings, lm_head and other top-level modules
    kind: str  # what the module is within its layer: self_attn.q_proj, mlp.down_proj, embed_tokens, lm_head
    rank: int
    scaling: float
    shape: tuple[int, int]  # (out_features, in_features) of ΔW; (vocab, hidden) for an embedding
    frobenius_norm: float
    spectral_norm: float
    singular_values: tuple[float, ...]  # of scaling · B·A, largest first; at most `rank` of them
    effective_rank: float  # exp(entropy of s / sum(s)), Roy & Vetterli 2007; 0 for an all-zero update
    energy_rank: int  # fewest singular values holding ENERGY_SHARE of sum(s²)
    dora: bool  # a DoRA magnitude vector rescales this module too; the norms here are of the LoRA part only


@dataclass(frozen=True)
class AdapterReport:
    """What `inspect_adapter` found: per-module updates, fully saved weights, and notes for the reader."""

    adapter_dir: Path
    base_model: str | None
    rank: int
    alpha: float
    use_rslora: bool
    use_dora: bool
    modules: tuple[ModuleUpdate, ...]
    saved_weights: tuple[tuple[str, tuple[int, ...]], ...]  # modules_to_save, resized embeddings: name, shape
    lora_parameters: int
    notes: tuple[str, ...]

    def layer_totals(self) -> dict[int, float]:
        """Per decoder layer, the Frobenius norm of all its updates together: sqrt(sum of squared norms)."""
        squares: dict[int, float] = defaultdict(float)
        for module in self.modules:
            if module.layer is not None:
                squares[module.layer] += module.frobenius_norm ** 2
        return {layer: math.sqrt(total) for layer, total in sorted(squares.items())}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        data["layer_totals"] = {str(layer): norm for layer, norm in self.layer_totals().items()}
        return data


def inspect_adapter(adapter_dir: Path, output_dir: Path | None = None, top: int = 20) -> AdapterReport:
    """Measure every LoRA update in the adapter at `adapter_dir`; no base model is loaded.

    With `output_dir`, writes inspect.json (everything), inspect.md (the `top` modules by norm, per-layer totals)
    and update_norms.png (a layers x module-types heatmap of Frobenius norms). Raises ConfigError for a folder
    that is not a LoRA adapter. A lorakit output folder holding `adapter/` is accepted too.
    """
    adapter_dir = find_adapter_dir(Path(adapter_dir))
    config = _read_config(adapter_dir)
    tensors = _read_weights(adapter_dir)
    rank, alpha = int(config.get("r") or 8), float(config.get("lora_alpha") or 8)
    use_rslora, use_dora = bool(config.get("use_rslora")), bool(config.get("use_dora"))
    pairs, saved, notes = _group_keys(tensors)
    if not pairs:
        raise ConfigError(f"{adapter_dir}: no LoRA weights (lora_A/lora_B) in its adapter file. Was it saved by "
                          "PEFT's save_pretrained, and is it a LoRA adapter?")
    modules = []
    for name, parts in sorted(pairs.items(), key=lambda item: _module_order(item[0])):
        if "A" not in parts or "B" not in parts:
            notes.append(f"{name}: has only lora_{'A' if 'A' in parts else 'B'}, skipped.")
            continue
        module_alpha = _pattern_value(config.get("alpha_pattern") or {}, name, alpha)
        modules.append(_measure(name, parts, module_alpha, use_rslora, "magnitude" in parts))
    if use_dora:
        notes.append("DoRA adapter: each module also has a learned magnitude vector that rescales the columns of "
                     "W + ΔW; the norms here measure the low-rank direction update ΔW only.")
    if any(module.frobenius_norm == 0 for module in modules):
        notes.append("Some updates are exactly zero (lora_B still at its zero initialisation): untrained modules.")
    lora_parameters = sum(tensor.numel() for key, tensor in tensors.items() if _LORA_KEY.match(key))
    report = AdapterReport(adapter_dir=adapter_dir, base_model=open_run(adapter_dir).base_model, rank=rank,
                           alpha=alpha, use_rslora=use_rslora, use_dora=use_dora, modules=tuple(modules),
                           saved_weights=tuple(saved), lora_parameters=lora_parameters, notes=tuple(notes))
    if output_dir is not None:
        _write_outputs(report, Path(output_dir), top)
    return report


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling of B·A: alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp(H(p)) with p = s / sum(s) (Roy & Vetterli 2007): 1 for a rank-1 matrix, r for r equal values."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(singular_values: torch.Tensor, share: float = ENERGY_SHARE) -> int:
    """The fewest largest singular values whose squares hold `share` of the total sum of squares."""
    energy = singular_values.square()
    total = energy.sum()
    if total <= 0:
        return 0
    cumulative = energy.cumsum(0) / total
    return int((cumulative < share - 1e-12).sum()) + 1


def update_singular_values(lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """Singular values of B·A (A: r x in, B: out x r) from its r x r core, largest first, in float64."""
    _, r_a = torch.linalg.qr(lora_a.double().T)
    _, r_b = torch.linalg.qr(lora_b.double())
    return torch.linalg.svdvals(r_b @ r_a.T)


def _measure(name: str, parts: dict[str, torch.Tensor], alpha: float, use_rslora: bool,
             dora: bool) -> ModuleUpdate:
    lora_a, lora_b = parts["A"], parts["B"]
    rank = lora_a.shape[0]
    scaling = lora_scaling(alpha, rank, use_rslora)
    values = update_singular_values(lora_a, lora_b) * scaling
    shape = (lora_b.shape[0], lora_a.shape[1])
    if parts.get("embedding") is not None:
        shape = (lora_a.shape[1], lora_b.shape[0])  # PEFT adds (B·A)^T to the (vocab, hidden) embedding table
    layer, kind = _layer_and_kind(name)
    return ModuleUpdate(name=name, layer=layer, kind=kind, rank=rank, scaling=scaling, shape=shape,
                        frobenius_norm=float(values.square().sum().sqrt()),
                        spectral_norm=float(values[0]) if len(values) else 0.0,
                        singular_values=tuple(float(v) for v in values), effective_rank=effective_rank(values),
                        energy_rank=energy_rank(values), dora=dora)


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}). Re-save the adapter with save_pretrained.") from None
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ConfigError(f"{path}: peft_type is {peft_type}; `lorakit inspect` reads LoRA adapters only.")
    return config


def _read_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    for name in _WEIGHT_FILES:
        path = adapter_dir / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    raise ConfigError(f"{adapter_dir} has adapter_config.json but no weights ({' or '.join(_WEIGHT_FILES)}). "
                      "Copy the whole adapter folder, or save it again with save_pretrained.")


def _group_keys(tensors: dict[str, torch.Tensor]):
    """LoRA tensors grouped by module ({'A', 'B', 'magnitude'}), plus the fully saved weights and notes."""
    pairs: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    saved: list[tuple[str, tuple[int, ...]]] = []
    adapters: set[str] = set()
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key)
        if match is None:
            saved.append((key.removeprefix("base_model.model."), tuple(tensor.shape)))
            continue
        if match["leaf"] == "bias":
            continue  # lora_bias: a bias on lora_B, not part of the low-rank matrix
        adapter = match["adapter"] or "default"
        adapters.add(adapter)
        module = match["module"].removeprefix("base_model.model.")
        module = module if adapter == "default" else f"{module} [{adapter}]"
        part = match["part"]
        if part == "lora_magnitude_vector":
            pairs[module]["magnitude"] = tensor
        elif part.startswith("lora_embedding_"):
            pairs[module][part[-1]] = tensor
            pairs[module]["embedding"] = tensor
        else:
            pairs[module][part[-1]] = tensor
    notes = []
    if len(adapters) > 1:
        notes.append(f"The file holds several adapters ({', '.join(sorted(adapters))}); each update is listed "
                     "with its adapter's name in brackets, except the default one.")
    if saved:
        notes.append(f"{len(saved)} weights are saved whole (modules_to_save or resized embeddings): "
                     "they replace the base weights rather than add a low-rank update.")
    with_lora = {name: parts for name, parts in pairs.items() if parts.keys() != {"magnitude"}}
    return with_lora, saved, notes


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """PEFT's alpha_pattern: a key matches a module whose name ends with it (as a regex, at a dot boundary)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(value)
    return default


def _layer_and_kind(name: str) -> tuple[int | None, str]:
    match = _LAYER.search(name)
    if match:
        return int(match[1]), match[2]
    return None, name.rsplit(".", 1)[-1]


def _module_order(name: str) -> tuple[int, str]:
    layer, kind = _layer_and_kind(name)
    return (-1 if layer is None else layer, kind)


def format_adapter_report(report: AdapterReport, top: int = 10):
    """A rich renderable for the terminal: settings, the `top` modules by update norm, per-layer totals, notes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    scaling = "alpha/sqrt(r)" if report.use_rslora else "alpha/r"
    header = (f"{report.adapter_dir}  base: {report.base_model or 'unknown'}  r={report.rank} "
              f"alpha={report.alpha:g} scaling={scaling}{'  DoRA' if report.use_dora else ''}  "
              f"{len(report.modules)} modules, {report.lora_parameters:,} LoRA parameters")
    table = Table(title=f"Largest updates (top {min(top, len(report.modules))} by Frobenius norm)")
    for column in ("module", "layer", "‖ΔW‖_F", "‖ΔW‖_2", "eff. rank", f"rank@{ENERGY_SHARE:.0%}"):
        table.add_column(column, justify="left" if column == "module" else "right", overflow="fold")
    for module in _top_modules(report, top):
        table.add_row(module.name, "-" if module.layer is None else str(module.layer), f"{module.frobenius_norm:.4g}",
                      f"{module.spectral_norm:.4g}", f"{module.effective_rank:.2f}",
                      f"{module.energy_rank}/{module.rank}")
    layers = Table(title="Per-layer total ‖ΔW‖_F")
    layers.add_column("layer", justify="right")
    layers.add_column("norm", justify="right")
    for layer, norm in report.layer_totals().items():
        layers.add_row(str(layer), f"{norm:.4g}")
    return Group(Text(header), table, layers, *[Text(f"note: {note}") for note in report.notes])


def _top_modules(report: AdapterReport, top: int) -> list[ModuleUpdate]:
    return sorted(report.modules, key=lambda module: module.frobenius_norm, reverse=True)[:top]


def _markdown(report: AdapterReport, top: int) -> str:
    scaling = "alpha/sqrt(r) (rsLoRA)" if report.use_rslora else "alpha/r"
    lines = [f"# Adapter inspection: {report.adapter_dir}", "",
             f"- base model: {report.base_model or 'unknown'}",
             f"- r = {report.rank}, alpha = {report.alpha:g}, scaling = {scaling}"
             + (", DoRA" if report.use_dora else ""),
             f"- {len(report.modules)} adapted modules, {report.lora_parameters:,} LoRA parameters",
             "- ‖ΔW‖ with ΔW = scaling · B·A; effective rank = exp(entropy of s/Σs); "
             f"rank@{ENERGY_SHARE:.0%} = singular values holding {ENERGY_SHARE:.0%} of Σs²", "",
             f"## Top {min(top, len(report.modules))} modules by ‖ΔW‖_F", "",
             f"| module | layer | shape | ‖ΔW‖_F | ‖ΔW‖_2 | effective rank | rank@{ENERGY_SHARE:.0%} |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for module in _top_modules(report, top):
        layer = "-" if module.layer is None else str(module.layer)
        lines.append(f"| {module.name} | {layer} | {module.shape[0]}x{module.shape[1]} | {module.frobenius_norm:.4g} "
                     f"| {module.spectral_norm:.4g} | {module.effective_rank:.2f} | "
                     f"{module.energy_rank}/{module.rank} |")
    lines += ["", "## Per-layer totals", "", "| layer | ‖ΔW‖_F (all modules) |", "|---:|---:|"]
    lines += [f"| {layer} | {norm:.4g} |" for layer, norm in report.layer_totals().items()]
    if report.saved_weights:
        lines += ["", "## Weights saved whole", "", "| weight | shape |", "|---|---|"]
        lines += [f"| {name} | {'x'.join(map(str, shape))} |" for name, shape in report.saved_weights]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def plot_update_norms(report: AdapterReport, path: Path) -> Path:
    """A heatmap of ‖ΔW‖_F, decoder layers down, module types across; top-level modules are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    in_layers = [module for module in report.modules if module.layer is not None]
    layers = sorted({module.layer for module in in_layers})
    kinds = sorted({module.kind for module in in_layers})
    grid = torch.full((max(len(layers), 1), max(len(kinds), 1)), float("nan"))
    for module in in_layers:
        grid[layers.index(module.layer), kinds.index(module.kind)] = module.frobenius_norm
    figure = Figure(figsize=(1.2 + 1.1 * max(len(kinds), 1), 1.5 + 0.28 * max(len(layers), 1)), dpi=100)
    FigureCanvasAgg(figure)  # Figure without pyplot: no global state, no display backend needed.
    axes = figure.add_subplot()
    image = axes.imshow(grid.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
    axes.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    axes.set_xlabel("module")
    axes.set_ylabel("layer")
    axes.set_title("‖ΔW‖_F per module" if in_layers else "no per-layer modules")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return save_figure(figure, path)


def _write_outputs(report: AdapterReport, output_dir: Path, top: int) -> None:
    write_json(output_dir / "inspect.json", report.to_dict())
    write_text(output_dir / "inspect.md", _markdown(report, top))
    plot_update_norms(report, output_dir / "update_norms.png")
