"""Terminal chat: `Chat` keeps the history, system prompt and adapter of one conversation; `run_chat()` is the REPL.

Replies stream token by token. Ctrl-C during a reply stops it and keeps the text shown so far in the history
(the next turn answers what the user saw); Ctrl-C at the prompt only clears the line; /quit or Ctrl-D leaves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.errors import LorakitError
from lorakit.infer.generate import (GenerationConfig, load_adapter, load_for_inference,
                                    load_inference_tokenizer, stream_generate)
from lorakit.runs import find_adapter_dir
from lorakit.templates import Template, render

HELP = """Commands:
  /reset           clear the conversation history
  /system TEXT     set the system prompt (clears the history); /system alone shows it
  /adapter PATH    switch to another adapter of the same base model (the history is kept)
  /adapter base    talk to the base model without adapter
  /help            show this help
  /quit            leave (also Ctrl-D); Ctrl-C stops a reply without leaving"""


class Chat:
    """One conversation with a model: its history, system prompt, and the adapter in use (switchable)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
                 config: GenerationConfig = GenerationConfig(), system: str | None = None,
                 model_config: ModelConfig | None = None, adapter_dir: Path | None = None,
                 template_name: str | None = None) -> None:
        self.model, self.tokenizer, self.template, self.config = model, tokenizer, template, config
        self.system = system or None
        self.model_config = model_config or ModelConfig(name=str(getattr(model, "name_or_path", "model")))
        self.adapter_dir = adapter_dir
        self.template_name = template_name
        self.history: list[dict] = []

    def messages(self, user_text: str | None = None) -> list[dict]:
        """The system prompt, the history, and `user_text` as the next user turn."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += self.history
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        return messages

    def prompt(self, user_text: str) -> str:
        """The exact text the model will continue for `user_text`."""
        return render(self.template, self.tokenizer, self.messages(user_text), add_generation_prompt=True)

    def respond(self, user_text: str) -> Iterator[str]:
        """Stream the reply to `user_text`; the turn joins the history when the reply ends or is stopped.

        A reply stopped before any text leaves no trace in the history.
        """
        messages = self.messages(user_text)
        pieces: list[str] = []
        try:
            for piece in stream_generate(self.model, self.tokenizer, self.template, messages, self.config):
                pieces.append(piece)
                yield piece
        finally:
            if pieces:
                self.history += [messages[-1], {"role": "assistant", "content": "".join(pieces)}]

    def reset(self) -> None:
        self.history = []

    def set_system(self, text: str | None) -> None:
        """A new system prompt starts a new conversation."""
        self.system = text or None
        self.reset()

    def use_adapter(self, path: Path | None) -> None:
        """Swap the adapter for the one at `path` (None: the base model alone), with its tokenizer and template.

        Refuses an adapter trained on another base model with a ConfigError and keeps the current one.
        """
        from peft import PeftModel

        adapter_dir = find_adapter_dir(path) if path is not None else None
        # unload() removes the LoRA layers without merging them: the base weights come back untouched.
        base = self.model.unload() if isinstance(self.model, PeftModel) else self.model
        try:
            tokenizer, template = load_inference_tokenizer(self.model_config, adapter_dir, self.template_name)
            model = load_adapter(base, adapter_dir, self.model_config.name) if adapter_dir else base
        except LorakitError:
            self.model = load_adapter(base, self.adapter_dir, self.model_config.name) if self.adapter_dir else base
            raise
        self.model, self.tokenizer, self.template, self.adapter_dir = model.eval(), tokenizer, template, adapter_dir

    def describe(self) -> str:
        adapter = f" + adapter {self.adapter_dir}" if self.adapter_dir else ""
        return f"{self.model_config.name}{adapter} (template: {self.template.name})"


def open_chat(model_config: ModelConfig, adapter: Path | None = None, template_name: str | None = None,
              system: str | None = None, config: GenerationConfig = GenerationConfig()) -> Chat:
    """Load a base model (a bundled name, folder or merged model), plus an adapter, ready to chat."""
    adapter_dir = find_adapter_dir(adapter) if adapter is not None else None
    model, tokenizer, template = load_for_inference(model_config, adapter_dir, template_name)
    return Chat(model, tokenizer, template, replace(config, batch_size=1), system, model_config, adapter_dir,
                template_name)


def run_chat(chat: Chat, input_stream: TextIO | None = None, output: TextIO | None = None,
             show_prompt: bool = False) -> None:
    """The chat REPL: read a line, stream the reply, until /quit or end of input.

    On a terminal stdin, lines are read with `input()` (line editing and history through readline); any other
    stream is read line by line, which is how tests drive it.
    """
    output = output or sys.stdout
    read_line = _line_reader(input_stream or sys.stdin, output)
    output.write(f"Chatting with {chat.describe()}. /help lists commands; /quit or Ctrl-D leaves.\n")
    while True:
        try:
            line = read_line("you> ").strip()
        except EOFError:
            output.write("\n")
            return
        except KeyboardInterrupt:
            output.write("\n(Ctrl-C clears the line; /quit or Ctrl-D leaves.)\n")
            continue
        if not line:
            continue
        if line.startswith("/"):
            if not _command(chat, line, output):
                return
            continue
        _reply(chat, line, output, show_prompt)


def _reply(chat: Chat, line: str, output: TextIO, show_prompt: bool) -> None:
    reply = chat.respond(line)
    try:
        if show_prompt:
            output.write(f"--- prompt ---\n{chat.prompt(line)}\n--- end of prompt ---\n")
        output.write("assistant> ")
        output.flush()
        for piece in reply:
            output.write(piece)
            output.flush()
    except KeyboardInterrupt:
        reply.close()
        output.write(" [stopped]")
    except LorakitError as err:
        output.write(f"\nerror: {err}")
    output.write("\n")
    output.flush()


def _command(chat: Chat, line: str, output: TextIO) -> bool:
    """Run a slash command; False means leave the chat."""
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        output.write(HELP + "\n")
    elif name == "/reset":
        chat.reset()
        output.write("History cleared.\n")
    elif name == "/system":
        if argument:
            chat.set_system(argument)
            output.write("System prompt set; history cleared.\n")
        else:
            output.write(f"System prompt: {chat.system!r}\n")
    elif name == "/adapter":
        if not argument:
            output.write("Usage: /adapter PATH or /adapter base.\n")
            return True
        try:
            chat.use_adapter(None if argument == "base" else Path(argument).expanduser())
        except LorakitError as err:
            output.write(f"error: {err}\n")
        else:
            output.write(f"Now chatting with {chat.describe()}.\n")
    else:
        output.write(f"Unknown command {name}; /help lists the commands.\n")
    output.flush()
    return True


def _line_reader(stream: TextIO, output: TextIO) -> Callable[[str], str]:
    if stream is sys.stdin and output is sys.stdout and stream.isatty():
        try:
            import readline  # noqa: F401  (gives input() line editing and history)
        except ImportError:
            pass
        return input

    def read(prompt: str) -> str:
        output.write(prompt)
        output.flush()
        line = stream.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read
