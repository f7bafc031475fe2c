"""`lorakit merge` (base + adapter -> one model folder) and `lorakit export gguf|ollama|hub`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lorakit.cli.app import app, console

export_app = typer.Typer(help="Take a trained model out of lorakit: GGUF for llama.cpp, Ollama, the Hugging Face Hub.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")


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


def _size(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:,.1f} {unit}"
