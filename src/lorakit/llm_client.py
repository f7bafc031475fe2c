"""The chat clients of lorakit, used by `lorakit judge` and `lorakit data generate`: `ChatClient` for an
OpenAI-compatible endpoint, `LocalChatClient` for a model lorakit loads itself (`open_client` picks by
`backend`), and the tolerant reading of what a model replies (`parse_json_reply`).

Retries with exponential backoff (connection errors, timeouts, 408, 429, 5xx; `Retry-After` honoured) are the
openai package's own; this module adds bounded concurrency, a request budget, token and request counts, and errors
that say what to fix. Both clients share those, so a caller cannot tell them apart. Replies from reasoning models
(`<think>…</think>`), JSON inside prose or a code fence, and trailing commas are read in one place, here.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lorakit.config import EndpointConfig
from lorakit.errors import ConfigError, LorakitError


class BudgetSpent(LorakitError):
    """The endpoint's `max_requests` is used up; what was done so far is kept."""


@dataclass(frozen=True)
class Completion:
    """A model's reply, or why there is none (the request failed after its retries). `truncated`: the reply hit
    `max_tokens` (finish_reason "length")."""

    text: str
    error: str | None = None
    truncated: bool = False


@dataclass
class Usage:
    """Requests sent (retries included) and tokens the model reported."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ModelClient:
    """What every chat client shares: at most `config.concurrency` requests in flight, at most
    `config.max_requests` sent in all (BudgetSpent after that), and the requests and tokens used (`usage`).
    A subclass answers one request in `_request`."""

    def __init__(self, config: EndpointConfig, role: str):
        self.config, self.role = config, role
        self.name = config.model
        self.usage = Usage()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.concurrency)

    def complete(self, conversations: Sequence[list[dict]], temperature: float = 0.0) -> list[Completion]:
        """One reply per conversation, in order, asked `config.concurrency` at a time."""
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency)
        try:
            return list(pool.map(lambda messages: self.complete_one(messages, temperature), conversations))
        finally:  # after a ConfigError (server down), drop the queued requests instead of failing each in turn
            pool.shutdown(wait=True, cancel_futures=True)

    def complete_one(self, messages: list[dict], temperature: float = 0.0) -> Completion:
        with self._slots:
            return self._request(messages, temperature)

    def close(self) -> None:
        """Free what the client holds (connections, a loaded model)."""

    def _request(self, messages: list[dict], temperature: float) -> Completion:
        raise NotImplementedError

    def _count_request(self, *_: Any) -> None:
        with self._lock:
            if self.config.max_requests is not None and self.usage.requests >= self.config.max_requests:
                raise BudgetSpent(f"The {self.role}'s request budget ({self.config.max_requests} requests, "
                                  f"max_requests) is spent. Raise it and run the same command again to go on.")
            self.usage.requests += 1

    def _add_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens


class ChatClient(ModelClient):
    """A /v1/chat/completions endpoint, each request retried `config.max_retries` times.

    Errors the user must fix (unreachable server, bad key, unknown model) raise ConfigError; other failures of
    one request (a 400, a timeout or 5xx after the retries) come back as a Completion with `error` set.
    """

    def __init__(self, config: EndpointConfig, http_client: Any = None, role: str = "judge"):
        import httpx
        from openai import OpenAI

        super().__init__(config, role)
        self.name = f"{config.model} @ {config.base_url}"
        http_client = http_client or httpx.Client(timeout=config.timeout)
        # Counting at the HTTP layer sees the openai client's own retries, which the budget must include.
        http_client.event_hooks["request"] = [*http_client.event_hooks.get("request", []), self._count_request]
        self._client = OpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=config.max_retries,
                              timeout=config.timeout, http_client=http_client)

    def close(self) -> None:
        self._client.close()

    def _request(self, messages: list[dict], temperature: float) -> Completion:
        import openai

        where = f"the {self.role} at {self.config.base_url}"
        try:
            response = self._client.chat.completions.create(model=self.config.model, messages=messages,
                                                             temperature=temperature,
                                                             max_tokens=self.config.max_tokens)
        except openai.APITimeoutError as err:
            return Completion("", f"timed out after {self.config.max_retries} retries: {err}")
        except openai.APIConnectionError as err:
            if isinstance(err.__cause__, BudgetSpent):
                raise err.__cause__ from None
            raise ConfigError(f"Cannot reach {where} ({err}). Start the server, or check the {self.role}'s "
                              "base_url (it usually ends in /v1).") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise ConfigError(f"{where[0].upper()}{where[1:]} refused the API key ({err.status_code}). Set the "
                              f"{self.role}'s api_key.") from None
        except openai.NotFoundError as err:
            raise ConfigError(f"{where[0].upper()}{where[1:]} has no model '{self.config.model}' or no chat "
                              f"endpoint ({err.message}). Check the {self.role}'s model and base_url.") from None
        except openai.APIError as err:
            return Completion("", f"{type(err).__name__}: {err}")
        usage = getattr(response, "usage", None)
        if usage is not None:
            self._add_tokens(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        if not response.choices:
            return Completion("", f"the {self.role} returned no choices")
        choice = response.choices[0]
        return Completion(choice.message.content or "", truncated=choice.finish_reason == "length")


class LocalModel:
    """A model loaded here for `backend: local`, answered by the batching engine of `lorakit serve`: requests
    asked at the same time (from the client's threads) share one batched `generate` call. One LocalModel may
    serve several clients (a generator and a judge on the same model)."""

    def __init__(self, config: EndpointConfig):
        from lorakit.adapters import BASE
        from lorakit.infer.generate import inference_model, load_for_inference
        from lorakit.serve.app import make_endpoint
        from lorakit.serve.engine import Engine

        model_config, adapter_dir = inference_model(config.model, config.adapter)
        model, tokenizer, template = load_for_inference(model_config, adapter_dir)
        # PeftModel.from_pretrained loads an adapter under PEFT's name "default".
        self.endpoint = make_endpoint(config.model, "default" if adapter_dir is not None else BASE, tokenizer,
                                      template)
        self.context_length = getattr(model.config, "max_position_embeddings", None)
        self.engine = Engine(model, max_batch_size=config.concurrency)
        self.engine.start()
        self._tokenizer_lock = threading.Lock()

    def reply(self, messages: list[dict], temperature: float, max_tokens: int) -> tuple[Completion, int, int]:
        """The reply to `messages` with the prompt's and the reply's token counts (0, 0 for a prompt refused)."""
        from lorakit.serve.engine import GREEDY_BELOW, Job, Sampling
        from lorakit.templates import render

        endpoint = self.endpoint
        prompt = render(endpoint.template, endpoint.tokenizer, messages, add_generation_prompt=True)
        with self._tokenizer_lock:
            prompt_ids = endpoint.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if self.context_length is not None:
            room = self.context_length - len(prompt_ids)
            if room < 1:
                return Completion("", f"the prompt is {len(prompt_ids)} tokens; model '{endpoint.name}' takes at most "
                                  f"{self.context_length}. Lower chunk_chars."), 0, 0
            max_tokens = min(max_tokens, room)
        sampling = Sampling(temperature=temperature if temperature >= GREEDY_BELOW else 0.0)
        loop = asyncio.new_event_loop()
        try:
            job = Job(endpoint=endpoint, prompt_ids=prompt_ids, max_tokens=max_tokens,
                      stop=endpoint.template.stop_words, sampling=sampling, loop=loop)
            self.engine.submit(job)
            return loop.run_until_complete(_collect(job))
        finally:
            loop.close()

    def close(self) -> None:
        self.engine.stop()


async def _collect(job: Any) -> tuple[Completion, int, int]:
    from lorakit.serve.engine import ErrorEvent, FinishEvent, TextEvent

    pieces = []
    while True:
        event = await job.events.get()
        if isinstance(event, TextEvent):
            pieces.append(event.text)
        elif isinstance(event, ErrorEvent):
            return Completion("".join(pieces), event.message), 0, 0
        elif isinstance(event, FinishEvent):
            completion = Completion("".join(pieces).strip(), truncated=event.reason == "length")
            return completion, event.prompt_tokens, event.completion_tokens


class LocalChatClient(ModelClient):
    """A model loaded by lorakit (`backend: local`): the same budget, counts and replies as a ChatClient, with
    nothing to retry (a reply that fails here fails the same way again)."""

    def __init__(self, config: EndpointConfig, role: str = "generator", model: LocalModel | None = None):
        super().__init__(config, role)
        self.model = model or LocalModel(config)
        self.name = f"local {config.model}" + (f" + {config.adapter}" if config.adapter is not None else "")

    def close(self) -> None:
        self.model.close()

    def _request(self, messages: list[dict], temperature: float) -> Completion:
        self._count_request()
        completion, prompt_tokens, completion_tokens = self.model.reply(messages, temperature,
                                                                        self.config.max_tokens)
        self._add_tokens(prompt_tokens, completion_tokens)
        return completion


def open_client(config: EndpointConfig, role: str, share: ModelClient | None = None) -> ModelClient:
    """The client `config.backend` asks for; a local one reuses the model `share` has loaded when it is the same
    model and adapter (a generator and its judge), so it is loaded once."""
    if config.backend != "local":
        return ChatClient(config, role=role)
    same = (isinstance(share, LocalChatClient)
            and (share.config.model, share.config.adapter) == (config.model, config.adapter))
    return LocalChatClient(config, role, share.model if same else None)


# ---------------------------------------------------------------- reading replies

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```[A-Za-z]*\s*\n?(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def strip_think(text: str) -> str:
    """`text` without reasoning blocks: closed `<think>…</think>`, and an unclosed leading one whose end marker
    the reply never reached (or that a server cut off: everything up to a lone `</think>`)."""
    text = _THINK.sub("", text)
    if "</think>" in text.lower():
        text = text[text.lower().rindex("</think>") + len("</think>"):]
    elif text.lstrip().lower().startswith("<think>"):
        return ""
    return text.strip()


def parse_json_reply(text: str, kind: type = dict) -> Any:
    """The first JSON value of type `kind` (dict or list) in a model's reply, or None: reasoning blocks are
    stripped; a ```json fence is tried first, then the text around it; trailing commas are repaired."""
    text = strip_think(text)
    candidates = [block for block in _FENCE.findall(text)] + [text]
    for candidate in candidates:
        for version in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            value = _first_json(version, kind)
            if value is not None:
                return value
    return None


def _first_json(text: str, kind: type) -> Any:
    decoder = json.JSONDecoder()
    opener = "{" if kind is dict else "["
    for match in re.finditer(re.escape(opener), text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, kind):
            return value
    return None


class ReplyError(ValueError):
    """A reply that cannot be used; the message says why."""


@dataclass(frozen=True)
class Parsed:
    """A reply read by `ask_parsed`: `value` when usable, else `error`; `raw` is the last reply, `attempts` 1 or 2."""

    value: Any
    raw: str
    error: str | None
    attempts: int


def ask_parsed(client: ChatClient, messages: list[dict], parse: Callable[[str], Any],
               temperature: float = 0.0) -> Parsed:
    """Ask, and read the reply with `parse` (which raises ReplyError); a reply that fails, is truncated or did not
    come is asked once more, then returned as a failure with its raw text, never dropped."""
    raw, error = "", None
    for attempt in (1, 2):
        reply = client.complete_one(messages, temperature)
        raw = reply.text
        if reply.error is not None:
            error = reply.error
        elif reply.truncated:
            error = "the reply was cut off at max_tokens (truncated)"
        else:
            try:
                return Parsed(parse(reply.text), raw, None, attempt)
            except ReplyError as err:
                error = str(err)
    return Parsed(None, raw, error, 2)
