"""The Data tab: pick, type or upload a dataset (or a `dataset_info.json` entry) and look at it as `lorakit data
check|stats|preview` do, with the same functions (lorakit.data.inspect): format, bad records, token lengths
against max_seq_len, and examples with the trained part highlighted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from lorakit.config import TrainConfig, WebUIConfig, load_config
from lorakit.data.read import FILE_SUFFIXES
from lorakit.data.registry import REGISTRY_FILE
from lorakit.errors import LorakitError
from lorakit.webui.i18n import text
from lorakit.webui.page import Page
from lorakit.webui.safety import (SEARCH_DEPTH, UPLOAD_DIR, allowed_folders, display_path, files_under,
                                  keep_upload)
from lorakit.webui.train_form import REGISTRY_MARK, data_overrides, model_override

PREVIEW_COUNT = 3
_TRAINED = "trained"


@dataclass
class DataView:
    """What the tab shows of one dataset; each part empty where it could not be made (`error` says why)."""

    summary: str = ""
    check: str = ""
    problems: list[tuple[str, str]] = field(default_factory=list)
    stats: str = ""
    histogram: Any = None
    examples: list[tuple[str, str | None]] = field(default_factory=list)
    error: str = ""


def build(page: Page) -> None:
    """The tab's components and events; called inside its gr.Tab."""
    config = page.config
    with gr.Row():
        source = page.add(gr.Dropdown(data_sources(config), label=page.text("data.source"),
                                      info=page.text("data.source.info"), allow_custom_value=True, scale=3,
                                      elem_id="data-source"), "data.source")
        upload = page.add(gr.File(label=page.text("data.upload"), file_types=list(FILE_SUFFIXES), type="filepath",
                                  scale=1, elem_id="data-upload"), "data.upload")
    with gr.Row():
        model = page.add(gr.Dropdown(_model_names(), value="smollm2-135m", label=page.text("data.model"),
                                     info=page.text("data.model.info"), allow_custom_value=True,
                                     elem_id="data-model"), "data.model")
        template = page.add(gr.Dropdown(_template_names(), value="auto", label=page.text("template"),
                                        info=page.text("template.info"), elem_id="data-template"), "template")
        max_seq_len = page.add(gr.Number(1024, precision=0, label=page.text("max_seq_len"),
                                         info=page.text("max_seq_len.info"), elem_id="data-max_seq_len"),
                               "max_seq_len")
    with gr.Row():
        inspect = page.add(gr.Button(page.text("data.inspect"), variant="primary", elem_id="data-inspect"),
                           "data.inspect")
        use = page.add(gr.Button(page.text("data.use"), elem_id="data-use"), "data.use")
    message = gr.Markdown(elem_id="data-message")
    summary = gr.Markdown(elem_id="data-summary")
    problems = page.add(gr.Dataframe(pd.DataFrame(columns=["where", "problem"]), label=page.text("data.problems"),
                                     interactive=False, wrap=True, column_widths=["35%", "65%"],
                                     elem_id="data-problems"), "data.problems")
    check = page.add(gr.Textbox(label=page.text("data.check"), lines=6, max_lines=20, elem_id="data-check"),
                     "data.check")
    stats = page.add(gr.Textbox(label=page.text("data.stats"), lines=7, elem_id="data-stats"), "data.stats")
    histogram = page.add(gr.Plot(label=page.text("data.histogram"), elem_id="data-histogram"), "data.histogram")
    examples = page.add(gr.HighlightedText(label=page.text("data.examples"), color_map={_TRAINED: "green"},
                                           show_legend=True, combine_adjacent=True, elem_id="data-examples"),
                        "data.examples")

    def show(language: str, chosen: str | None, model_name: str, template_name: str, length: float):
        view = inspect_dataset(config, language, chosen, model_name, template_name, length)
        table = pd.DataFrame(view.problems, columns=["where", "problem"])
        return (view.error, view.summary, table, view.check, view.histogram, view.stats, view.examples)

    def uploaded(language: str, path: str | None):
        if not path:
            return gr.update(), ""
        try:
            kept = keep_upload(Path(path), config)
        except LorakitError as err:
            return gr.update(), text("msg.error", language, message=err)
        name = display_path(kept, Path.cwd())
        return gr.update(choices=data_sources(config), value=name), text("data.msg.uploaded", language, path=name)

    inputs = [page.lang, source, model, template, max_seq_len]
    inspect.click(show, inputs, [message, summary, problems, check, histogram, stats, examples])
    upload.upload(uploaded, [page.lang, upload], [source, message]).then(
        show, inputs, [message, summary, problems, check, histogram, stats, examples])
    page.app.load(lambda: gr.update(choices=data_sources(config)), None, source)

    def use_for_training() -> None:
        data_path = page.find("data_path")
        use.click(lambda language, chosen: _use(language, chosen), [page.lang, source], [data_path, message])

    page.after_tabs(use_for_training)


