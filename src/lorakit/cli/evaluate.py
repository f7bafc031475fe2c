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
    output: Annotated[Optional[Path], typer.Option(help="Report folder [default: outputs/eval].")] = None,
    limit: Annotated[Optional[int], typer.Option(
        help="Questions per subject / records per task, for a quick run.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every result.")] = False,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    overrides: Annotated[Optional[list[str]], typer.Argument(
        help="An eval run YAML (the config.yaml of an evaluation the web UI started: suite, data, base, adapters, "
             "output_dir...) whose fields the options above replace, then key=value overrides of the suite "
             "(e.g. noise_sigmas=3).")] = None,
):
    """Evaluate a base model and its adapters on one suite; write report.json, report.md and charts.

    `lorakit eval --base smollm2-135m --adapter outputs/zh-instruct/adapter --suite configs/eval-forgetting.yaml`
    """
    from dataclasses import replace

    from lorakit.cli.app import config_and_overrides
    from lorakit.config import EvalRunConfig, load_config, parse_adapter
    from lorakit.eval.suite import evaluate_run

    run_file, suite_overrides = config_and_overrides(overrides)
    given = {"suite": suite, "data": tuple(data or ()), "base": base,
             "adapters": tuple(parse_adapter(text) for text in adapter or ()),
             "models": tuple(parse_adapter(text) for text in model or ()), "output_dir": output, "limit": limit,
             "use_cache": False if no_cache else None, "device": None if device == "auto" else device,
             "dtype": None if dtype == "auto" else dtype}
    run = load_config(run_file, [], EvalRunConfig) if run_file is not None else EvalRunConfig()
    run = replace(run, **{key: value for key, value in given.items() if value not in (None, ())})
    output = run.output_dir
    report = evaluate_run(run, suite_overrides, log=lambda line: console.print(line, highlight=False, markup=False))
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


@app.command("inspect")
def inspect_adapter_command(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (holds adapter_config.json) or a lorakit run folder.")],
    output: Annotated[Optional[Path], typer.Option(
        help="Also write inspect.json, inspect.md and update_norms.png (heatmap) to this folder.")] = None,
    top: Annotated[int, typer.Option(help="How many modules to list, largest update first.")] = 10,
):
    """Where did the adapter change the model: ‖ΔW‖, spectrum and effective rank per module, no base model needed.

    `lorakit inspect outputs/zh-instruct/adapter --output outputs/zh-instruct/inspect`
    """
    from lorakit.eval.adapter_inspect import format_adapter_report, inspect_adapter

    report = inspect_adapter(adapter, output, top=max(top, 20))
    console.print(format_adapter_report(report, top=top))
    if output is not None:
        console.print(f"[green]wrote[/]: {output / 'inspect.md'}, inspect.json, update_norms.png", highlight=False)


