"""The batching engine behind `lorakit serve`: one thread owns the model and answers queued requests in batches.

With `batching: continuous` (the default), a request that arrives while others generate joins them at the next
decoding step (its prompt is read in a forward pass of its own and its KV cache merged into the running batch, see
lorakit.infer.decoder), and a request leaves the batch as soon as it is done, freeing its slot. With `static`, the
engine waits until the running batch has finished before it takes the next: the road it took before, kept for
comparison (`bench/serve_load.py`). Any mix of adapters (PEFT's per-row `adapter_names`) and sampling settings
shares a batch; each row stops at its own stop strings, end-of-turn tokens or max_tokens while the others go on.
Each row's new token goes to its request as text, decoded incrementally. A request that asks for log-probabilities
gets those of the tokens it was given, and with `echo` those of its prompt, scored in one teacher-forced pass over
the echo prompts admitted together.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import check_choice
from lorakit.config.inference import BATCHING
from lorakit.data.tokenize import pad_token_id
from lorakit.infer.decoder import (GREEDY_BELOW, Decoder, DecodeRow, Pick, Sampling, TokenLogprob,
                                   row_adapters)
from lorakit.infer.generate import Reply, cut_at_stop, held_back, score_prompts
from lorakit.templates import Template

__all__ = ["GREEDY_BELOW", "Endpoint", "Engine", "EngineUnavailable", "ErrorEvent", "FinishEvent", "Job", "Sampling",
           "TextEvent"]


@dataclass(frozen=True)
class Endpoint:
    """One model name the server answers to: the base model or an adapter, with its own tokenizer and template."""

    name: str
    adapter: str  # a PEFT adapter name, or lorakit.adapters.BASE
    tokenizer: PreTrainedTokenizerBase
    template: Template
    stop_ids: frozenset[int]


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

    `batching`: "continuous" or "static" (see the module's docstring). `batch_sizes` holds how many requests each
    of the latest admissions took into the batch at once (oldest first, at most BATCH_HISTORY of them); `batches`
    counts every admission and `steps` every decoding step.
    """

    BATCH_HISTORY = 1024

    def __init__(self, model: PreTrainedModel, max_batch_size: int = 8, batch_wait_s: float = 0.01,
                 batching: str = "continuous") -> None:
        check_choice("batching", batching, BATCHING)
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.batching = batching
        self.batch_sizes: deque[int] = deque(maxlen=self.BATCH_HISTORY)
        self.batches = 0
        self.steps = 0
        self._pending: deque[Job] = deque()
        self._running: list[_Row] = []
        self._decoder: Decoder | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        configs = getattr(model, "peft_config", {}) or {}
        # PEFT's mixed-adapter batches do not support DoRA; with a DoRA adapter loaded, batches hold one adapter.
        self._mixed_adapters = not any(getattr(config, "use_dora", False) for config in configs.values())

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
            for job in (*self._pending, *(row.job for row in self._running)):
                job.cancelled = True
                job.send(ErrorEvent("The server is shutting down."))
            self._pending.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, *jobs: Job) -> None:
        """Queue `jobs` together (they join the batch at the same step, up to max_batch_size); EngineUnavailable
        when the engine thread is not running."""
        with self._wake:
            if not self.alive:
                raise EngineUnavailable("The generation engine is not running; the server cannot answer now. "
                                        "Restart `lorakit serve`.")
            self._pending.extend(jobs)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._running and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
            admitted: list[Job] = []
            try:
                if not self._running:
                    self._gather()
                admitted = self._take_batch()
                self._admit(admitted)
                self._step()
            except Exception as err:  # the thread keeps serving; the rows it held get the error
                self._fail(admitted, f"Generation failed: {type(err).__name__}: {err}")

    def _gather(self) -> None:
        """Let requests sent together arrive together: wait while new ones keep coming (at most 10 waits)."""
        seen = len(self._pending)
        for _ in range(10):
            time.sleep(self.batch_wait_s)
            if len(self._pending) == seen or len(self._pending) >= self.max_batch_size:
                return
            seen = len(self._pending)

    def _take_batch(self) -> list[Job]:
        """The waiting jobs that join the batch now: in arrival order, while there is room (with static batching,
        only once the batch is empty); with a DoRA adapter loaded, only those of the batch's adapter."""
        with self._wake:
            if self.batching == "static" and self._running:
                return []
            adapter = self._running[0].job.endpoint.adapter if self._running else None
            taken, rest = [], deque()
            for job in self._pending:
                if job.cancelled:
                    continue
                adapter = adapter if adapter is not None else job.endpoint.adapter
                fits = self._mixed_adapters or job.endpoint.adapter == adapter
                if len(self._running) + len(taken) < self.max_batch_size and fits:
                    taken.append(job)
                else:
                    rest.append(job)
            self._pending = rest
            return taken

    @torch.inference_mode()
    def _admit(self, jobs: list[Job]) -> None:
        """Score the echo prompts of `jobs`, then read the prompts of those that generate into the batch and send
        each its first token."""
        if not jobs:
            return
        self.batch_sizes.append(len(jobs))
        self.batches += 1
        rows = [_Row(job) for job in jobs]
        # Padding from token ids, not the tokenizer: each adapter may bring its own, but rows share one batch.
        pad_id = pad_token_id(jobs[0].endpoint.tokenizer)
        echoing = [row for row in rows if row.job.echo and row.job.logprobs is not None]
        if echoing:
            self._score_prompts(echoing, pad_id)
        for row in rows:
            if row.job.max_tokens == 0:
                row.finish("length")
        joining = [row for row in rows if not row.done]
        if not joining:
            return
        if self._decoder is None:
            self._decoder = Decoder(self.model, pad_id)
        with self._wake:
            self._running.extend(joining)
        self._route(joining, self._decoder.add([row.decoding for row in joining]))

    def _step(self) -> None:
        """One token for every running row; rows that are done leave the batch."""
        if not self._running:
            return
        self.steps += 1
        self._route(list(self._running), self._decoder.step())

    def _route(self, rows: list[_Row], picks: list[Pick]) -> None:
        for row, pick in zip(rows, picks):
            if not row.done:
                row.add(pick.token, pick.logprob)
        done = [row for row in self._running if row.done]
        if done:
            self._decoder.drop([row.decoding for row in done])
            with self._wake:
                self._running = [row for row in self._running if not row.done]

    def _fail(self, admitted: list[Job], message: str) -> None:
        """Answer every running row and every job being admitted with `message`; the batch starts afresh."""
        failed = {row.job for row in self._running} | set(admitted)
        for row in self._running:
            row.done = True
        for job in failed:
            job.send(ErrorEvent(message))
        with self._wake:
            self._running = []
        if self._decoder is not None:
            self._decoder.clear()

    def _score_prompts(self, rows: list[_Row], pad_id: int) -> None:
        jobs = [row.job for row in rows]
        with row_adapters(self.model, [job.endpoint.adapter for job in jobs]) as options:
            scored = score_prompts(self.model, [job.prompt_ids for job in jobs], pad_id,
                                   top=max(job.logprobs or 0 for job in jobs), **options)
        for row, entries in zip(rows, scored):
            top = row.job.logprobs or 0
            row.prompt_logprobs = tuple(TokenLogprob(entry.token, entry.logprob, entry.top[:top])
                                        for entry in entries)


