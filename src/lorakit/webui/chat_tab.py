"""The Chat tab: talk to a base model, with or without a run's adapter, replies streaming; side by side, the same
message goes to two sides (base and tuned, or two adapters) and both answers stream next to each other.

Models load once and stay cached in the UI process (chat_session.ModelCache); each side's history is its chatbot.
"""

from __future__ import annotations

import gradio as gr

from lorakit.config import GenerationConfig, WebUIConfig
from lorakit.errors import LorakitError
from lorakit.webui.chat_session import (NO_ADAPTER, ModelCache, adapter_runs, model_runs, open_side, side_targets,
                                        stream_together)
from lorakit.webui.i18n import text
from lorakit.webui.page import Page

MODELS = ModelCache()
THINKING = ("auto", "on", "off")


def build(page: Page) -> None:
    """The tab's components and events; called inside its gr.Tab."""
    config = page.config
    adapters = adapter_runs(config)
    with gr.Row():
        model = page.field(gr.Dropdown(_model_choices(config), value=None, allow_custom_value=True), "chat.model")
        adapter = page.field(gr.Dropdown([NO_ADAPTER, *adapters], value=(adapters or [NO_ADAPTER])[0],
                                         allow_custom_value=True), "chat.adapter")
        side_by_side = page.field(gr.Checkbox(False), "chat.side_by_side")
        adapter_b = page.field(gr.Dropdown([NO_ADAPTER, *adapters], value=NO_ADAPTER, allow_custom_value=True,
                                           visible=False), "chat.adapter_b")
        refresh = page.add(gr.Button(page.text("refresh"), scale=0, elem_id="chat-refresh"), "refresh")
    with gr.Row():
        system = page.field(gr.Textbox(lines=1), "chat.system")
        temperature = page.field(gr.Slider(0.0, 2.0, value=0.7, step=0.05), "chat.temperature")
        top_p = page.field(gr.Slider(0.05, 1.0, value=0.9, step=0.05), "chat.top_p")
        max_new_tokens = page.field(gr.Slider(1, 2048, value=256, step=1), "chat.max_new_tokens")
        thinking = page.field(gr.Radio(list(THINKING), value="auto"), "chat.thinking")
    with gr.Row():
        chat_a = page.add(gr.Chatbot(label=page.text("chat.side_a"), elem_id="chat-a", height=360), "chat.side_a")
        chat_b = page.add(gr.Chatbot(label=page.text("chat.side_b"), elem_id="chat-b", height=360, visible=False),
                          "chat.side_b")
    with gr.Row():
        message = page.field(gr.Textbox(lines=2, scale=4), "chat.input")
        send = page.add(gr.Button(page.text("chat.send"), variant="primary", scale=0, elem_id="chat-send"),
                        "chat.send")
        stop = page.add(gr.Button(page.text("stop"), variant="stop", scale=0, elem_id="chat-stop"), "stop")
        clear = page.add(gr.Button(page.text("chat.clear"), scale=0, elem_id="chat-clear"), "chat.clear")
    status = gr.Markdown(elem_id="chat-status")

    side_by_side.change(lambda on: (gr.update(visible=on), gr.update(visible=on)), side_by_side,
                        [adapter_b, chat_b])
    inputs = [page.lang, model, adapter, side_by_side, adapter_b, system, temperature, top_p, max_new_tokens,
              thinking, message, chat_a, chat_b]

    def reply(*values):  # a generator function itself: Gradio streams only those
        yield from _reply(config, *values)

    # Stop cancels the event; closing its generator stops both generations after their token in flight.
    replies = [trigger(reply, inputs, [chat_a, chat_b, status, message]) for trigger in (send.click, message.submit)]
    stop.click(None, None, None, cancels=replies)
    clear.click(lambda: ([], [], ""), None, [chat_a, chat_b, status])

    def choices(current_a: str, current_b: str):
        runs = [NO_ADAPTER, *adapter_runs(config)]
        return (gr.update(choices=_model_choices(config)), gr.update(choices=runs, value=_keep(current_a, runs)),
                gr.update(choices=runs, value=current_b))

    refresh.click(choices, [adapter, adapter_b], [model, adapter, adapter_b])
    page.app.load(choices, [adapter, adapter_b], [model, adapter, adapter_b])


def _model_choices(config: WebUIConfig) -> list[str]:
    from lorakit.bundled import list_models

    return [item.name for item in list_models()] + model_runs(config)


def _keep(current: str | None, runs: list[str]) -> str:
    """The adapter chosen so far, else the newest run's (a run that just finished), else none."""
    if current and current != NO_ADAPTER:
        return current
    return runs[1] if len(runs) > 1 else NO_ADAPTER


def _reply(config: WebUIConfig, language: str, model: str | None, adapter: str | None, side_by_side: bool,
           adapter_b: str | None, system: str, temperature: float, top_p: float, max_new_tokens: float,
           thinking: str, message: str, history_a: list[dict], history_b: list[dict]):
    """Stream the answer of each side to `message`: yields both chatbots, the status line and the input box."""
    histories = [_plain(history_a), _plain(history_b)]
    if not (message or "").strip():
        yield histories[0], histories[1], "", message
        return
    try:
        targets = side_targets(model, adapter, adapter_b, side_by_side, config)
        settings = GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                    top_p=float(top_p))
        loaded = []
        for target in targets:
            if target not in MODELS:
                yield histories[0], histories[1], text("chat.loading", language, what=target.describe()), ""
            loaded.append(MODELS.get(target))
    except LorakitError as err:
        yield histories[0], histories[1], text("msg.error", language, message=err), message
        return
    switch = None if thinking == "auto" else thinking == "on"
    chats = [open_side(models, history, system, settings, switch) for models, history in zip(loaded, histories)]
    status = text("chat.talking", language, left=targets[0].describe()) if len(targets) == 1 else \
        text("chat.talking_both", language, left=targets[0].describe(), right=targets[1].describe())
    shown = [history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
             for history in histories[:len(chats)]] + histories[len(chats):]
    yield shown[0], shown[1], status, ""
    try:
        for replies in stream_together([chat.respond(message) for chat in chats]):
            for side, reply in enumerate(replies):
                shown[side][-1]["content"] = reply
            yield shown[0], shown[1], status, ""
    except LorakitError as err:
        yield shown[0], shown[1], text("msg.error", language, message=err), ""


def _plain(history: list[dict] | None) -> list[dict]:
    """A chatbot's messages as role/content text (Gradio 6 hands content over as a list of typed parts)."""
    plain = []
    for item in history or []:
        content = item.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        plain.append({"role": item["role"], "content": str(content or "")})
    return plain
