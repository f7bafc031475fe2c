"""`lorakit data check|stats|preview|convert`: look at a dataset; `dedupe|split|mix|sample|filter`: reshape it."""

from __future__ import annotations

import json
from dataclasses import replace
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


Sources = Annotated[list[str], typer.Argument(
    help="Dataset files or registry names, then optional key=value overrides (e.g. data.skip_bad=true).")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Output file (.jsonl or .json).")]
OutputFormat = Annotated[str, typer.Option("--to", help="keep (fields as read), openai, sharegpt, alpaca or text.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]


def _tool_config(cls, args: list[str], keys: dict, skip_bad: bool):
    """A dataset tool's config from `source... key=value...` and the command's options (None: not given)."""
    from lorakit.config import load_config

    sources = [arg for arg in args if "=" not in arg]
    overrides = [arg for arg in args if "=" in arg]
    given = [f"{key}={value}" for key, value in keys.items() if value is not None and value != ()]
    paths = [f"data.paths=[{', '.join(repr(s) for s in sources)}]"] if sources else []
    skip = ["data.skip_bad=true"] if skip_bad else []
    return load_config(None, [*paths, *given, *skip, *overrides], cls)


def _print_report(report) -> None:
    from lorakit.data.tools import format_report

    console.print(format_report(report), markup=False, highlight=False, soft_wrap=True)


def _fields(values: list[str] | None) -> str | None:
    return f"[{', '.join(values)}]" if values else None


@data_app.command("dedupe")
def data_dedupe(sources: Sources, output: Output, to: OutputFormat = "keep", force: Force = False, seed: Seed = 42,
                field: Annotated[Optional[list[str]], typer.Option(
                    "--field", help="Field to compare (repeatable): a record field, or prompt, response, text.",
                )] = None,
                exact: Annotated[bool, typer.Option("--exact", help="Exact duplicates only (no MinHash).")] = False,
                threshold: Annotated[Optional[float], typer.Option(
                    help="Near-duplicate Jaccard similarity threshold (default 0.6).")] = None,
                skip_bad: SkipBad = False):
    """Drop exact and near-duplicate records (MinHash LSH), keeping the first; clusters go to <output>.dedupe.json."""
    from lorakit.config import DedupeConfig
    from lorakit.data.tools import dedupe

    config = _tool_config(DedupeConfig, sources, {"output": output, "output_format": to, "force": force,
                                                  "seed": seed, "fields": _fields(field), "threshold": threshold,
                                                  "method": "exact" if exact else None}, skip_bad)
    _print_report(dedupe(config))


@data_app.command("split")
def data_split(sources: Sources,
               output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")],
               validation: Annotated[float, typer.Option(help="Validation share (<1) or count.")] = 0.1,
               test: Annotated[float, typer.Option(help="Test share (<1) or count.")] = 0.0,
               stratify: Annotated[bool, typer.Option("--stratify", help="Cut each source file alike.")] = False,
               to: OutputFormat = "keep", force: Force = False, seed: Seed = 42,
               skip_bad: SkipBad = False):
    """Split into train/validation/test .jsonl files in a folder, seeded, optionally stratified by source."""
    from lorakit.config import SplitConfig
    from lorakit.data.tools import split

    config = _tool_config(SplitConfig, sources, {"output": output, "validation": validation, "test": test,
                                                 "stratify_by_source": stratify, "output_format": to,
                                                 "force": force, "seed": seed}, skip_bad)
    _print_report(split(config))


@data_app.command("mix")
def data_mix(sources: Sources, output: Output,
             ratios: Annotated[Optional[str], typer.Option(help="Comma-separated, one per dataset: 0.8,0.2.")] = None,
             counts: Annotated[Optional[str], typer.Option(help="Comma-separated records per dataset.")] = None,
             size: Annotated[Optional[int], typer.Option(help="Records in all, with --ratios.")] = None,
             to: OutputFormat = "keep", force: Force = False, seed: Seed = 42,
             skip_bad: SkipBad = False):
    """Mix datasets by ratios or counts (e.g. replay general data against forgetting), shuffled, seeded."""
    from lorakit.config import MixConfig
    from lorakit.data.tools import mix

    config = _tool_config(MixConfig, sources, {"output": output, "ratios": f"[{ratios}]" if ratios else None,
                                               "counts": f"[{counts}]" if counts else None, "size": size,
                                               "output_format": to, "force": force, "seed": seed}, skip_bad)
    _print_report(mix(config))


@data_app.command("sample")
def data_sample(sources: Sources, output: Output,
                size: Annotated[float, typer.Option(help="A fraction (<1) or a record count.")],
                to: OutputFormat = "keep", force: Force = False, seed: Seed = 42,
                skip_bad: SkipBad = False):
    """Draw a random sample of records, seeded, in their original order."""
    from lorakit.config import SampleConfig
    from lorakit.data.tools import sample

    config = _tool_config(SampleConfig, sources, {"output": output, "size": size, "output_format": to,
                                                  "force": force, "seed": seed}, skip_bad)
    _print_report(sample(config))


@data_app.command("filter")
def data_filter(sources: Sources, output: Output,
                field: Annotated[Optional[list[str]], typer.Option(
                    "--field", help="Field to look at (repeatable); default: text, the whole record.")] = None,
                tokenizer: Annotated[Optional[str], typer.Option(help="Model name or folder to count tokens.")] = None,
                min_tokens: Annotated[Optional[int], typer.Option()] = None,
                max_tokens: Annotated[Optional[int], typer.Option()] = None,
                language: Annotated[Optional[list[str]], typer.Option(
                    "--language", help="Keep this script (repeatable): zh, ja, ko, latin, other.")] = None,
                score_field: Annotated[Optional[str], typer.Option(help="Record field holding a score.")] = None,
                min_score: Annotated[Optional[float], typer.Option()] = None,
                max_score: Annotated[Optional[float], typer.Option()] = None,
                include: Annotated[Optional[str], typer.Option(help="Keep records this regex matches.")] = None,
                exclude: Annotated[Optional[str], typer.Option(help="Drop records this regex matches.")] = None,
                to: OutputFormat = "keep", force: Force = False,
                skip_bad: SkipBad = False):
    """Keep records by token length, language (script), score and regular expressions; counts removals by reason."""
    from lorakit.config import FilterConfig, ModelConfig
    from lorakit.data.tools import filter_records

    keys = {"output": output, "fields": _fields(field), "tokenizer": tokenizer, "min_tokens": min_tokens,
            "max_tokens": max_tokens, "languages": _fields(language), "score_field": score_field,
            "min_score": min_score, "max_score": max_score, "output_format": to, "force": force}
    config = _tool_config(FilterConfig, sources, keys, skip_bad)
    patterns = {key: value for key, value in (("include", include), ("exclude", exclude)) if value is not None}
    config = replace(config, **patterns)  # set after parsing: a regex is not a YAML scalar
    loaded = None
    if config.tokenizer:
        from lorakit.model import load_tokenizer

        loaded = load_tokenizer(ModelConfig(name=config.tokenizer))
    _print_report(filter_records(config, loaded))


@data_app.command("generate")
def data_generate(
        args: Annotated[Optional[list[str]], typer.Argument(
            help="An optional YAML config, then key=value overrides (e.g. judge.threshold=7).")] = None,
        input_path: Annotated[Optional[Path], typer.Option("--input", "-i", help="A document file or folder.")] = None,
        output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder.")] = None,
        mode: Annotated[Optional[str], typer.Option(
            help="qa, summary, continuation, dialogue or custom.")] = None,
        base_url: Annotated[Optional[str], typer.Option(help="Generator endpoint, e.g. http://localhost:8000/v1.")]
        = None,
        model: Annotated[Optional[str], typer.Option(help="Generator model name at base_url.")] = None,
        local: Annotated[Optional[str], typer.Option(
            "--local", help="Generate with a model loaded here (a bundled name, folder or hub id), not an endpoint.")]
        = None,
        judge_model: Annotated[Optional[str], typer.Option(help="Judge model (default: the generator).")] = None,
        to: Annotated[Optional[str], typer.Option("--to", help="alpaca, sharegpt or openai.")] = None,
        preview: Annotated[bool, typer.Option(
            "--preview", help="Show the chunks and the first records; write nothing.")] = False,
        force: Force = False):
    """Generate training records from documents with an LLM, scored by a judge; resumable (run it again)."""
    from lorakit.cli.app import config_and_overrides
    from lorakit.config import GenerateConfig, load_config
    from lorakit.data.generate import clients, format_report, generate_dataset, preview_generation
    from lorakit.errors import ConfigError

    path, overrides = config_and_overrides(args)
    if local is not None and model is not None:
        raise ConfigError("Give --local MODEL (a model loaded here) or --model (an endpoint's model), not both.")
    given = {"input": input_path, "output_dir": output, "mode": mode, "generator.base_url": base_url,
             "generator.model": local or model, "generator.backend": "local" if local else None,
             "judge.model": judge_model, "output_format": to, "force": force or None}
    options = [f"{key}={value}" for key, value in given.items() if value is not None]
    config = load_config(path, [*options, *overrides], GenerateConfig)
    generator, judge = clients(config)
    try:
        if not preview:
            console.print(format_report(generate_dataset(config, generator, judge)), markup=False, highlight=False)
            return
        chunks, records = preview_generation(config, generator, judge)
    finally:
        for client in {id(c): c for c in (generator, judge) if c is not None}.values():
            client.close()
    for chunk in chunks[:5]:
        text = chunk.text if len(chunk.text) <= 300 else chunk.text[:300] + " …"
        pages = f", pages {chunk.pages[0]}-{chunk.pages[1]}" if chunk.pages else ""
        console.print(f"--- chunk {chunk.id} ({len(chunk.text)} chars, {chunk.language}{pages})\n{text}",
                      markup=False, highlight=False)
    console.print(f"{len(chunks)} chunks in all; the first {len(records)} records (nothing written):", markup=False)
    for record in records:
        console.print(json.dumps(record, ensure_ascii=False, indent=1), markup=False, highlight=False,
                      soft_wrap=True)  # unwrapped: the JSON stays valid when copied
