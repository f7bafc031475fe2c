"""The Evaluate tab: pick runs (and the base model) and a suite, or build one from the form, run `lorakit eval` as
a job, and show its report (scores, radar and delta charts, what dropped beyond noise, per-sample predictions).

Each evaluation is a folder `outputs/eval/<name>/` holding the `config.yaml` (an EvalRunConfig) that
`lorakit eval outputs/eval/<name>/config.yaml` repeats, the suite it built, `eval.log`, `job.json`, `status.json` and
the report; so a reopened page lists past evaluations and re-attaches to a running one.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from lorakit.config import EvalRunConfig, SuiteConfig, WebUIConfig, load_config, save_config
from lorakit.errors import ConfigError, LorakitError
from lorakit.jobs import job_in, start_job, stop_job
from lorakit.runs import STATUS_FILE, list_runs, read_json_dict, run_status
from lorakit.webui.data_tab import data_sources
from lorakit.webui.i18n import text
from lorakit.webui.page import Page
from lorakit.webui.safety import SEARCH_DEPTH, allowed_folders, confine, display_path, files_under
from lorakit.webui.train_form import model_override

EVAL_DIR = "eval"
REFRESH_SECONDS = 1.0
LOG_LINES = 30
PREDICTIONS_SHOWN = 200
BENCHMARK_COLUMNS = ["name", "kind", "source", "subjects", "shots", "limit"]
_FROM_FORM = ""  # the suite choice that builds the suite from the form


def build(page: Page) -> None:
    """The tab's components and events; called inside its gr.Tab."""
    config = page.config
    with gr.Row():
        runs = page.add(gr.Dropdown(adapter_runs(config), multiselect=True, label=page.text("eval.runs"),
                                    info=page.text("eval.runs.info"), elem_id="eval-runs"), "eval.runs")
        base = page.add(gr.Dropdown(_model_names(), value=None, allow_custom_value=True, label=page.text("eval.base"),
                                    info=page.text("eval.base.info"), elem_id="eval-base"), "eval.base")
        name = page.add(gr.Textbox("webui-eval", label=page.text("eval.name"), info=page.text("eval.name.info"),
                                   elem_id="eval-name"), "eval.name")
    with gr.Row():
        from_form = page.text("eval.from_form")
        suite = page.add(gr.Dropdown(suite_files(config, from_form), value=_FROM_FORM, allow_custom_value=True,
                                     label=page.text("eval.suite"), info=page.text("eval.suite.info"),
                                     elem_id="eval-suite"), "eval.suite")
        held_out = page.add(gr.Dropdown(_data_files(config), value=None, allow_custom_value=True,
                                        label=page.text("eval.held_out"), info=page.text("eval.held_out.info"),
                                        elem_id="eval-held_out"), "eval.held_out")
        limit = page.add(gr.Number(20, precision=0, label=page.text("eval.limit"), info=page.text("eval.limit.info"),
                                   elem_id="eval-limit"), "eval.limit")
    benchmarks = page.add(gr.Dataframe(pd.DataFrame([[""] * len(BENCHMARK_COLUMNS)], columns=BENCHMARK_COLUMNS),
                                       interactive=True, label=page.text("eval.benchmarks"),
                                       elem_id="eval-benchmarks"), "eval.benchmarks")
    with gr.Row():
        show = page.add(gr.Button(page.text("show_config"), elem_id="eval-show"), "show_config")
        start = page.add(gr.Button(page.text("eval.start"), variant="primary", elem_id="eval-start"), "eval.start")
        stop = page.add(gr.Button(page.text("stop"), variant="stop", elem_id="eval-stop"), "stop")
    message = gr.Markdown(elem_id="eval-message")
    command = page.add(gr.Textbox(label=page.text("command"), elem_id="eval-command"), "command")
    config_yaml = page.add(gr.Code(language="yaml", label=page.text("config_yaml")), "config_yaml")
    with gr.Row():
        chosen = page.add(gr.Dropdown(past_evaluations(config), label=page.text("eval.report_of"),
                                      info=page.text("eval.report_of.info"), allow_custom_value=True,
                                      elem_id="eval-chosen"), "eval.report_of")
        refresh = page.add(gr.Button(page.text("refresh"), scale=0), "refresh")
    status = gr.Markdown(elem_id="eval-status")
    log = page.add(gr.Textbox(label=page.text("log"), lines=6, max_lines=6, elem_id="eval-log"), "log")
    summary = gr.Markdown(elem_id="eval-summary")
    scores = page.add(gr.Dataframe(label=page.text("eval.scores"), interactive=False, elem_id="eval-scores"),
                      "eval.scores")
    with gr.Row():
        radar = page.add(gr.Image(label=page.text("eval.radar"), type="filepath", interactive=False,
                                  elem_id="eval-radar"), "eval.radar")
        deltas = page.add(gr.Image(label=page.text("eval.deltas"), type="filepath", interactive=False,
                                   elem_id="eval-deltas"), "eval.deltas")
    details = page.add(gr.Dropdown([], label=page.text("eval.details"), elem_id="eval-details"), "eval.details")
    predictions = page.add(gr.Dataframe(label=page.text("eval.predictions"), interactive=False, wrap=True,
                                        elem_id="eval-predictions"), "eval.predictions")
    shown = gr.State("")  # which report (folder and report.json time) the report components show
    timer = gr.Timer(REFRESH_SECONDS)

    form = [runs, base, name, suite, held_out, limit, benchmarks]
    report_parts = [summary, scores, radar, deltas, details, shown]

    def show_config(language: str, *values: Any):
        try:
            run, suite_config = build_eval_config(config, *values)
        except LorakitError as err:
            return gr.update(), gr.update(), text("msg.error", language, message=err)
        return _yaml(run, suite_config), eval_command(run), ""

    def start_evaluation(language: str, *values: Any):
        try:
            run, suite_config = build_eval_config(config, *values)
            folder = start_evaluation_job(run, suite_config)
        except LorakitError as err:
            return text("msg.error", language, message=err), gr.update(), gr.update()
        return (text("eval.msg.started", language, name=folder.name),
                gr.update(choices=past_evaluations(config), value=folder.name), eval_command(run))

    def stop_evaluation(language: str, folder_name: str | None):
        if not folder_name:
            return text("msg.no_run", language)
        try:
            result = stop_job(_folder(config, folder_name))
        except LorakitError as err:
            return text("msg.error", language, message=err)
        return text("eval.msg.stopped" if result.exited else "msg.stop_failed", language, run=folder_name)

    def live(language: str, folder_name: str | None, showing: str):
        try:
            state, log_text = _status(config, language, folder_name)
            report_view = _report_view(config, folder_name, showing)
        except LorakitError as err:  # a typed name that is no evaluation folder
            return (text("msg.error", language, message=err), "", *(gr.update(),) * 6)
        return (state, log_text, *report_view)

    show.click(show_config, [page.lang, *form], [config_yaml, command, message])
    start.click(start_evaluation, [page.lang, *form], [message, chosen, command])
    stop.click(stop_evaluation, [page.lang, chosen], message)
    for trigger in (chosen.change, timer.tick):
        trigger(live, [page.lang, chosen, shown], [status, log, *report_parts])
    details.change(lambda folder_name, item: predictions_table(_folder(config, folder_name), item)
                   if folder_name and item else None, [chosen, details], predictions)
    refresh.click(lambda current: (gr.update(choices=past_evaluations(config), value=current),
                                   gr.update(choices=adapter_runs(config)),
                                   gr.update(choices=suite_files(config, from_form)),
                                   gr.update(choices=_data_files(config))),
                  chosen, [chosen, runs, suite, held_out])
    page.app.load(lambda: (gr.update(choices=past_evaluations(config), value=_newest(config)),
                           gr.update(choices=adapter_runs(config))), None, [chosen, runs])


