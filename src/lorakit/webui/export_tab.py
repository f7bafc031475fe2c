"""The Export tab: a finished run merged, written as GGUF (of a chosen type) or an Ollama folder, or uploaded to the
Hub, by the same `lorakit merge` / `lorakit export` command run as a job (export_form.py); its log, and the checks
the export ran (merge check, perplexity of each GGUF) in a table, read from the run's exports/ folder.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from lorakit.config import WebUIConfig
from lorakit.config.export import GGUF_OUTTYPES
from lorakit.errors import LorakitError
from lorakit.webui.chat_session import adapter_runs, model_runs
from lorakit.webui.export_form import KINDS, export_request, export_status, start_export, verification
from lorakit.webui.i18n import text
from lorakit.webui.page import Page
from lorakit.webui.safety import allowed_folders, confine, display_path

REFRESH_SECONDS = 1.0
LOG_LINES = 30


def build(page: Page) -> None:
    """The tab's components and events; called inside its gr.Tab."""
    config = page.config
    runs = _runs(config)
    with gr.Row():
        run = page.field(gr.Dropdown(runs, value=runs[0] if runs else None, allow_custom_value=True), "export.run")
        kind = page.field(gr.Radio(list(KINDS), value="gguf"), "export.kind")
        quantization = page.field(gr.Dropdown(list(GGUF_OUTTYPES), value="q8_0"), "export.type")
        repo_id = page.field(gr.Textbox(placeholder="user/model"), "export.repo_id")
    with gr.Row():
        start = page.add(gr.Button(page.text("export.start"), variant="primary", elem_id="export-start"),
                         "export.start")
        refresh = page.add(gr.Button(page.text("refresh"), scale=0, elem_id="export-refresh"), "refresh")
    message = gr.Markdown(elem_id="export-message")
    status = gr.Markdown(elem_id="export-status")
    checks = page.add(gr.Dataframe(_table([], page.language), label=page.text("export.checks"), interactive=False,
                                   elem_id="export-checks"), "export.checks")
    log = page.add(gr.Textbox(label=page.text("log"), lines=10, max_lines=10, elem_id="export-log"), "log")
    timer = gr.Timer(REFRESH_SECONDS)

    start.click(lambda *values: _start(config, *values), [page.lang, run, kind, quantization, repo_id], message)
    for trigger in (run.change, timer.tick):
        trigger(lambda language, name: _live_view(config, language, name), [page.lang, run], [status, checks, log])
    refresh.click(lambda name: gr.update(choices=_runs(config), value=name or next(iter(_runs(config)), None)),
                  run, run)
    page.app.load(lambda name: gr.update(choices=_runs(config), value=name or next(iter(_runs(config)), None)),
                  run, run)


def _runs(config: WebUIConfig) -> list[str]:
    return adapter_runs(config) + model_runs(config)


def _start(config: WebUIConfig, language: str, run: str | None, kind: str, quantization: str, repo_id: str) -> str:
    try:
        request = export_request(run or "", kind, quantization, repo_id, config)
        job = start_export(request)
    except LorakitError as err:
        return text("msg.error", language, message=err)
    return text("export.started", language, what=kind, run=run, pid=job.pid)


def _live_view(config: WebUIConfig, language: str, run: str | None):
    """The state of the run's latest export, its checks and its log tail."""
    if not run:
        return text("export.none", language), _table([], language), ""
    try:
        current = export_status(confine(run, allowed_folders(config)))
    except LorakitError as err:
        return text("msg.error", language, message=err), _table([], language), ""
    if current is None:
        return text("export.none", language), _table([], language), ""
    line = text("state", language, state=text(f"state.{current.state}", language))
    where = f" · `{display_path(current.output, Path.cwd())}`" if current.output is not None else ""
    reason = f"  \n{current.reason}" if current.reason else ""
    log = "\n".join(current.log.splitlines()[-LOG_LINES:])
    return f"{current.kind}: {line}{where}{reason}", _table(verification(current), language), log


def _table(rows: list[tuple[str, str]], language: str) -> pd.DataFrame:
    named = []
    for key, value in rows:
        base, _, detail = key.partition(":")
        named.append([text(base, language) + (f" {detail}" if detail else ""), value])
    return pd.DataFrame(named, columns=[text("export.check", language), text("export.value", language)])
