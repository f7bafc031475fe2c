"""The batching engine behind `lorakit serve`: one thread owns the model and answers queued requests in batches.

Requests wait in a queue; the engine takes every waiting request that can share a `generate` call (same sampling
settings; any mix of adapters, through PEFT's per-row `adapter_names`) up to `max_batch_size`, left-pads them and
runs one batched `generate`. Each row's new token goes to its request as text, decoded incrementally, and each row
stops at its own stop strings, end-of-turn tokens or max_tokens while the others go on. A request that asks for
log-probabilities gets those of the tokens generate picked (from the same forward pass) and, with `echo`, those of
its prompt from one teacher-forced pass over the batch's echo prompts.

transformers 5.23 has continuous batching (`generate_batch`, `init_continuous_batching`), but it is not used: on
CPU it took 20-40 s to answer two 8-token requests on a 6k-parameter model (paged-cache set-up), it cannot pick a
LoRA adapter per request, and it has no per-request stop strings. Requests that arrive while a batch runs wait for
the next batch instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria

from lorakit.adapters import use_adapter
from lorakit.config import BASE
from lorakit.data.tokenize import pad_token_id
from lorakit.infer.generate import StepLogprobs, TokenLogprob, generate_batch, held_back, score_prompts
from lorakit.templates import Template

_PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Endpoint:
    """One model name the server answers to: the base model or an adapter, with its own tokenizer and template."""

    name: str
    adapter: str  # a PEFT adapter name, or lorakit.adapters.BASE
    tokenizer: PreTrainedTokenizerBase
    template: Template
    stop_ids: frozenset[int]


@dataclass(frozen=True)
class Sampling:
    """How a request picks tokens; temperature below GREEDY_BELOW is greedy (smaller ones overflow the logits).

    A seed makes a sampled request repeatable."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def generate_kwargs(self) -> dict[str, Any]:
        if self.greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


@dataclass(frozen=True)
class TextEvent:
    text: str


@dataclass(frozen=True)
class FinishEvent:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None  # the reply's tokens, when the request asked
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # the prompt's tokens, with echo


