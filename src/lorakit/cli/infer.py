"""`lorakit chat` and `lorakit predict`: talk to a model in the terminal, or answer a whole dataset to JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import app, console

Model = Annotated[Optional[str], typer.Option(
    "--model", help="Base model: a bundled name, a folder (a merged model too) or a hub id. Default: the "
                    "adapter's base, else smollm2-135m.")]
Adapter = Annotated[Optional[Path], typer.Option(
    "--adapter", help="A lorakit output directory or its adapter/ folder.")]
TemplateName = Annotated[Optional[str], typer.Option(
    "--template", help="Chat template name; default: the one the adapter was trained with, else the tokenizer's.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
Dtype = Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")]
Temperature = Annotated[float, typer.Option(help="0 is greedy decoding; above 0 samples.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (sampling only).")]
TopK = Annotated[int, typer.Option("--top-k", help="Sample among the k likeliest tokens; 0 is off.")]
RepetitionPenalty = Annotated[float, typer.Option("--repetition-penalty", help="1.0 is off.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed for sampling.")]
Stop = Annotated[Optional[list[str]], typer.Option(
    "--stop", help="A string that ends the reply (not included); repeat for several.")]
System = Annotated[Optional[str], typer.Option("--system", help="System prompt.")]


def _generation(max_new_tokens: int, temperature: float, top_p: float, top_k: int, repetition_penalty: float,
                seed: int | None, stop: list[str] | None, batch_size: int = 1):
    from lorakit.infer import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            repetition_penalty=repetition_penalty, batch_size=batch_size, stop=tuple(stop or ()),
                            seed=seed)


@app.command()
def chat(model: Model = None, adapter: Adapter = None, template: TemplateName = None, system: System = None,
         max_new_tokens: MaxNewTokens = 512, temperature: Temperature = 0.7, top_p: TopP = 0.9, top_k: TopK = 0,
         repetition_penalty: RepetitionPenalty = 1.0, seed: Seed = None, stop: Stop = None,
         device: Device = "auto", dtype: Dtype = "auto",
         show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the exact prompt before each "
                                                                         "reply.")] = False):
    """Chat in the terminal with a model or model + adapter; replies stream. /help inside lists the commands."""
    from lorakit.infer import inference_model, open_chat, run_chat

    settings = _generation(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop)
    model_config, adapter_dir = inference_model(model, adapter, device, dtype)
    console.print(f"Loading {model_config.name}" + (f" with adapter {adapter_dir}" if adapter_dir else "") + " ...",
                  highlight=False, markup=False)
    run_chat(open_chat(model_config, adapter_dir, template, system, settings), show_prompt=show_prompt)


@app.command()
def predict(data: Annotated[str, typer.Argument(help="Dataset file (any format lorakit reads) or registry name.")],
            output: Annotated[Path, typer.Option("--output", "-o", help="Predictions JSONL; an existing one is "
                                                                        "continued, not overwritten.")],
            model: Model = None, adapter: Adapter = None, template: TemplateName = None,
            system: Annotated[Optional[str], typer.Option(
                "--system", help="System prompt for records that have none.")] = None,
            data_format: Annotated[str, typer.Option("--format", help="Dataset format; auto detects it.")] = "auto",
            dataset_dir: Annotated[Optional[Path], typer.Option(
                "--dataset-dir", help="Folder with dataset_info.json, for registry names.")] = None,
            max_samples: Annotated[Optional[int], typer.Option("--max-samples", help="Only the first N records.")]
            = None,
            batch_size: Annotated[int, typer.Option("--batch-size", help="Records generated together.")] = 8,
            max_new_tokens: MaxNewTokens = 256, temperature: Temperature = 0.0, top_p: TopP = 1.0, top_k: TopK = 0,
            repetition_penalty: RepetitionPenalty = 1.0, seed: Seed = None, stop: Stop = None,
            device: Device = "auto", dtype: Dtype = "auto"):
    """Answer every record of a dataset (greedy by default); the last assistant turn becomes the reference."""
    from lorakit.config import DataConfig
    from lorakit.infer import inference_model, run_predict

    settings = _generation(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop, batch_size)
    data_config = DataConfig(paths=(data,), format=data_format, dataset_dir=dataset_dir, max_samples=max_samples,
                             system=system)
    model_config, adapter_dir = inference_model(model, adapter, device, dtype)
    summary = run_predict(data_config, model_config, output, settings, adapter_dir, template)
    note = " (a half-written last line was redone)" if summary.dropped_partial_line else ""
    console.print(f"[green]done[/]: {summary.written} predictions written, {summary.already_done} already there, "
                  f"{summary.total} records in {summary.output}{note}", highlight=False)
