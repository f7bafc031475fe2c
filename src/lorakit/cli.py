"""The `lorakit` command: `lorakit <stage> [config.yaml] [key=value ...]`. The only module that reads argv.

User mistakes (LorakitError) print on one line without a traceback and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from lorakit.errors import LorakitError

app = typer.Typer(help="LoRA fine-tuning of open language models, offline: data, train, models, demo.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Validate, measure, preview and convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

ConfigArgs = Annotated[Optional[list[str]], typer.Argument(
    help="An optional YAML config, then key=value overrides (e.g. lora.rank=16 data.paths=[a.json]).")]


def _config_and_overrides(args: list[str] | None) -> tuple[Path | None, list[str]]:
    args = list(args or [])
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return None, args


def _load_train_config(args: list[str] | None, extra: list[str] = ()):
    from lorakit.config import TrainConfig, load_config

    path, overrides = _config_and_overrides(args)
    return load_config(path, [*overrides, *extra], TrainConfig)


@app.command()
def train(args: ConfigArgs = None,
          resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
          skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip malformed records, counted.")] = False):
    """Fine-tune a model: `lorakit train configs/smollm2-lora.yaml lora.rank=16 max_steps=200`."""
    from lorakit.train import run_training

    extra = (["resume=true"] if resume else []) + (["data.skip_bad=true"] if skip_bad else [])
    config = _load_train_config(args, extra)
    output_dir = run_training(config)
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


def _data_config(args: list[str] | None, skip_bad: bool):
    """`lorakit data X file.jsonl` or `lorakit data X config.yaml key=value`: a TrainConfig either way."""
    args = list(args or [])
    extra = ["data.skip_bad=true"] if skip_bad else []
    if args and "=" not in args[0] and not args[0].endswith((".yaml", ".yml")):
        return _load_train_config(args[1:], [f"data.paths=[{args[0]!r}]", *extra])
    return _load_train_config(args, extra)


SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip malformed records instead of stopping, counted.")]


@data_app.command("check")
def data_check(args: ConfigArgs = None, skip_bad: SkipBad = False):
    """Validate a dataset without loading any model; report records read / used / skipped."""
    from lorakit.data.inspect import check_data, format_check

    config = _data_config(args, skip_bad)
    console.print(format_check(check_data(config.data), shown=20), markup=False, highlight=False)


def _tokenized_view(config):
    from lorakit.data import load_conversations
    from lorakit.model import load_tokenizer
    from lorakit.templates import resolve_template

    conversations, _ = load_conversations(config.data)
    tokenizer = load_tokenizer(config.model)
    return conversations, tokenizer, resolve_template(config.data.template, tokenizer)


@data_app.command("stats")
def data_stats(args: ConfigArgs = None, skip_bad: SkipBad = False,
               plot: Annotated[Path, typer.Option(help="Token-length histogram PNG.")] = Path("data_lengths.png")):
    """Token lengths against max_seq_len, truncation, share of supervised tokens, duplicates."""
    from lorakit.data.inspect import dataset_stats, format_stats, plot_length_histogram

    config = _data_config(args, skip_bad)
    conversations, tokenizer, template = _tokenized_view(config)
    stats = dataset_stats(conversations, tokenizer, template, config.data)
    console.print(format_stats(stats), markup=False)
    plot_length_histogram(stats.lengths, config.data.max_seq_len, plot)
    console.print(f"histogram: {plot}")


@data_app.command("preview")
def data_preview(args: ConfigArgs = None, skip_bad: SkipBad = False,
                 count: Annotated[int, typer.Option(help="How many examples to show.")] = 3):
    """Show rendered examples with the supervised (trained) text marked."""
    from lorakit.data.inspect import preview

    config = _data_config(args, skip_bad)
    conversations, tokenizer, template = _tokenized_view(config)
    for block in preview(conversations, tokenizer, template, config.data, count):
        console.print(block, markup=False, highlight=False)


@data_app.command("convert")
def data_convert(source: Annotated[str, typer.Argument(help="Dataset file or registry name.")],
                 target: Annotated[Path, typer.Argument(help="Output file (.json or .jsonl).")],
                 to: Annotated[str, typer.Option("--to", help="openai, sharegpt, alpaca or text.")] = "openai",
                 overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides")] = None,
                 skip_bad: SkipBad = False):
    """Convert a dataset to another format: `lorakit data convert in.json out.jsonl --to openai`."""
    from lorakit.data import load_conversations
    from lorakit.data.inspect import convert

    config = _load_train_config(overrides, [f"data.paths=[{source!r}]"]
                                + (["data.skip_bad=true"] if skip_bad else []))
    conversations, summary = load_conversations(config.data)
    written = convert(conversations, to, target)
    console.print(f"wrote {written} records to {target} ({summary.skipped} skipped)")


def main() -> None:
    """Entry point: run the CLI, turning user mistakes into a one-line message and exit status 2."""
    try:
        app(standalone_mode=False)
    except LorakitError as err:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]{type(err).__name__}[/]: {escape(str(err))}", highlight=False,
                                   soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as err:
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()
