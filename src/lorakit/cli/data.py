"""`lorakit data check|stats|preview|convert`: look at a dataset before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import ConfigArgs, app, console, load_train_config

data_app = typer.Typer(help="Validate, measure, preview and convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _data_config(args: list[str] | None, skip_bad: bool):
    """`lorakit data X file.jsonl` or `lorakit data X config.yaml key=value`: a TrainConfig either way."""
    from lorakit.config import TrainConfig, load_config
    from lorakit.data.inspect import data_config_and_overrides

    path, overrides = data_config_and_overrides(args or [])
    return load_config(path, [*overrides, *(["data.skip_bad=true"] if skip_bad else [])], TrainConfig)


SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip malformed records instead of stopping, counted.")]
CheckSkipBad = Annotated[bool, typer.Option(
    "--skip-bad", help="Say that training will skip the bad records (data.skip_bad); they are listed anyway.")]


@data_app.command("check")
def data_check(args: ConfigArgs = None, skip_bad: CheckSkipBad = False):
    """Validate a dataset without loading any model: list every bad record; exit status 1 if there is any."""
    from lorakit.data.inspect import check_data, format_check

    config = _data_config(args, skip_bad)
    report = check_data(config.data, config.stage)
    console.print(format_check(report, shown=20), markup=False, highlight=False, soft_wrap=True)
    if report.problems:
        raise typer.Exit(1)


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

    config = load_train_config(overrides, [f"data.paths=[{source!r}]"]
                                + (["data.skip_bad=true"] if skip_bad else []))
    conversations, summary = load_conversations(config.data)
    written = convert(conversations, to, target)
    console.print(f"wrote {written} records to {target} ({summary.skipped} skipped)")
