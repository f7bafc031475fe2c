"""`lorakit merge SOURCE -o DIR`: base model + LoRA adapter -> one model folder that loads without PEFT."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lorakit.cli.app import app, console

if TYPE_CHECKING:
    from lorakit.config.export import MergeConfig

_ONTO = {"full": "the base's full-precision weights",
         "4bit": "the dequantised 4-bit weights the QLoRA adapter was trained against",
         "8bit": "the dequantised 8-bit weights the QLoRA adapter was trained against",
         "copied": "nothing (a full or freeze run: its model folder was copied as it is)"}


@app.command()
def merge(source: Annotated[Path, typer.Argument(help="A run folder or an adapter folder.")],
          output: Annotated[Path, typer.Option("--output", "-o", help="The merged model folder to write.")],
          base: Annotated[Optional[str], typer.Option(
              "--base", help="Base model (bundled name, folder or hub id); default: the adapter's own.")] = None,
          onto: Annotated[str, typer.Option(
              help="QLoRA runs only: merge onto the dequantised 'quantized' weights the adapter saw, or the "
                   "'full' original ones.")] = "quantized",
          dtype: Annotated[str, typer.Option(help="auto (the base's), float32, bfloat16 or float16.")] = "auto",
          max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest weights file, e.g. 2GB.")]
          = "2GB",
          device: Annotated[str, typer.Option(help="Where the merge check runs: cpu, cuda or auto.")] = "cpu",
          force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False):
    """Merge a LoRA adapter into its base model; a logit check against base + adapter guards the result."""
    from lorakit.config.export import MergeConfig
    from lorakit.export.merge import merge_adapter

    config = MergeConfig(source=source, output=output, base=base, onto=onto, dtype=dtype,
                         max_shard_size=max_shard_size, device=device, force=force)
    report = merge_adapter(config, progress=True)
    check = "" if report.max_abs_diff is None else (
        f" Merge check against base + adapter: max abs logit diff {report.max_abs_diff:.3g}, KL "
        f"{report.kl_divergence:.3g} nats per token.")
    console.print(f"Wrote {report.output} ({report.shards} weights file{'s' if report.shards != 1 else ''}), "
                  f"merged onto {_ONTO[report.merged_onto]}.{check} Load it with "
                  "AutoModelForCausalLM.from_pretrained, or `lorakit chat --model` it.",
                  highlight=False, markup=False, soft_wrap=True)


def merge_options(config: MergeConfig) -> list[str]:
    """The options of `lorakit merge SOURCE` that make `config` (the web UI starts that command as a job)."""
    options = ["--output", str(config.output), "--onto", config.onto, "--dtype", config.dtype, "--max-shard-size",
               config.max_shard_size, "--device", config.device]
    return options + (["--base", config.base] if config.base else []) + (["--force"] if config.force else [])