@dataclass(frozen=True)
class ErrorEvent:
    message: str


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One request in the engine: its prompt tokens, limits and the asyncio queue its events go to.

    `logprobs`: None for none, else how many likeliest tokens to list at each position (0 or more); `echo` scores
    the prompt too. `max_tokens` may be 0 with echo: the prompt is scored and nothing generated.
    """

    endpoint: Endpoint
    prompt_ids: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    logprobs: int | None = None
    echo: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    id: int = field(default_factory=lambda: next(_ids))

    def send(self, event: TextEvent | FinishEvent | ErrorEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the request's event loop is closed: nobody is listening any more
            self.cancelled = True


class EngineUnavailable(RuntimeError):
    """The engine thread is not running (never started, stopping, or dead); the server answers 503."""


class Engine:
    """Owns `model` in one thread; `submit()` queues a Job, whose events arrive on `job.events`.

    `batch_sizes` holds the number of requests in each of the latest `generate` calls (oldest first, at most
    BATCH_HISTORY of them); `batches` counts every call.
    """

    BATCH_HISTORY = 1024

    def __init__(self, model: PreTrainedModel, max_batch_size: int = 8, batch_wait_s: float = 0.01) -> None:
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.batch_sizes: deque[int] = deque(maxlen=self.BATCH_HISTORY)
        self.batches = 0
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        configs = getattr(model, "peft_config", {}) or {}
        # PEFT's mixed-adapter batches do not support DoRA; with a DoRA adapter loaded, batches hold one adapter.
        self._mixed_batches = not any(getattr(config, "use_dora", False) for config in configs.values())

    @property
    def alive(self) -> bool:
        """Whether the engine thread is running and takes new jobs."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def start(self) -> None:
        """Start the engine thread; a no-op while it runs."""
        with self._wake:
            if self.alive:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="lorakit-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; waiting and running jobs get an error and their rows stop at the next token."""
        with self._wake:
            self._stopping = True
            for job in (*self._pending, *self._running):
                job.cancelled = True
                job.send(ErrorEvent("The server is shutting down."))
            self._pending.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, *jobs: Job) -> None:
        """Queue `jobs` together (they share a batch up to max_batch_size); EngineUnavailable when the engine
        thread is not running."""
        with self._wake:
            if not self.alive:
                raise EngineUnavailable("The generation engine is not running; the server cannot answer now. "
                                        "Restart `lorakit serve`.")
            self._pending.extend(jobs)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
            jobs: list[Job] = []
            try:
                self._gather()
                jobs = self._take_batch()
                if jobs:
                    self._generate(jobs)
            except Exception as err:  # the thread keeps serving; the batch it held gets the error
                for job in jobs:
                    job.send(ErrorEvent(f"Generation failed: {type(err).__name__}: {err}"))
            finally:
                with self._wake:
                    self._running = []

    def _gather(self) -> None:
        """Let requests sent together arrive together: wait while new ones keep coming (at most 10 waits)."""
        seen = len(self._pending)
        for _ in range(10):
            time.sleep(self.batch_wait_s)
            if len(self._pending) == seen or len(self._pending) >= self.max_batch_size:
                return
            seen = len(self._pending)

    def _take_batch(self) -> list[Job]:
        """The oldest live job and every waiting job that can share its `generate` call, up to max_batch_size."""
        with self._wake:
            while self._pending and self._pending[0].cancelled:
                self._pending.popleft()
            if not self._pending:
                return []
            key = self._batch_key(self._pending[0])
            batch, rest = [], deque()
            for job in self._pending:
                if job.cancelled:
                    continue
                if len(batch) < self.max_batch_size and self._batch_key(job) == key:
                    batch.append(job)
                else:
                    rest.append(job)
            self._pending = rest
            self._running = batch
            return batch

    def _batch_key(self, job: Job) -> tuple:
        sampling = ("greedy",) if job.sampling.greedy else (job.sampling.temperature, job.sampling.top_p,
                                                            job.sampling.top_k)
        if job.sampling.seed is not None:  # seeded sampling runs alone, so the same seed gives the same text
            sampling = (*sampling, "seed", job.id)
        return (sampling, None if self._mixed_batches else job.endpoint.adapter)

    @torch.inference_mode()
    def _generate(self, jobs: list[Job]) -> None:
        self.batch_sizes.append(len(jobs))
        self.batches += 1
        router = _Router(jobs)
        try:
            # Padding from token ids, not the tokenizer: each adapter may bring its own, but rows share one batch.
            pad_id = pad_token_id(jobs[0].endpoint.tokenizer)
            echoing = [row for row in router.rows if row.job.echo and row.job.logprobs is not None]
            if echoing:
                self._score_prompts(echoing, pad_id)
            for row in router.rows:
                if row.job.max_tokens == 0:
                    row.finish("length")
            generating = [row for row in router.rows if not row.done]
            if not generating:
                return
            router.rows = generating
            sampling = generating[0].job.sampling
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            kwargs = dict(max_new_tokens=max(row.job.max_tokens for row in generating), stopping_criteria=[router],
                          eos_token_id=None, **sampling.generate_kwargs())
            prompts = [row.job.prompt_ids for row in generating]
            with contextlib.ExitStack() as stack:
                if any(row.job.logprobs is not None for row in generating):
                    router.steps = stack.enter_context(StepLogprobs().recording(self.model))
                self._run_adapters([row.job for row in generating], stack, kwargs)
                generate_batch(self.model, prompts, pad_id, **kwargs)
            router.finish_all("length")
        except Exception as err:  # a failed batch must not kill the engine thread; its requests get the error
            router.fail(f"Generation failed: {type(err).__name__}: {err}")

    def _run_adapters(self, jobs: list[Job], stack: contextlib.ExitStack, kwargs: dict) -> None:
        """Set the adapter for `jobs`: the one they share, or PEFT's per-row `adapter_names` in `kwargs`."""
        adapters = {job.endpoint.adapter for job in jobs}
        if len(adapters) == 1:
            stack.enter_context(use_adapter(self.model, adapters.pop()))
        else:
            kwargs["adapter_names"] = [_PEFT_BASE if job.endpoint.adapter == BASE else job.endpoint.adapter
                                       for job in jobs]

    def _score_prompts(self, rows: list[_Row], pad_id: int) -> None:
        jobs = [row.job for row in rows]
        kwargs: dict = {}
        with contextlib.ExitStack() as stack:
            self._run_adapters(jobs, stack, kwargs)
            scored = score_prompts(self.model, [job.prompt_ids for job in jobs], pad_id,
                                   top=max(job.logprobs or 0 for job in jobs), **kwargs)
        for row, entries in zip(rows, scored):
            top = row.job.logprobs or 0
            row.prompt_logprobs = tuple(TokenLogprob(entry.token, entry.logprob, entry.top[:top])
                                        for entry in entries)