@app.command()
def compare(
    questions: Annotated[Path, typer.Argument(help="Questions: .txt (one per line), .json or .jsonl "
                                                   "(strings or objects with question/instruction/prompt).")],
    adapter: Annotated[Path, typer.Option(help="Adapter folder; its answers are 'tuned', its base's 'base'.")],
    base: Annotated[Optional[str], typer.Option(
        help="Base model; default: the one the adapter was trained on.")] = None,
    output: Annotated[Path, typer.Option(help="Folder for answers.jsonl, answers.md, answers.html.")] =
        Path("outputs/compare"),
    system: Annotated[Optional[str], typer.Option(help="A system message for every question.")] = None,
    template: Annotated[Optional[str], typer.Option(help="Chat template; default: the adapter's own.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 is greedy (reproducible).")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Questions generated together.")] = 8,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    show: Annotated[int, typer.Option(help="Answers to print here; all are in the files.")] = 5,
):
    """Ask the base model and base + adapter the same questions; write the answers side by side.

    `lorakit compare questions.txt --adapter outputs/zh-instruct/adapter`, then `lorakit judge
    outputs/compare/answers.jsonl --judge-url http://localhost:8000/v1 --judge-model qwen2.5-7b-instruct`.
    """
    from rich.markup import escape
    from rich.table import Table

    from lorakit.config import ModelConfig
    from lorakit.eval.compare import compare_base_and_tuned, load_questions
    from lorakit.infer import GenerationConfig
    from lorakit.runs import adapter_base_model, find_adapter_dir

    asked = load_questions(questions)
    base = base or adapter_base_model(find_adapter_dir(adapter))
    generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
    console.print(f"Asking {base} with and without {adapter} {len(asked)} question(s).", highlight=False)
    rows = compare_base_and_tuned(ModelConfig(name=base, dtype=dtype, device=device), adapter, asked, output,
                                  generation, template, system)
    table = Table(title=f"First {min(show, len(rows))} of {len(rows)} answers", show_lines=True)
    for column in ("question", "base", "tuned"):
        table.add_column(column, overflow="fold")  # fold: Chinese text has no spaces to wrap at
    for row in rows[:show]:
        table.add_row(escape(row["question"]), escape(row["answers"]["base"]), escape(row["answers"]["tuned"]))
    console.print(table)
    console.print(f"[green]wrote[/]: {output / 'answers.md'}, answers.html, answers.jsonl", highlight=False)


@app.command()
def judge(
    answers: Annotated[Path, typer.Argument(help="answers.jsonl written by `lorakit compare`.")],
    judge_url: Annotated[Optional[str], typer.Option(
        "--judge-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")]
        = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Model name at --judge-url.")] = None,
    judge_api_key: Annotated[str, typer.Option("--judge-api-key", envvar="OPENAI_API_KEY",
                                               help="API key for --judge-url.")] = "EMPTY",
    local: Annotated[Optional[str], typer.Option(
        help="Judge with this model on this machine instead (bundled name, folder or hub id).")] = None,
    rubric: Annotated[Optional[Path], typer.Option(
        help="Rubric YAML/JSON: `criteria: {name: description}`, optional `scale: [1, 10]`.")] = None,
    candidate: Annotated[str, typer.Option(help="The model whose win rate is reported.")] = "tuned",
    baseline: Annotated[str, typer.Option(help="The model it is compared with.")] = "base",
    pairwise: Annotated[bool, typer.Option(help="Also judge candidate vs baseline, in both orders.")] = True,
    scores: Annotated[bool, typer.Option(help="Score every answer on the rubric.")] = True,
    output: Annotated[Optional[Path], typer.Option(help="Folder for judge_*.jsonl and judge_summary.json; "
                                                        "default: beside the answers.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once (--judge-url).")] = 4,
    max_retries: Annotated[int, typer.Option(help="Retries per request, with backoff (--judge-url).")] = 3,
):
    """Have an LLM judge the answers: rubric scores per model and tuned-vs-base win/tie/loss rates.

    `lorakit judge outputs/compare/answers.jsonl --judge-url http://localhost:8000/v1 --judge-model qwen2.5-7b`
    """
    from lorakit.config import EndpointConfig, ModelConfig
    from lorakit.errors import ConfigError
    from lorakit.eval.compare import read_comparison
    from lorakit.eval.judge import DEFAULT_RUBRIC, choose_judge, format_judge_summary, judge_comparison, load_rubric

    rows = read_comparison(answers)
    chosen_rubric = load_rubric(rubric) if rubric is not None else DEFAULT_RUBRIC
    output = output or answers.parent
    try:
        endpoint = (EndpointConfig(base_url=judge_url, model=judge_model or "", api_key=judge_api_key,
                                   max_retries=max_retries, concurrency=concurrency) if judge_url is not None else None)
        the_judge = choose_judge(endpoint, ModelConfig(name=local) if local is not None else None)
        summary = judge_comparison(the_judge, rows, output, chosen_rubric,
                                   pair=(candidate, baseline) if pairwise else None, score=scores)
    except ConfigError as err:
        if "judge" not in str(err):
            raise
        raise ConfigError(f"{err} (On the command line: base_url is --judge-url, model --judge-model, api_key "
                          "--judge-api-key; a local model is --local MODEL.)") from None
    console.print(format_judge_summary(summary))
    console.print(f"[green]wrote[/]: {output / 'judge_summary.json'}, judge_scores.jsonl, judge_pairwise.jsonl",
                  highlight=False)
