"""The one OpenAI-compatible chat client of lorakit (`ChatClient`), used by `lorakit judge` and `lorakit data
generate`, and the tolerant reading of what a model replies (`parse_json_reply`).

Retries with exponential backoff (connection errors, timeouts, 408, 409, 429, 5xx; `Retry-After` honoured) are the
openai package's own; this module adds bounded concurrency, a request budget, token and request counts, and errors
that say what to fix. Replies from reasoning models (`<think>…</think>`), JSON inside prose or a code fence, and
trailing commas are read in one place, here.
"""

from __future__ import annotations

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
    """HTTP requests sent (retries included) and tokens the endpoint reported."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatClient:
    """A /v1/chat/completions endpoint: at most `config.concurrency` requests in flight, at most
    `config.max_requests` sent in all (retries count), each retried `config.max_retries` times.

    Errors the user must fix (unreachable server, bad key, unknown model) raise ConfigError; other failures of
    one request (a 400, a timeout or 5xx after the retries) come back as a Completion with `error` set.
    """

    def __init__(self, config: EndpointConfig, http_client: Any = None, role: str = "judge"):
        import httpx
        from openai import OpenAI

        self.config, self.role = config, role
        self.name = f"{config.model} @ {config.base_url}"
        self.usage = Usage()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.concurrency)
        http_client = http_client or httpx.Client(timeout=config.timeout)
        # Counting at the HTTP layer sees the openai client's own retries, which the budget must include.
        http_client.event_hooks["request"] = [*http_client.event_hooks.get("request", []), self._count_request]
        self._client = OpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=config.max_retries,
                              timeout=config.timeout, http_client=http_client)

    def _count_request(self, request: Any) -> None:
        with self._lock:
            if self.config.max_requests is not None and self.usage.requests >= self.config.max_requests:
                raise BudgetSpent(f"The {self.role}'s request budget ({self.config.max_requests} requests, "
                                  f"max_requests) is spent. Raise it and run the same command again to go on.")
            self.usage.requests += 1

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
        self._add_tokens(response)
        if not response.choices:
            return Completion("", f"the {self.role} returned no choices")
        choice = response.choices[0]
        return Completion(choice.message.content or "", truncated=choice.finish_reason == "length")

    def _add_tokens(self, response: Any) -> None:
        usage = getattr(response, "usage", None)
        if usage is not None:
            with self._lock:
                self.usage.prompt_tokens += usage.prompt_tokens or 0
                self.usage.completion_tokens += usage.completion_tokens or 0


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
