"""`lorakit webui`: `build_app(config)` makes the Gradio page, `launch(config)` serves it.

The page holds no logic of its own: each tab (a module `<name>_tab.py` with `build(page)`) builds the same configs
as the CLI and starts the same `lorakit` commands as jobs (lorakit.jobs); what it shows of a run it reads from the run
folder (lorakit.runs), so a reloaded or reopened page re-attaches to running jobs and shows past runs.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from lorakit.config import WebUIConfig
from lorakit.webui import chat_tab, data_tab, eval_tab, export_tab, train_tab
from lorakit.webui.i18n import LANGUAGE_NAMES, text
from lorakit.webui.page import Page

# (i18n key tab.<name> and elem_id tab-<name>, module with build(page))
TABS = [("train", train_tab), ("data", data_tab), ("evaluate", eval_tab), ("chat", chat_tab), ("export", export_tab)]


def build_app(config: WebUIConfig) -> gr.Blocks:
    """The whole page: a language switch, then the tabs."""
    language = config.language
    with gr.Blocks(title="lorakit") as app:
        page = Page(config, app, gr.State(language), language)
        with gr.Row():
            page.add(gr.Markdown(text("title", language)), "title")
            switch = page.add(gr.Radio(list(LANGUAGE_NAMES.values()), value=LANGUAGE_NAMES[language],
                                       label=text("language", language), elem_id="language", scale=0), "language")
        for name, module in TABS:
            with page.add(gr.Tab(text(f"tab.{name}", language), elem_id=f"tab-{name}"), f"tab.{name}"):
                module.build(page)
        for hook in page.hooks:
            hook()
        components = [component for component, _ in page.labelled]
        switch.change(lambda name: _relabel(name, page.labelled), switch, [page.lang, *components])
    return app


def _relabel(language_name: str, labelled: list[tuple[Any, str]]) -> list[Any]:
    language = next(code for code, name in LANGUAGE_NAMES.items() if name == language_name)
    updates = []
    for component, key in labelled:
        if isinstance(component, gr.Markdown):
            updates.append(gr.update(value=text(key, language)))
        elif isinstance(component, gr.Button):
            updates.append(gr.update(value=text(key, language)))
        elif isinstance(component, gr.Tab):
            updates.append(gr.update(label=text(key, language)))
        else:
            info = f"{key}.info"
            extra = {"info": text(info, language)} if info in _keys(language) else {}
            updates.append(gr.update(label=text(key, language), **extra))
    return [language, *updates]


def _keys(language: str) -> set[str]:
    from lorakit.webui.i18n import STRINGS

    return set(STRINGS[language])


def launch(config: WebUIConfig) -> None:
    """Serve the page at `config.host:config.port` until interrupted; uploads go to a folder the UI owns."""
    import os

    from lorakit.webui.safety import UPLOAD_DIR

    os.environ.setdefault("GRADIO_TEMP_DIR", str((config.outputs / UPLOAD_DIR / ".incoming").resolve()))
    build_app(config).launch(server_name=config.host, server_port=config.port, auth=config.credentials,
                             max_file_size=f"{config.max_upload_mb}mb", footer_links=[], inbrowser=False)


__all__ = ["build_app", "launch"]
