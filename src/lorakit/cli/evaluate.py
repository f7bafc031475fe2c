"""`lorakit eval`, `lorakit inspect` and `lorakit sweep`: did fine-tuning help, and what did it forget?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import app, console

Adapters = Annotated[Optional[list[str]], typer.Option(
    "--adapter", help="An adapter folder to evaluate on --base, as PATH or NAME=PATH; repeat for several.")]
Models = Annotated[Optional[list[str]], typer.Option(
    "--model", help="Another model (e.g. a merged one) to evaluate, as PATH or NAME=PATH; repeat for several.")]


def _suite(suite: Path | None, data: list[str], limit: int | None, overrides: list[str]):
    """The suite from its YAML, or a quick one (perplexity + generation) on each --data file; --limit caps tasks."""
    from dataclasses import replace

    from lorakit.config import DataConfig, EvalTaskConfig, SuiteConfig, load_config
    from lorakit.errors import ConfigError

    if suite is None and not data:
        raise ConfigError("Say what to evaluate on: --suite SUITE.yaml (see configs/eval-forgetting.yaml) or "
                          "--data FILE for perplexity and generation metrics on a dataset.")
    config = load_config(suite, overrides, SuiteConfig) if suite is not None else SuiteConfig(name="quick")
    quick = []
    for path in data:
        stem = Path(path).stem
        quick += [EvalTaskConfig(kind="perplexity", name=f"{stem}-perplexity", data=DataConfig(paths=(path,))),
                  EvalTaskConfig(kind="generation", name=f"{stem}-generation", data=DataConfig(paths=(path,)))]
    tasks = tuple(config.tasks) + tuple(quick)
    if limit is not None:
        tasks = tuple(replace(task, limit=limit) for task in tasks)
    return replace(config, tasks=tasks)


@app.command("eval")
def evaluate(
    suite: Annotated[Optional[Path], typer.Option(help="Suite YAML: the tasks to run on every model.")] = None,
    base: Annotated[Optional[str], typer.Option(
        help="Base model (bundled name, folder, .gguf or hub id); default: the one the first adapter was "
             "trained on.")] = None,
    adapter: Adapters = None,
    model: Models = None,
    data: Annotated[Optional[list[str]], typer.Option(
        "--data", help="A dataset file for a quick perplexity + ROUGE/BLEU run (repeatable).")] = None,
    output: Annotated[Path, typer.Option(help="Report folder.")] = Path("outputs/eval"),
    limit: Annotated[Optional[int], typer.Option(
        help="Questions per subject / records per task, for a quick run.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every result.")] = False,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="key=value overrides of the suite (e.g. noise_sigmas=3).")] = None,
):
    """Evaluate a base model and its adapters on one suite; write report.json, report.md and charts.

    `lorakit eval --base smollm2-135m --adapter outputs/zh-instruct/adapter --suite configs/eval-forgetting.yaml`
    """
    from lorakit.config import ModelConfig
    from lorakit.eval.suite import model_specs, run_eval

    specs = model_specs(base, list(adapter or []), list(model or []))
    config = _suite(suite, list(data or []), limit, list(overrides or []))
    console.print(f"Evaluating {', '.join(spec.label for spec in specs)} on {len(config.tasks)} task(s) of "
                  f"'{config.name}'.")
    report = run_eval(config, specs, output, ModelConfig(name=specs[0].base, dtype=dtype, device=device),
                      use_cache=not no_cache, log=lambda line: console.print(line, highlight=False, markup=False))
    for label, rows in report["changes"].items():
        dropped = [row["key"] for row in rows if row["verdict"] == "dropped"]
        improved = [row["key"] for row in rows if row["verdict"] == "improved"]
        console.print(f"[bold]{label}[/] vs {report['reference']}: dropped beyond noise: "
                      f"{', '.join(dropped) or 'none'}; improved: {', '.join(improved) or 'none'}.", highlight=False)
    console.print(f"[green]report[/]: {output / 'report.md'}")


@app.command()
def sweep(
    args: Annotated[Optional[list[str]], typer.Argument(
        help="A training YAML, then key=value overrides shared by every run.")] = None,
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", help="A key and its values, e.g. lora.rank=4,8,16; repeat for more keys (all combinations).")] = None,
    suite: Annotated[Optional[Path], typer.Option(help="Score each run with this eval suite.")] = None,
    metric: Annotated[Optional[str], typer.Option(
        help="Score to rank by: eval_loss (default without --suite) or task/metric from the suite.")] = None,
    output: Annotated[Path, typer.Option(help="Sweep folder: one run folder per point, sweep.md, heatmap.png.")] =
        Path("outputs/sweep"),
):
    """Train a grid (e.g. rank x alpha) on the same data, evaluate each run, rank them best first.

    `lorakit sweep configs/smollm2-lora.yaml data.val_size=0.1 --grid lora.rank=4,8,16 --grid lora.alpha=8,16,32`
    """
    from lorakit.cli.app import config_and_overrides
    from lorakit.config import SuiteConfig, load_config
    from lorakit.sweep import parse_grid, run_sweep

    path, overrides = config_and_overrides(args)
    suite_config = load_config(suite, [], SuiteConfig) if suite is not None else None
    runs = run_sweep(path, overrides, parse_grid(list(grid or [])), output, suite_config, metric,
                     log=lambda line: console.print(line, highlight=False, markup=False))
    best = runs[0]
    console.print(f"[green]best[/]: {best['name']} ({best['objective']:.4g}); table: {output / 'sweep.md'}")
