"""`lorakit merge` (base + adapter -> one model folder) and `lorakit export gguf|ollama|hub`."""

from __future__ import annotations

import typer

from lorakit.cli.app import app

export_app = typer.Typer(help="Take a trained model out of lorakit: GGUF for llama.cpp, Ollama, the Hugging Face Hub.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")
