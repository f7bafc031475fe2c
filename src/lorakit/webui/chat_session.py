"""What the Chat tab talks to: the model and adapter each side names (resolved as `lorakit chat` resolves them),
models loaded once and kept in a small cache, and replies of several sides streamed at once.

The tab (chat_tab.py) only shows what these return; the conversation itself is infer's `Chat`, the generation
infer's `stream_generate`.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lorakit.config import GenerationConfig, ModelConfig, WebUIConfig
from lorakit.errors import ConfigError
from lorakit.infer import Chat, inference_model, load_for_inference
from lorakit.runs import open_run
from lorakit.webui.safety import allowed_folders, confine, confine_model, display_path

NO_ADAPTER = "none"  # the adapter choice that talks to the base model alone


@dataclass(frozen=True)
class ChatTarget:
    """One side of the chat: the model to load and the adapter folder on it (None: the model alone)."""

    model: ModelConfig
    adapter_dir: Path | None

    def describe(self) -> str:
        """The model and adapter, folders shown from the working directory where they lie in it."""
        cwd = Path.cwd()
        adapter = f" + {display_path(self.adapter_dir, cwd)}" if self.adapter_dir else ""
        return (display_path(Path(self.model.name), cwd) if Path(self.model.name).is_absolute() else self.model.name) \
            + adapter


def chat_target(model: str | None, adapter: str | None, config: WebUIConfig, cwd: Path | None = None) -> ChatTarget:
    """What `lorakit chat --model MODEL --adapter ADAPTER` would load: no model means the adapter's own base (else
    the default model); adapter `none` (or empty) the model alone. Paths are confined to the allowed folders."""
    allowed = allowed_folders(config, cwd)
    adapter_path = None if (adapter or NO_ADAPTER).strip() == NO_ADAPTER else confine(adapter, allowed, cwd)
    name = confine_model(model, allowed, cwd) if model and model.strip() else None
    model_config, adapter_dir = inference_model(name, adapter_path)
    return ChatTarget(model_config, adapter_dir)


def side_targets(model: str | None, adapter: str | None, adapter_b: str | None, side_by_side: bool,
                 config: WebUIConfig, cwd: Path | None = None) -> list[ChatTarget]:
    """The left side (model + adapter) and, side by side, the right one: `adapter_b` on the same model, where
    adapter_b `none` means the left side's base model alone (base vs tuned)."""
    left = chat_target(model, adapter, config, cwd)
    if not side_by_side:
        return [left]
    alone = (adapter_b or NO_ADAPTER).strip() == NO_ADAPTER
    return [left, chat_target(model or (left.model.name if alone else None), adapter_b, config, cwd)]


def adapter_runs(config: WebUIConfig) -> list[str]:
    """The run folders under `config.outputs` that hold an adapter, as paths a chat side can name, newest first."""
    return [str(path) for path, is_adapter in _trained(config) if is_adapter]


def model_runs(config: WebUIConfig) -> list[str]:
    """The run folders under `config.outputs` that hold a whole model (full or freeze runs), newest first."""
    return [str(path) for path, is_adapter in _trained(config) if not is_adapter]


def _trained(config: WebUIConfig) -> list[tuple[Path, bool]]:
    from lorakit.runs import list_runs

    if not config.outputs.is_dir():
        return []
    found = []
    for summary in list_runs(config.outputs):
        if summary.path == config.outputs or summary.status.state != "finished":
            continue
        try:
            found.append((config.outputs / summary.path.name, open_run(summary.path).is_adapter))
        except ConfigError:
            continue  # a finished run whose weights were moved away: nothing to chat with
    return found


class ModelCache:
    """Models loaded for chat by (model, adapter), with their tokenizer and template; the `size` most recently used
    stay in memory, so each choice is loaded once while the page is used. Safe to share between browser sessions."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._loaded: OrderedDict[tuple[str, str | None], tuple[Any, Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, target: ChatTarget) -> tuple[Any, Any, Any]:
        """(model, tokenizer, template) of `target`, loaded on first use."""
        key = (target.model.name, str(target.adapter_dir) if target.adapter_dir else None)
        with self._lock:
            if key not in self._loaded:
                while len(self._loaded) >= self.size:
                    self._loaded.popitem(last=False)
                self._loaded[key] = load_for_inference(target.model, target.adapter_dir)
            self._loaded.move_to_end(key)
            return self._loaded[key]

    def __contains__(self, target: ChatTarget) -> bool:
        return (target.model.name, str(target.adapter_dir) if target.adapter_dir else None) in self._loaded


def open_side(loaded: tuple[Any, Any, Any], history: list[dict], system: str | None, settings: GenerationConfig,
              thinking: bool | None = None) -> Chat:
    """A `Chat` on a cached model that continues `history` (role/content messages) with the page's settings.

    `thinking` sets the template's enable_thinking where it has that switch (qwen3; None keeps what the run was
    trained with); other templates ignore it."""
    model, tokenizer, template = loaded
    if thinking is not None and has_thinking_switch(template):
        template = replace(template, thinking=thinking)
    chat = Chat(model, tokenizer, template, replace(settings, batch_size=1), system or None)
    chat.history = [{"role": message["role"], "content": message["content"]} for message in history]
    return chat


def has_thinking_switch(template: Any) -> bool:
    return "enable_thinking" in template.jinja


def stream_together(streams: Sequence[Iterator[str]]) -> Iterator[list[str]]:
    """The texts of several streamed replies so far, after each new piece of any of them, while they generate at
    the same time (each stream is read in a thread of its own).

    An error in one stream is raised here once the others have ended. Closing this iterator stops every stream
    after its next piece.
    """
    pieces: queue.Queue[tuple[int, str | None | BaseException]] = queue.Queue()
    stop = threading.Event()

    def pump(index: int, stream: Iterator[str]) -> None:
        try:
            for piece in stream:
                pieces.put((index, piece))
                if stop.is_set():
                    break
        except BaseException as error:  # handed to the reader, which raises it
            pieces.put((index, error))
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            pieces.put((index, None))

    threads = [threading.Thread(target=pump, args=(index, stream), daemon=True, name=f"lorakit-chat-{index}")
               for index, stream in enumerate(streams)]
    for thread in threads:
        thread.start()
    texts, running, failure = [""] * len(threads), len(threads), None
    try:
        while running:
            index, item = pieces.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                failure = failure or item
            else:
                texts[index] += item
                yield list(texts)
        if failure is not None:
            raise failure
    finally:
        stop.set()
