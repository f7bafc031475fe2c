"""`lorakit serve` (OpenAI-compatible HTTP server) and `lorakit adapters` (load several, mix them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import app, console

adapters_app = typer.Typer(help="Combine LoRA adapters trained on the same base model.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")

AdapterOption = Annotated[Optional[list[str]], typer.Option(
    "--adapter", help="An adapter as NAME=PATH (or PATH, named after its folder); repeat for several.")]


@app.command()
def serve(model: Annotated[Optional[str], typer.Option(
              help="Bundled name, model folder, .gguf or hub id. Default: the base model of the first --adapter, "
                   "else smollm2-135m.")] = None,
          adapter: AdapterOption = None,
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
          api_key: Annotated[Optional[str], typer.Option(
              envvar="LORAKIT_API_KEY", help="Require 'Authorization: Bearer KEY' (or set LORAKIT_API_KEY).")] = None,
          max_batch_size: Annotated[int, typer.Option(help="Most requests generating at once.")] = 8,
          batching: Annotated[str, typer.Option(
              help="continuous (a request joins the running batch at the next token) or static (it waits for "
                   "the batch to finish).")] = "continuous",
          engine: Annotated[str, typer.Option(help="transformers (CPU or GPU) or vllm (CUDA only).")] = "transformers",
          dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
          device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto"):
    """OpenAI-compatible API: the base model under its name, each adapter under its own (`--adapter tuned=PATH`)."""
    from lorakit.config import ServeConfig, parse_adapter
    from lorakit.errors import ConfigError
    from lorakit.infer import inference_model
    from lorakit.serve import serve as run_server

    try:
        specs = tuple(parse_adapter(text) for text in adapter or [])
        model_config, _ = inference_model(model, specs[0].path if specs else None, device, dtype)
        config = ServeConfig(model=model_config, adapters=specs, host=host, port=port, api_key=api_key or None,
                             max_batch_size=max_batch_size, engine=engine, batching=batching)
        names = ", ".join([model_config.name, *(spec.name for spec in config.adapters)])
        console.print(f"Serving {names} at http://{host}:{port}/v1" + (" (API key required)" if api_key else ""),
                      markup=False)
        run_server(config)
    except ConfigError as err:
        raise ConfigError(f"{err} (On the command line each key is a flag: engine is --engine, port --port, "
                          "max_batch_size --max-batch-size, batching --batching, an adapter --adapter "
                          "NAME=PATH.)") from None


@adapters_app.command("mix")
def adapters_mix(out: Annotated[Path, typer.Argument(help="Folder for the combined adapter.")],
                 adapter: AdapterOption = None,
                 weights: Annotated[str, typer.Option(help="One weight per --adapter, e.g. 0.7,0.3.")] = "",
                 combination: Annotated[str, typer.Option(help="linear (equal ranks), cat or svd.")] = "linear",
                 model: Annotated[Optional[str], typer.Option(
                     help="Base model; default: the one the first adapter names.")] = None):
    """Combine adapters into one: `lorakit adapters mix out --adapter tea=PATH --adapter zh=PATH --weights 0.7,0.3`."""
    from lorakit.adapters import mix, parse_adapter, parse_weights
    from lorakit.config import ModelConfig

    specs = [parse_adapter(text) for text in adapter or []]
    model_config = ModelConfig(name=model, device="cpu", dtype="float32") if model else None
    written = mix(model_config, specs, parse_weights(weights, len(specs)), combination, out)
    console.print(f"[green]done[/]: combined adapter ({combination}) in {written}")
