"""`lorakit train`, `lorakit models` and `lorakit demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lorakit.cli.app import ConfigArgs, app, console, load_train_config

@app.command()
def train(args: ConfigArgs = None,
          resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
          skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip malformed records, counted.")] = False):
    """Fine-tune a model: `lorakit train configs/smollm2-lora.yaml lora.rank=16 max_steps=200`.

    SIGTERM (`kill PID`, the web UI's stop) ends training after the current step with a checkpoint saved; resume it
    with --resume."""
    import threading

    from lorakit.jobs import stop_on_sigterm
    from lorakit.train import run_training
    from lorakit.train.distributed import is_main_process

    extra = (["resume=true"] if resume else []) + (["data.skip_bad=true"] if skip_bad else [])
    config = load_train_config(args, extra)
    stop = threading.Event()
    with stop_on_sigterm(stop):
        output_dir = run_training(config, stop=stop)
    if not is_main_process():  # under torchrun / accelerate launch, rank 0 speaks for the run
        return
    if stop.is_set():
        console.print(f"[yellow]stopped[/]: checkpoint and outputs so far in {output_dir}; continue with "
                      f"`lorakit train {output_dir / 'config.yaml'} --resume`")
        return
    console.print(f"[green]done[/]: adapter and report in {output_dir}")


@app.command()
def models():
    """List the bundled and cached models with size, architecture and upstream id."""
    from lorakit.bundled import cache_root, list_models

    table = Table(title=f"lorakit models (cache: {cache_root()})")
    for column in ("name", "status", "size", "architecture", "upstream", "note"):
        table.add_column(column)
    for item in list_models():
        size = f"{item.size_bytes / 2**20:,.0f} MiB" if item.size_bytes else "-"
        table.add_row(item.name, item.status, size, item.architecture, item.upstream, item.note)
    console.print(table)


@app.command()
def demo(output_dir: Annotated[Path, typer.Option(help="Where the demo's adapter goes.")] = Path("outputs/demo"),
         model: Annotated[str, typer.Option(help="Bundled model to fine-tune.")] = "smollm2-135m"):
    """Fine-tune the bundled model on the bundled sample set and show base vs tuned answers."""
    from rich.markup import escape

    from lorakit.demo import run_demo

    console.print(f"Fine-tuning {model} on the bundled sample set (a new assistant identity, 'Lumi', and a "
                  "fictional tea house), then asking held-out questions. First run converts the model (~1 min).")

    rows = run_demo(output_dir, model)
    table = Table(title="Held-out questions: base model vs fine-tuned", show_lines=True)
    for column, width in (("question", 30), ("base model", 45), ("fine-tuned", 45), ("expects", 8)):
        table.add_column(column, max_width=width, overflow="fold")  # fold: Chinese text has no spaces to wrap at
    for row in rows:
        cells = [f"{'[green]✓' if row.expect in answer else '[red]✗'}[/] {escape(' '.join(answer.split()))}"
                 for answer in (row.base, row.tuned)]
        table.add_row(escape(row.question), *cells, escape(row.expect))
    console.print(table)
    base_hits = sum(row.expect in row.base for row in rows)
    tuned_hits = sum(row.expect in row.tuned for row in rows)
    console.print(f"Expected fact in the answer: base {base_hits}/{len(rows)}, fine-tuned {tuned_hits}/{len(rows)}. "
                  f"Adapter: {output_dir / 'adapter'}")