# --- the form -> EvalRunConfig and SuiteConfig ----------------------------------------------------------------------


def build_eval_config(config: WebUIConfig, runs: list[str] | None, base: str | None, name: str,
                      suite: str | None, held_out: str | None, limit: float | None, benchmarks: Any,
                      cwd: Path | None = None) -> tuple[EvalRunConfig, SuiteConfig | None]:
    """The EvalRunConfig `lorakit eval` runs for the form, and the suite the form builds (None where an existing
    suite YAML is picked). Paths are confined to the allowed folders; a built suite's file is `suite.yaml` in the
    evaluation's folder, written by `start_evaluation_job`.

    A built suite holds the benchmark rows (each with its own limit) and a perplexity and a ROUGE/BLEU task on the
    held-out dataset, capped at `limit`; a picked suite is capped at `limit` as a whole, as `lorakit eval --limit`.
    """
    cwd = Path.cwd() if cwd is None else cwd
    allowed = allowed_folders(config, cwd)
    name = (name or "").strip()
    if not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise ConfigError(f"Evaluation name '{name}' must be a plain folder name (letters, digits, _ . -).")
    output_dir = config.outputs / EVAL_DIR / name
    adapters = [{"name": run, "path": str(config.outputs / run)} for run in runs or ()]
    base_name = json.loads(model_override(base, allowed, cwd)) if (base or "").strip() else None
    limit = int(limit) if limit else None
    data = [display_path(confine(held_out, allowed, cwd), cwd)] if (held_out or "").strip() else []
    if (suite or "").strip():
        suite_path, suite_config = confine(suite, allowed, cwd), None
        run = _eval_run(suite=str(suite_path), data=data, base=base_name, adapters=adapters,
                        output_dir=str(output_dir), limit=limit)
    else:
        suite_config = _suite_from_form(name, benchmarks, data, limit, allowed, cwd)
        run = _eval_run(suite=str(output_dir / "suite.yaml"), base=base_name, adapters=adapters,
                        output_dir=str(output_dir))
    from lorakit.eval.suite import model_specs

    model_specs(run.base, run.adapters, run.models)  # an unknown run or a missing base is said now, not in the job
    return run, suite_config


