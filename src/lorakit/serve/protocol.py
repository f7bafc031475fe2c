"""The OpenAI API's request and response bodies that `lorakit serve` understands, as pydantic models.

Unknown request fields are ignored, as OpenAI-compatible servers usually do, so clients that send newer options
still work; n > 1 is refused. presence_penalty and frequency_penalty are accepted and ignored (transformers has no
exact equivalent); top_k, which OpenAI lacks, may be sent in the body (`extra_body`).

Log-probabilities come as OpenAI and vLLM give them: chat's `logprobs: true, top_logprobs: k` answers
`choices[i].logprobs.content = [{token, logprob, bytes, top_logprobs}]`; completions' `logprobs: k` answers
`{tokens, token_logprobs, top_logprobs, text_offset}`, whose top_logprobs dicts hold the k likeliest tokens plus the
chosen one. A completion's `echo: true` puts the prompt before the reply, in the text and in the logprobs (its first
token's logprob is null), and with `max_tokens: 0` only scores the prompt: how lm-eval-harness asks for
log-likelihoods. A completion's `prompt` may be a list of prompts, each text or token ids, answered as one batch
with a choice per prompt (`index` in prompt order).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from transformers import PreTrainedTokenizerBase

from lorakit.infer.generate import TokenLogprob


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: off
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError(f"at most 4 stop sequences are allowed, got {len(value)}")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict[str, str]:
        """The message as lorakit's templates take it: content parts joined, 'developer' read as 'system'."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


MAX_TOP_LOGPROBS = 20  # vLLM's default limit; OpenAI's chat API has the same


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None  # shown to the model through its chat template
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def top_count(self) -> int | None:
        """How many likeliest tokens to list per position; None when logprobs were not asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt only
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: text, or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(item, int) for item in self.prompt):
            return [self.prompt]
        return list(self.prompt)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "lorakit"
    root: str | None = None  # the base model of an adapter


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_completion(request_id: str, model: str, text: str, finish_reason: str, used: Usage,
                    logprobs: dict | None = None) -> dict[str, Any]:
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": finish_reason}],
            "usage": used.model_dump()}


def chat_logprobs(tokenizer: PreTrainedTokenizerBase, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """Chat's `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""
    pieces = token_texts(tokenizer, [entry.token for entry in entries])
    content = []
    for index, (entry, piece) in enumerate(zip(entries, pieces)):
        context = [other.token for other in entries[max(0, index - _WINDOW):index]]
        alternatives = _alternative_texts(tokenizer, context, [token for token, _ in entry.top])
        content.append({**_chat_token(piece, entry.logprob),
                        "top_logprobs": [_chat_token(text, logprob)
                                         for text, (_, logprob) in zip(alternatives, entry.top)]})
    return {"content": content}


def _chat_token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", errors="replace"))}


def completion_logprobs(tokenizer: PreTrainedTokenizerBase, prompt: Sequence[TokenLogprob],
                        reply: Sequence[TokenLogprob], reply_start: int) -> dict[str, Any]:
    """The legacy completions' `logprobs` object: the `prompt` tokens (with echo; else none) from character 0 of
    the choice's text, then the `reply` tokens from character `reply_start`."""
    entries = [*prompt, *reply]
    pieces = token_texts(tokenizer, [entry.token for entry in entries])
    offsets, top_logprobs, start = [], [], 0
    for index, (entry, piece) in enumerate(zip(entries, pieces)):
        if index == len(prompt):
            start = reply_start
        offsets.append(start)
        start += len(piece)
        if entry.logprob is None:
            top_logprobs.append(None)
            continue
        context = [other.token for other in entries[max(0, index - _WINDOW):index]]
        alternatives = _alternative_texts(tokenizer, context, [token for token, _ in entry.top])
        top = {piece: entry.logprob}  # OpenAI: the chosen token is always listed, so up to k + 1 entries
        for text, (_, logprob) in zip(alternatives, entry.top):
            top.setdefault(text, logprob)
        top_logprobs.append(top)
    return {"tokens": pieces, "token_logprobs": [entry.logprob for entry in entries], "top_logprobs": top_logprobs,
            "text_offset": offsets}


_WINDOW = 6  # tokens of context a token's text is decoded after, so a SentencePiece word keeps its leading space


def token_texts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each token's text as it reads in place: the decoded text it adds after the few tokens before it."""
    return [_added_text(tokenizer, list(ids[max(0, index - _WINDOW):index]), token)
            for index, token in enumerate(ids)]


def _alternative_texts(tokenizer: PreTrainedTokenizerBase, context: list[int], tokens: list[int]) -> list[str]:
    return [_added_text(tokenizer, context, token) for token in tokens]


def _added_text(tokenizer: PreTrainedTokenizerBase, context: list[int], token: int) -> str:
    """The text `token` adds after `context`. A character split over several tokens belongs to the token that
    completes it (the ones before add ""), as the reply's text never shows half a character."""
    before = tokenizer.decode(context, skip_special_tokens=False).rstrip("\ufffd")
    after = tokenizer.decode([*context, token], skip_special_tokens=False).rstrip("\ufffd")
    if after.startswith(before):
        return after[len(before):]
    return tokenizer.decode([token], skip_special_tokens=False)


def chat_chunk(request_id: str, model: str, delta: dict[str, str], finish_reason: str | None = None,
               used: Usage | None = None, with_choice: bool = True) -> dict[str, Any]:
    choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}] if with_choice else []
    chunk = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": choices}
    if used is not None:
        chunk["usage"] = used.model_dump()
    return chunk


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def text_completion(request_id: str, model: str, text: str, finish_reason: str | None,
                    used: Usage | None = None, with_choice: bool = True,
                    choices: list[dict] | None = None) -> dict[str, Any]:
    """A `text_completion` object: the whole answer, or (streaming) one piece of it; `choices` replaces the one
    choice made of `text` and `finish_reason` (several prompts)."""
    if choices is None:
        choices = [completion_choice(0, text, finish_reason)] if with_choice else []
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices}
    if used is not None:
        body["usage"] = used.model_dump()
    return body


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