def data_sources(config: WebUIConfig, cwd: Path | None = None) -> list[str]:
    """Data files under the working directory (and the UI's uploads), then each entry of a dataset_info.json
    found there, written `NAME @ folder/dataset_info.json`; paths relative to the working directory."""
    cwd = Path.cwd() if cwd is None else cwd
    outputs = (cwd / config.outputs).resolve()
    files, registries = [], []
    for path in [*files_under(cwd, SEARCH_DEPTH, skip=outputs), *files_under(outputs / UPLOAD_DIR, 0)]:
        if path.name == REGISTRY_FILE:
            registries.append(path)
        elif path.suffix.lower() in FILE_SUFFIXES and path.is_file():
            files.append(display_path(path, cwd))
    entries = []
    for registry in registries:
        try:
            names = list(json.loads(registry.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            continue  # a broken registry is reported when one of its names is inspected, not while listing
        entries += [f"{name}{REGISTRY_MARK}{display_path(registry, cwd)}" for name in names]
    return sorted(files) + entries


def inspect_dataset(config: WebUIConfig, language: str, chosen: str | None, model: str, template: str,
                    max_seq_len: float | None, cwd: Path | None = None) -> DataView:
    """Check the dataset `chosen` as `lorakit data check` does; where records pass, measure and preview them with
    the tokenizer of `model` as `lorakit data stats|preview` do."""
    from lorakit.data.inspect import check_data, format_check, split_origin

    cwd = Path.cwd() if cwd is None else cwd
    view = DataView()
    try:
        train_config = _train_config(chosen, config, model, template, max_seq_len, cwd)
        report = check_data(train_config.data, train_config.stage)
    except LorakitError as err:
        view.error = text("msg.error", language, message=err)
        return view
    view.check = format_check(report, shown=20)
    view.problems = [split_origin(problem) for problem in report.problems]
    formats = ", ".join(sorted(set(report.formats.values()))) or "-"
    view.summary = text("data.summary", language, format=formats, read=report.read, used=report.used,
                        bad=len(report.problems))
    if report.conversations:
        try:
            _measure(view, report.conversations, train_config)
        except LorakitError as err:
            view.error = text("msg.error", language, message=err)
    return view


def _train_config(chosen: str | None, config: WebUIConfig, model: str, template: str, max_seq_len: float | None,
                  cwd: Path) -> TrainConfig:
    """The config `lorakit data check FILE model.name=... data.template=... data.max_seq_len=...` builds."""
    allowed = allowed_folders(config, cwd)
    overrides = [*data_overrides(chosen, config, cwd), f"model.name={model_override(model or '', allowed, cwd)}",
                 f"data.template={json.dumps(template or 'auto')}"]
    if max_seq_len:
        overrides.append(f"data.max_seq_len={int(max_seq_len)}")
    return load_config(None, overrides, TrainConfig)


def _measure(view: DataView, conversations: list, config: TrainConfig) -> None:
    from lorakit.data.inspect import dataset_stats, format_stats, length_histogram, preview_blocks
    from lorakit.model import load_tokenizer
    from lorakit.templates import resolve_template

    tokenizer = load_tokenizer(config.model)
    template = resolve_template(config.data.template, tokenizer)
    stats = dataset_stats(conversations, tokenizer, template, config.data)
    view.stats = format_stats(stats)
    view.histogram = length_histogram(stats.lengths, config.data.max_seq_len, config.data.overlong)
    for block in preview_blocks(conversations, tokenizer, template, config.data, PREVIEW_COUNT):
        view.examples.append((block.header + "\n", None))
        view.examples += [(piece, _TRAINED if trained else None) for piece, trained in block.pieces]
        view.examples.append((block.note + "\n\n", None))


def _use(language: str, chosen: str | None):
    if not chosen:
        return gr.update(), text("data.msg.use_file", language)
    return chosen, text("data.msg.used", language, path=chosen)


def _model_names() -> list[str]:
    from lorakit.bundled import list_models

    return [item.name for item in list_models()]


def _template_names() -> list[str]:
    from lorakit.templates import TEMPLATES

    return ["auto", *TEMPLATES]