def _eval_run(**fields: Any) -> EvalRunConfig:
    """An EvalRunConfig built the way the CLI loads its YAML (one typed, checked path)."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in fields.items() if value not in (None, [])]
    return load_config(None, overrides, EvalRunConfig)


def _suite_from_form(name: str, benchmarks: Any, data: list[str], limit: int | None, allowed: tuple[Path, ...],
                     cwd: Path) -> SuiteConfig:
    from lorakit.eval.suite import quick_tasks

    tasks = [_benchmark_task(row, allowed, cwd) for row in _rows(benchmarks)]
    tasks += [{"kind": task.kind, "name": task.name, "data": {"paths": list(task.data.paths)}, "limit": limit}
              for task in quick_tasks(data)]
    if not tasks:
        raise ConfigError("Nothing to evaluate on: pick a suite, fill in a benchmark row, or pick a held-out dataset.")
    tasks = [{key: value for key, value in task.items() if value not in (None, "", [])} for task in tasks]
    return load_config(None, [f"name={json.dumps(name)}", f"tasks={json.dumps(tasks)}"], SuiteConfig)


def _rows(benchmarks: Any) -> list[dict[str, Any]]:
    """The benchmark table's filled rows as {column: text}."""
    if benchmarks is None:
        return []
    frame = benchmarks if isinstance(benchmarks, pd.DataFrame) else pd.DataFrame(benchmarks, columns=BENCHMARK_COLUMNS)
    rows = [{column: str(value).strip() if value is not None and str(value) != "nan" else ""
             for column, value in zip(BENCHMARK_COLUMNS, row)} for row in frame.itertuples(index=False)]
    return [row for row in rows if any(row.values())]


def _benchmark_task(row: dict[str, Any], allowed: tuple[Path, ...], cwd: Path) -> dict[str, Any]:
    """One benchmark row as a suite task: a choice benchmark (MMLU, C-Eval, CMMLU layout) or GSM8K."""
    source = row["source"]
    if source and (source.startswith((".", "/", "~")) or (cwd / source).exists()):
        source = str(confine(source, allowed, cwd))  # a folder or file; anything else is a hub id
    kind = row["kind"] or ("gsm8k" if "gsm8k" in source.lower() else "choice")
    return {"name": row["name"] or Path(source).stem or kind, "kind": kind, "source": source,
            "subjects": [s.strip() for s in re.split(r"[,\s]+", row["subjects"]) if s.strip()],
            "shots": _integer(row["shots"], "shots"), "limit": _integer(row["limit"], "limit")}