class _Row:
    """One request's share of a batch: its reply so far, the text already sent, and its log-probabilities.

    The whole reply is decoded again at each token (replies are short) and only text that can no longer change is
    sent: never a trailing U+FFFD (a character whose bytes are still arriving), never the start of a stop string.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.decoding = DecodeRow(job.prompt_ids, job.sampling, job.endpoint.adapter, job.logprobs)
        self.stops = tuple(s for s in job.stop if s)
        self.reply = Reply(job.endpoint.tokenizer, self.stops, job.endpoint.stop_ids, job.max_tokens)
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: tuple[TokenLogprob, ...] | None = None
        self.sent = 0
        self.done = False

    def add(self, token: int, logprob: TokenLogprob | None = None) -> None:
        if self.job.cancelled:
            self.done = True
            return
        kept = len(self.reply.ids)
        self.reply.add(token)
        if len(self.reply.ids) > kept and logprob is not None and self.job.logprobs is not None:
            self.logprobs.append(TokenLogprob(logprob.token, logprob.logprob, logprob.top[:self.job.logprobs]))
        if self.reply.done:
            self.finish(self.reply.reason)
            return
        text = self.reply.text()
        self._send(text[: len(text) - held_back(text, self.stops)])

    def finish(self, reason: str) -> None:
        """End the row, sending the text held back (up to a stop string; a character cut off by max_tokens is
        dropped, not sent broken)."""
        self._send(cut_at_stop(self.reply.text(), self.stops).rstrip("\ufffd"))
        self.done = True
        logprobs = tuple(self.logprobs) if self.job.logprobs is not None else None
        self.job.send(FinishEvent(reason, len(self.job.prompt_ids), self.reply.generated, logprobs,
                                  self.prompt_logprobs))

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.job.send(TextEvent(text[self.sent:]))
            self.sent = len(text)
