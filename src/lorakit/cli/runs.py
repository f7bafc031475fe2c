"""`lorakit runs [DIR]` lists training runs; `lorakit runs show RUN` prints one run's status, manifest and metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lorakit.cli.app import app, console

_COLOURS = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}


@app.command(name="runs")
def runs(args: Annotated[Optional[list[str]], typer.Argument(
        help="A folder of runs (default: outputs), or `show RUN` for one run's details.")] = None):
    """List runs newest first (`lorakit runs [DIR]`), or show one (`lorakit runs show RUN`)."""
    from lorakit.errors import ConfigError

    args = list(args or [])
    if args[:1] == ["show"]:
        if len(args) != 2:
            raise ConfigError("`lorakit runs show` takes one run folder, e.g. `lorakit runs show outputs/demo`.")
        _show(Path(args[1]))
        return
    if len(args) > 1:
        raise ConfigError(f"`lorakit runs` takes one folder of runs; got {len(args)} arguments. Use "
                          "`lorakit runs show RUN` for one run.")
    _list(Path(args[0]) if args else Path("outputs"))


def _list(root: Path) -> None:
    from lorakit.runs import list_runs

    found = list_runs(root)
    if not found:
        console.print(f"No runs under {root}. Train one with `lorakit train CONFIG output_dir={root}/NAME`.")
        return
    table = Table(title=f"runs under {root}, newest first")
    for column in ("run", "status", "base model", "method", "data", "steps", "train loss", "eval loss", "date"):
        table.add_column(column, overflow="fold")
    for run in found:
        colour = _COLOURS.get(run.status.state, "white")
        table.add_row(escape(_relative(run.path, root)), f"[{colour}]{run.status.state}[/]", escape(run.base_model or "-"),
                      escape(run.method or "-"), escape(run.data or "-"), _number(run.steps),
                      _number(run.train_loss), _number(run.eval_loss), escape((run.date or "-")[:16]))
    console.print(table)
    for run in found:
        if run.status.state in ("failed", "interrupted") and run.status.detail:
            console.print(f"{escape(_relative(run.path, root))}: {run.status.state}: {escape(run.status.detail)}", highlight=False)


def _show(run_dir: Path) -> None:
    from lorakit.runs import run_details

    console.print_json(json.dumps(run_details(run_dir), ensure_ascii=False, default=str))


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root and path.is_relative_to(root) else str(path)


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