class _Router(StoppingCriteria):
    """Sends each row's new tokens to its request as text and tells `generate` which rows are done.

    A StoppingCriteria, not a transformers streamer: in transformers 5.23 `generate` calls the stopping criteria
    before the streamer at each step, and a row's stop strings must be known when the criteria answer.
    """

    def __init__(self, jobs: list[Job]) -> None:
        self.rows = [_Row(job) for job in jobs]
        self.steps: StepLogprobs | None = None  # set while generate runs for rows that asked for logprobs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        tokens = input_ids[:, -1].tolist()
        picked = [None] * len(tokens)
        if self.steps is not None and self.steps.latest is not None:
            picked = self.steps.picked(tokens, max(row.job.logprobs or 0 for row in self.rows))
        for row, token, entry in zip(self.rows, tokens, picked):
            if not row.done:
                row.add(token, entry)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def finish_all(self, reason: str) -> None:
        for row in self.rows:
            if not row.done:
                row.finish(reason)

    def fail(self, message: str) -> None:
        for row in self.rows:
            if not row.done:
                row.done = True
                row.job.send(ErrorEvent(message))


class _Row:
    """One request's share of a batch: its tokens so far, the text already sent, and when it must stop.

    The whole reply is decoded again at each token (replies are short) and only text that can no longer change is
    sent: never a trailing U+FFFD (a character whose bytes are still arriving), never the start of a stop string.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.tokenizer = job.endpoint.tokenizer
        self.stops = tuple(s for s in job.stop if s)
        self.ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: tuple[TokenLogprob, ...] | None = None
        self.count = 0
        self.sent = 0
        self.done = False

    def add(self, token: int, logprob: TokenLogprob | None = None) -> None:
        if self.job.cancelled:
            self.done = True
            return
        self.count += 1
        if token in self.job.endpoint.stop_ids:
            self.finish("stop")
            return
        self.ids.append(token)
        if logprob is not None and self.job.logprobs is not None:
            self.logprobs.append(TokenLogprob(logprob.token, logprob.logprob, logprob.top[:self.job.logprobs]))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = min((index for index in (text.find(stop) for stop in self.stops) if index >= 0), default=-1)
        if cut >= 0:
            self._send(text[:cut])
            self._finish_event("stop")
            return
        if self.count >= self.job.max_tokens:
            self._send(text.rstrip("\ufffd"))  # a character cut off by max_tokens is dropped, not sent broken
            self._finish_event("length")
            return
        self._send(text[: len(text) - held_back(text, self.stops)])

    def finish(self, reason: str) -> None:
        """End the row, sending any text held back (a stop string's start that never completed)."""
        self._send(self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd"))
        self._finish_event(reason)

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.job.send(TextEvent(text[self.sent:]))
            self.sent = len(text)

    def _finish_event(self, reason: str) -> None:
        self.done = True
        logprobs = tuple(self.logprobs) if self.job.logprobs is not None else None
        self.job.send(FinishEvent(reason, len(self.job.prompt_ids), self.count, logprobs, self.prompt_logprobs))
