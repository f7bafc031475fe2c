"""What every tab of the web UI shares: the settings, the language, and the labels to switch with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from lorakit.config import WebUIConfig
from lorakit.webui.i18n import text


@dataclass
class Page:
    """One page being built: each tab's `build(page)` adds its components and events to it.

    `language` is the language the page opens in; `lang` holds the one chosen on the page, for event handlers.
    Components added with `add(component, key)` are relabelled when the language changes. A tab that wires an
    event to another tab's component does it in a hook given to `after_tabs`, run once every tab is built.
    """

    config: WebUIConfig
    app: gr.Blocks
    lang: gr.State
    language: str
    labelled: list[tuple[Any, str]] = field(default_factory=list)
    hooks: list[Callable[[], None]] = field(default_factory=list)

    def add(self, component: Any, key: str) -> Any:
        self.labelled.append((component, key))
        return component

    def field(self, component: Any, key: str) -> Any:
        """`component` labelled `key` with the tooltip `key.info` and the element id of `key` in kebab case
        (chat.max_new_tokens: chat-max-new-tokens), relabelled when the language changes."""
        component.label, component.info = self.text(key), self.text(f"{key}.info")
        component.elem_id = key.replace(".", "-").replace("_", "-")
        return self.add(component, key)

    def find(self, key: str) -> Any:
        """The component added with `key` (the first one, where several share it)."""
        return next(component for component, name in self.labelled if name == key)

    def after_tabs(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    def text(self, key: str, **values: Any) -> str:
        return text(key, self.language, **values)
