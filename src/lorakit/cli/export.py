"""`lorakit export gguf|ollama|hub`: a trained model as a GGUF file, an Ollama folder, or a Hub repository."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lorakit.cli.app import app, console

if TYPE_CHECKING:
    from lorakit.config import GGUFConfig, HubConfig, OllamaConfig

export_app = typer.Typer(help="Take a trained model out of lorakit: GGUF for llama.cpp, Ollama, the Hugging Face Hub.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


Source = Annotated[Path, typer.Argument(help="A run folder, an adapter folder, or a model folder (merged or full).")]
Base = Annotated[Optional[str], typer.Option("--base", help="Base model of the adapter, if not the one it was "
                                                            "trained on (its name, folder or hub id).")]
Onto = Annotated[str, typer.Option("--onto", help="QLoRA runs: merge onto the 'quantized' weights the adapter saw "
                                                  "(default) or the 'full' precision ones.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]


@export_app.command("gguf")
def gguf(source: Source,
         output: Annotated[Path, typer.Option("--output", "-o", help="The .gguf file to write.")],
         outtype: Annotated[str, typer.Option("--outtype", help="f32, f16, bf16, q8_0 (one pass) or a llama.cpp "
                                                                "quantisation: q4_k_m, q5_k_m, q6_k, q4_0, ...")]
         = "f16",
         adapter_only: Annotated[bool, typer.Option("--adapter-only", help="Write the adapter alone, as llama.cpp's "
                                                                           "LoRA GGUF.")] = False,
         base: Base = None, onto: Onto = "quantized",
         perplexity_data: Annotated[Optional[Path], typer.Option(
             "--perplexity-data", help="Held-out records to measure what quantisation cost (default: the run's "
                                       "validation split, else its last records).")] = None,
         force: Force = False):
    """Write a GGUF for llama.cpp, LM Studio or Ollama, with the training chat template inside."""
    from lorakit.config import GGUFConfig
    from lorakit.export.gguf import export_gguf

    result = export_gguf(GGUFConfig(source=source, output=output, outtype=outtype, adapter_only=adapter_only,
                                    base=base, onto=onto, perplexity_data=perplexity_data, force=force))
    what = "adapter-only LoRA GGUF" if result.adapter_only else f"{result.outtype} GGUF"
    template = result.template or "the tokenizer's own"
    console.print(f"[green]wrote[/] {escape(str(result.path))}: {what}, template {template}"
                  + (f", merged onto the {result.merged_onto} base weights" if result.merged_onto else "")
                  + (", the template's leading BOS left to the tokenizer" if result.bos_stripped_from_template else ""),
                  highlight=False)
    if result.perplexity:
        console.print("perplexity on held-out text: " + ", ".join(f"{name} {value:.3f}" for name, value
                                                                   in result.perplexity.items()), highlight=False)
    console.print(f"report: {escape(str(result.report_path))}", highlight=False)


@export_app.command("ollama")
def ollama(source: Source,
           output: Annotated[Path, typer.Option("--output", "-o", help="The folder to write (GGUF, Modelfile, "
                                                                       "README).")],
           quant: Annotated[str, typer.Option("--quant", help="GGUF type: q4_k_m, q5_k_m, q8_0, f16, ...")]
           = "q4_k_m",
           system: Annotated[Optional[str], typer.Option("--system", help="SYSTEM prompt (default: the one the run "
                                                                          "was trained with).")] = None,
           adapter_only: Annotated[bool, typer.Option("--adapter-only", help="Base GGUF + the adapter's LoRA GGUF "
                                                                             "(Modelfile ADAPTER).")] = False,
           name: Annotated[Optional[str], typer.Option("--name", help="The Ollama model name in the README.")]
           = None,
           base: Base = None, force: Force = False):
    """Write a folder for `ollama create`: the GGUF and a Modelfile with the training template and stop strings."""
    from lorakit.config import OllamaConfig
    from lorakit.export.ollama import export_ollama

    result = export_ollama(OllamaConfig(source=source, output=output, quant=quant, system=system,
                                        adapter_only=adapter_only, base=base, name=name, force=force))
    console.print(f"[green]wrote[/] {escape(str(result.folder))}: {result.model_gguf.name}"
                  + (f" + {result.adapter_gguf.name}" if result.adapter_gguf else "")
                  + f", Modelfile (num_ctx {result.context_length})", highlight=False)
    console.print(f"cd {escape(str(result.folder))} && ollama create {result.name} -f Modelfile && "
                  f"ollama run {result.name}", highlight=False, markup=False)


@export_app.command("hub")
def hub(source: Annotated[Path, typer.Argument(
            help="A run folder, an adapter or merged model folder, a .gguf file or a folder of GGUF files.")],
        repo_id: Annotated[str, typer.Option("--repo-id", help="The Hub repository, OWNER/NAME.")],
        private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the files and card; upload nothing.")] = False,
        commit_message: Annotated[Optional[str], typer.Option(help="The commit's message.")] = None):
    """Upload a trained model to the Hugging Face Hub with a model card (README.md)."""
    from lorakit.config import HubConfig
    from lorakit.export.hub import upload_to_hub

    message = {"commit_message": commit_message} if commit_message else {}
    upload = upload_to_hub(HubConfig(source=source, repo_id=repo_id, private=private, dry_run=dry_run, **message))
    table = Table(title=f"{'would upload' if dry_run else 'uploaded'} to {upload.repo_id}")
    table.add_column("file", overflow="fold")
    table.add_column("size", justify="right")
    for file in upload.files:
        table.add_row(escape(file.path), _size(file.size))
    console.print(table)
    if dry_run:
        console.rule("README.md")
        console.print(upload.card, highlight=False, markup=False, soft_wrap=True)
        console.print("Dry run: nothing was uploaded.")
    else:
        console.print(f"Uploaded to {upload.url}", highlight=False)


# The options of each command that make a config (the web UI starts these commands as jobs).


def gguf_options(config: GGUFConfig) -> list[str]:
    """The options of `lorakit export gguf SOURCE` that make `config`."""
    options = ["--output", str(config.output), "--outtype", config.outtype, "--onto", config.onto]
    if config.perplexity_data is not None:
        options += ["--perplexity-data", str(config.perplexity_data)]
    return options + _shared_options(config)


def ollama_options(config: OllamaConfig) -> list[str]:
    """The options of `lorakit export ollama SOURCE` that make `config`."""
    options = ["--output", str(config.output), "--quant", config.quant]
    for flag, value in (("--system", config.system), ("--name", config.name)):
        if value is not None:
            options += [flag, value]
    return options + _shared_options(config)


def hub_options(config: HubConfig) -> list[str]:
    """The options of `lorakit export hub SOURCE` that make `config`."""
    options = ["--repo-id", config.repo_id, "--commit-message", config.commit_message]
    return options + (["--private"] if config.private else []) + (["--dry-run"] if config.dry_run else [])


def _shared_options(config: GGUFConfig | OllamaConfig) -> list[str]:
    options = ["--adapter-only"] if config.adapter_only else []
    options += ["--base", config.base] if config.base else []
    return options + (["--force"] if config.force else [])


def _size(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:,.1f} {unit}"