def _integer(value: str, column: str) -> int | None:
    if not value:
        return None
    try:
        return int(float(value))
    except ValueError:
        raise ConfigError(f"Benchmark column '{column}' must be a whole number, got '{value}'.") from None


def eval_command(run: EvalRunConfig) -> str:
    """The command that repeats the evaluation: `lorakit eval <its folder>/config.yaml`."""
    return shlex.join(["lorakit", "eval", str(Path(run.output_dir) / "config.yaml")])


def start_evaluation_job(run: EvalRunConfig, suite: SuiteConfig | None) -> Path:
    """Write the evaluation's config.yaml (and the built suite.yaml) and start `lorakit eval` on it as a job;
    returns its folder. ConfigError while a job still runs there."""
    folder = Path(run.output_dir)
    job = job_in(folder)
    if job is not None and job.state == "running":
        raise ConfigError(f"An evaluation is still running in {folder}; stop it first, or choose another name.")
    if suite is not None:
        save_config(suite, Path(run.suite))
    save_config(run, folder / "config.yaml")
    start_job("eval", folder / "config.yaml", folder)
    return folder


def _yaml(run: EvalRunConfig, suite: SuiteConfig | None) -> str:
    import yaml

    from lorakit.config import to_dict

    shown = yaml.safe_dump(to_dict(run), sort_keys=False, allow_unicode=True)
    if suite is not None:
        shown += f"# {run.suite}\n" + yaml.safe_dump(to_dict(suite), sort_keys=False, allow_unicode=True)
    return shown


# --- what the page lists and shows ----------------------------------------------------------------------------------


def adapter_runs(config: WebUIConfig) -> list[str]:
    """Training runs under outputs/ that hold an adapter, newest first."""
    if not config.outputs.is_dir():
        return []
    return [summary.path.name for summary in list_runs(config.outputs)
            if summary.path != config.outputs and (summary.path / "adapter" / "adapter_config.json").is_file()]


def suite_files(config: WebUIConfig, from_form: str, cwd: Path | None = None) -> list[tuple[str, str]]:
    """(`from_form`, "") for a suite built from the form, then every suite YAML (one with `tasks:`) under the
    working directory."""
    import yaml

    cwd = Path.cwd() if cwd is None else cwd
    found = []
    for path in files_under(cwd, SEARCH_DEPTH, skip=(cwd / config.outputs).resolve()):
        if path.suffix in (".yaml", ".yml"):
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                continue
            if isinstance(raw, dict) and "tasks" in raw:
                found.append(display_path(path, cwd))
    return [(from_form, _FROM_FORM), *((name, name) for name in sorted(found))]


def past_evaluations(config: WebUIConfig) -> list[tuple[str, str]]:
    """Evaluation folders under outputs/eval (newest first), and outputs/eval itself where `lorakit eval` wrote a
    report there by default; as (label, folder name) for a dropdown."""
    root = config.outputs / EVAL_DIR
    if not root.is_dir():
        return []
    folders = [child for child in root.iterdir() if child.is_dir() and _is_evaluation(child)]
    folders.sort(key=lambda folder: folder.stat().st_mtime, reverse=True)
    choices = [(folder.name, folder.name) for folder in folders]
    return choices + ([(str(root), ".")] if _is_evaluation(root) and (root / "report.json").is_file() else [])


def _is_evaluation(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("report.json", "job.json", "config.yaml"))


def _newest(config: WebUIConfig) -> str | None:
    running = [name for _, name in past_evaluations(config)
               if (job := job_in(_folder(config, name))) is not None and job.state == "running"]
    choices = past_evaluations(config)
    return running[0] if running else (choices[0][1] if choices else None)


