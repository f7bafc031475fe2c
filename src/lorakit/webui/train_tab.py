"""The Train tab: a form that builds a TrainConfig (train_form.py), start/stop/resume of the `lorakit train` job,
and a live view (status, loss curve, log) read from the run folder, so a reloaded page re-attaches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from lorakit.config import WebUIConfig
from lorakit.errors import LorakitError
from lorakit.jobs import job_in, list_jobs, resume_job, start_training, stop_job
from lorakit.runs import is_run_folder, list_runs, read_json_dict, read_metrics_log, read_progress, run_status
from lorakit.webui.i18n import text
from lorakit.webui.page import Page
from lorakit.webui.train_form import FIELDS, METHODS, build_train_config, train_command

REFRESH_SECONDS = 1.0
LOG_LINES = 40


def build(page: Page) -> None:
    """The tab's components and events; called inside its gr.Tab."""
    form = _train_form(page.language, page.add)
    with gr.Row():
        show = page.add(gr.Button(page.text("show_config"), elem_id="show-config"), "show_config")
        estimate = page.add(gr.Button(page.text("estimate_memory"), elem_id="estimate-memory"), "estimate_memory")
        start = page.add(gr.Button(page.text("start"), variant="primary", elem_id="start"), "start")
        stop = page.add(gr.Button(page.text("stop"), variant="stop", elem_id="stop"), "stop")
        resume = page.add(gr.Button(page.text("resume"), elem_id="resume"), "resume")
    message = gr.Markdown(elem_id="message")
    with gr.Row():
        run = page.add(gr.Dropdown(_run_names(page.config), label=page.text("run"), info=page.text("run.info"),
                                   allow_custom_value=True, elem_id="run"), "run")
        refresh = page.add(gr.Button(page.text("refresh"), scale=0), "refresh")
    status = gr.Markdown(elem_id="status")
    plot = page.add(gr.LinePlot(None, x="step", y="loss", color="split", label=page.text("loss_plot"),
                                elem_id="loss-plot"), "loss_plot")
    log = page.add(gr.Textbox(label=page.text("log"), lines=10, max_lines=10, elem_id="log"), "log")
    with gr.Row():
        config_yaml = page.add(gr.Code(language="yaml", label=page.text("config_yaml")), "config_yaml")
        metrics = page.add(gr.JSON(label=page.text("metrics")), "metrics")
    command = page.add(gr.Textbox(label=page.text("command"), elem_id="command"), "command")
    runs_table = page.add(gr.Dataframe(_runs_table(page.config), label=page.text("runs_table"),
                                       interactive=False), "runs_table")
    compared = page.add(gr.Dropdown(_run_names(page.config), multiselect=True, label=page.text("compare"),
                                    info=page.text("compare.info"), elem_id="compare"), "compare")
    compare_plot = page.add(gr.LinePlot(None, x="step", y="loss", color="curve", label=page.text("compare_plot"),
                                        elem_id="compare-plot"), "compare_plot")
    timer = gr.Timer(REFRESH_SECONDS)

    inputs = [page.lang, *form]
    live = [status, plot, log, config_yaml, metrics]
    show.click(lambda *v: _show_config(page.config, *v), inputs, [config_yaml, command, message])
    estimate.click(lambda *v: _estimate_memory(page.config, *v), inputs, message)
    compared.change(lambda names: _compare_curves(page.config, names), compared, compare_plot)
    start.click(lambda *v: _start(page.config, *v), inputs, [message, run, command])
    stop.click(lambda lg, name: _stop(page.config, lg, name), [page.lang, run], message)
    resume.click(lambda lg, name: _resume(page.config, lg, name), [page.lang, run], message)
    for trigger in (run.change, timer.tick):
        trigger(lambda lg, name: _live_view(page.config, lg, name), [page.lang, run], live)
    config = page.config
    refresh.click(lambda name: (gr.update(choices=_run_names(config), value=name), _runs_table(config),
                                gr.update(choices=_run_names(config))), run, [run, runs_table, compared])
    page.app.load(lambda: (gr.update(choices=_run_names(config), value=_attach(config)), _runs_table(config),
                           gr.update(choices=_run_names(config))), None, [run, runs_table, compared])


def _train_form(language: str, add) -> list[Any]:
    from lorakit.bundled import list_models
    from lorakit.templates import TEMPLATES

    models = [item.name for item in list_models()]
    inputs = []
    with gr.Row():
        for field in FIELDS[:5]:
            if field.name == "model":
                widget = gr.Dropdown(models, value=field.default, allow_custom_value=True)
            elif field.name == "method":
                widget = gr.Dropdown(list(METHODS), value=field.default)
            elif field.name == "template":
                widget = gr.Dropdown(["auto", *TEMPLATES], value=field.default)
            else:
                widget = gr.Textbox(value=field.default)
            inputs.append(widget)
    with gr.Row():
        for field in FIELDS[5:]:
            inputs.append(gr.Number(value=field.default, precision=0 if field.integer else None, min_width=140))
    for widget, field in zip(inputs, FIELDS):
        widget.label, widget.info, widget.elem_id = text(field.name, language), text(f"{field.name}.info", language), \
            f"field-{field.name}"
        add(widget, field.name)
    return inputs


def _values(values: tuple[Any, ...]) -> dict[str, Any]:
    return {field.name: value for field, value in zip(FIELDS, values)}


def _show_config(config: WebUIConfig, language: str, *values: Any):
    try:
        train_config, overrides = build_train_config(_values(values), config)
    except LorakitError as err:
        return gr.update(), gr.update(), text("msg.error", language, message=err)
    import yaml

    from lorakit.config import to_dict

    return yaml.safe_dump(to_dict(train_config), sort_keys=False, allow_unicode=True), train_command(overrides), ""