def _folder(config: WebUIConfig, name: str | None) -> Path:
    if not name or not re.fullmatch(r"[\w.-]+", name) or name == "..":
        raise ConfigError(f"'{name}' is no evaluation under {config.outputs / EVAL_DIR}.")
    return config.outputs / EVAL_DIR / name


def _status(config: WebUIConfig, language: str, name: str | None) -> tuple[str, str]:
    """The evaluation's state and its log's last lines."""
    if not name:
        return text("msg.no_run", language), ""
    folder = _folder(config, name)
    job = job_in(folder)
    state = job.state if job is not None else run_status(folder).state
    if job is None and not (folder / STATUS_FILE).is_file() and (folder / "report.json").is_file():
        state = "finished"  # a report `lorakit eval` wrote before it recorded status.json
    lines = [text("state", language, state=text(f"state.{state}", language))]
    detail = run_status(folder).detail
    if detail and state != "running":
        lines.append(detail)
    log_file = folder / "eval.log"
    log = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_LINES:]) \
        if log_file.is_file() else ""
    return "  \n".join(lines), log


def _report_view(config: WebUIConfig, name: str | None, showing: str) -> tuple[Any, ...]:
    """The report parts (summary, scores, radar, deltas, details choices, what they show), or no change where the
    report shown is already this one."""
    folder = _folder(config, name) if name else None
    report_file = folder / "report.json" if folder is not None else None
    if report_file is None or not report_file.is_file():
        return ("", None, _image(None), _image(None), gr.update(choices=[], value=None), "") if showing \
            else (gr.update(),) * 6
    identity = f"{folder}@{report_file.stat().st_mtime_ns}"
    if identity == showing:
        return (gr.update(),) * 6
    report = read_json_dict(report_file)
    items = detail_files(folder)
    return (report_summary(report), scores_table(report), _image(folder / "radar.png"), _image(folder / "deltas.png"),
            gr.update(choices=items, value=items[0] if items else None), identity)


def report_summary(report: dict[str, Any]) -> str:
    """The report's first part, as report.md says it: each model against the reference, what dropped and what
    improved beyond noise (the charts are shown beside it, not linked)."""
    from lorakit.eval.report import format_markdown

    return format_markdown(report).split("\n## All scores", 1)[0]


def scores_table(report: dict[str, Any]) -> pd.DataFrame:
    """Every score of every model (± one standard error), as report.md's table."""
    from lorakit.eval.report import score_rows

    return pd.DataFrame(score_rows(report), columns=["score", *report["models"], "n"])


def detail_files(folder: Path) -> list[str]:
    """The per-sample files of an evaluation, as `model/task/file.jsonl` under its details/ folder."""
    details = folder / "details"
    return sorted(str(path.relative_to(details)) for path in details.glob("*/*/*.jsonl")) if details.is_dir() else []


def predictions_table(folder: Path, item: str | None) -> pd.DataFrame | None:
    """The first rows of one per-sample file (predictions, per-question records), nested values as JSON text."""
    if not item:
        return None
    path = (folder / "details" / item).resolve()
    if not path.is_relative_to((folder / "details").resolve()) or not path.is_file():
        return None
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if len(rows) >= PREDICTIONS_SHOWN:
                break
            record = json.loads(line)
            rows.append({key: value if isinstance(value, (str, int, float)) or value is None
                         else json.dumps(value, ensure_ascii=False) for key, value in record.items()})
    return pd.DataFrame(rows)


def _image(path: Path | None) -> dict[str, Any]:
    """A chart the report drew, or a hidden image where it drew none (a radar needs three 0-100 scores, the delta
    chart a second model)."""
    if path is None or not path.is_file():
        return gr.update(value=None, visible=False)
    return gr.update(value=str(path), visible=True)


def _data_files(config: WebUIConfig) -> list[str]:
    from lorakit.webui.data_tab import REGISTRY_MARK

    return [source for source in data_sources(config) if REGISTRY_MARK not in source]


def _model_names() -> list[str]:
    from lorakit.bundled import list_models

    return [item.name for item in list_models()]