def _estimate_memory(config: WebUIConfig, language: str, *values: Any) -> str:
    """The memory the form's run would need here, before it starts (weights are not loaded)."""
    from lorakit.model import load_tokenizer
    from lorakit.train import prepare_data
    from lorakit.train.memory import GIB, plan_memory, training_lengths

    try:
        train_config, _ = build_train_config(_values(values), config)
        data = prepare_data(train_config, load_tokenizer(train_config.model))  # tokenised and cached as training will
        plan = plan_memory(train_config, training_lengths(data, train_config))
    except LorakitError as err:
        return text("msg.error", language, message=err)
    verdict = text("msg.memory_fits", language) if plan.fits else text(
        "msg.memory_fallback", language, batch_size=plan.batch_size, fitted=plan.fitted_batch_size)
    return text("msg.memory", language, needed=plan.estimate.total / GIB, available=plan.available / GIB,
                detail=plan.estimate.describe(), verdict=verdict)


def _compare_curves(config: WebUIConfig, names: list[str] | None) -> pd.DataFrame | None:
    """The loss curves of several runs on one plot: one line per run and split ("run · eval")."""
    rows = []
    for name in names or []:
        curve = _curve(config.outputs / name) if (config.outputs / name).is_dir() else None
        if curve is not None:
            rows += [{"step": step, "loss": loss, "curve": name if split == "train" else f"{name} · {split}"}
                     for step, loss, split in curve.itertuples(index=False)]
    return pd.DataFrame(rows, columns=["step", "loss", "curve"]) if rows else None


def _start(config: WebUIConfig, language: str, *values: Any):
    try:
        train_config, overrides = build_train_config(_values(values), config)
        job = start_training(train_config)
    except LorakitError as err:
        return text("msg.error", language, message=err), gr.update(), gr.update()
    name = job.folder.name
    return (text("msg.started", language, run=name, pid=job.pid), gr.update(choices=_run_names(config), value=name),
            train_command(overrides))


def _stop(config: WebUIConfig, language: str, name: str | None):
    if not name:
        return text("msg.no_run", language)
    try:
        result = stop_job(config.outputs / name)
    except LorakitError as err:
        return text("msg.error", language, message=err)
    if not result.exited:
        return text("msg.stop_failed", language, run=name)
    how = text("msg.by_sigkill" if result.killed else "msg.by_sigterm", language)
    return text("msg.stopped", language, run=name, how=how, seconds=result.seconds)


def _resume(config: WebUIConfig, language: str, name: str | None):
    if not name:
        return text("msg.no_run", language)
    try:
        job = resume_job(config.outputs / name)
    except LorakitError as err:
        return text("msg.error", language, message=err)
    return text("msg.resumed", language, run=name, pid=job.pid)


def _live_view(config: WebUIConfig, language: str, name: str | None):
    """Status with progress and ETA, the loss curve, the log tail, config and metrics of the run `name`."""
    run_dir = config.outputs / name if name else None
    if run_dir is None or not is_run_folder(run_dir):
        return text("msg.no_run", language), None, "", "", None
    job = job_in(run_dir)
    state = job.state if job is not None else run_status(run_dir).state
    lines = [text("state", language, state=text(f"state.{state}", language))]
    progress = read_progress(run_dir)
    if progress.get("total"):
        lines.append(text("progress", language, completed=progress["completed"], total=progress["total"],
                          percent=100 * progress["completed"] / progress["total"],
                          speed=f"{progress.get('tokens_per_second') or 0:,.0f}",
                          elapsed=_duration(progress.get("elapsed_seconds")),
                          eta=_duration(progress.get("remaining_seconds") if state == "running" else 0)))
    detail = run_status(run_dir).detail
    if detail and state != "running":
        lines.append(detail)
    log_file = run_dir / f"{job.stage if job else 'train'}.log"
    log = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_LINES:]) \
        if log_file.is_file() else ""
    config_file = run_dir / "config.yaml"
    return ("  \n".join(lines), _curve(run_dir), log,
            config_file.read_text(encoding="utf-8") if config_file.is_file() else "",
            read_json_dict(run_dir / "metrics.json") or None)


def _curve(run_dir: Path) -> pd.DataFrame | None:
    """The run's logged losses for the plot; None before the first one.

    None, not an empty frame: Gradio 6's LinePlot, once given an empty frame with a color column, draws the axes of
    later updates but never their lines (seen in Chromium).
    """
    rows = [{"step": entry["step"], "loss": entry[key], "split": split} for entry in read_metrics_log(run_dir)
            for key, split in (("loss", "train"), ("eval_loss", "eval")) if key in entry]
    return pd.DataFrame(rows, columns=["step", "loss", "split"]) if rows else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _run_names(config: WebUIConfig) -> list[str]:
    if not config.outputs.is_dir():
        return []
    return [summary.path.name for summary in list_runs(config.outputs) if summary.path != config.outputs]


def _attach(config: WebUIConfig) -> str | None:
    """The run a freshly opened page shows: a running job's, else the newest run."""
    running = [job for job in list_jobs(config.outputs) if job.state == "running"]
    if running:
        return running[0].folder.name
    names = _run_names(config)
    return names[0] if names else None


def _runs_table(config: WebUIConfig) -> pd.DataFrame:
    columns = ["run", "status", "base model", "method", "steps", "train loss", "eval loss", "date"]
    if not config.outputs.is_dir():
        return pd.DataFrame(columns=columns)
    rows = [[summary.path.name, summary.status.state, summary.base_model, summary.method, summary.steps,
             summary.train_loss, summary.eval_loss, (summary.date or "")[:16]]
            for summary in list_runs(config.outputs) if summary.path != config.outputs]
    return pd.DataFrame(rows, columns=columns)


