"""Step-wise batched decoding: a `Decoder` holds rows whose prompts it has read and gives each one token per
`step()`; rows join (`add`) and leave (`drop`) between steps, so a batch never waits for its longest row.

`lorakit serve` drives it token by token (continuous batching). Each row has its own sampling settings (and its
own random generator when seeded), its own LoRA adapter (PEFT's per-row `adapter_names` when rows differ) and may
ask for the log-probabilities of its tokens. A joining row's prompt is read in one forward pass of its own, and its
KV cache is merged into the batch's: rows are left-aligned to the right edge (left padding, masked out), so every
row's next token sits in the same column. Greedy rows get the tokens they would get alone, up to float rounding.

Own loop, not transformers' continuous batching (`generate_batch`, `init_continuous_batching`): in transformers
5.23 it took 20-40 s on CPU to answer two 8-token requests of a 6k-parameter model (paged-cache set-up), and it
can pick neither a LoRA adapter nor stop strings per request.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from lorakit.config import BASE
from lorakit.data.tokenize import left_pad
from lorakit.errors import ConfigError

GREEDY_BELOW = 1e-5
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Sampling:
    """How a row picks tokens; temperature below GREEDY_BELOW is greedy (smaller ones overflow the logits).

    top_k 0 and top_p 1 are off. A seed gives the row its own random generator, so a sampled row repeats whatever
    else is in the batch."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class TokenLogprob:
    """A token with its log-probability (None for a prompt's first token, which nothing predicts) and the `top`
    most likely tokens at its position as (token id, log-probability), most likely first."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(eq=False)
class DecodeRow:
    """One sequence to continue. `adapter`: a PEFT adapter name, "base" for none, or None for whatever the model
    has set; `logprobs`: None for none, else how many likeliest tokens to list beside each picked token's
    log-probability (0 or more)."""

    prompt_ids: Sequence[int]
    sampling: Sampling = Sampling()
    adapter: str | None = None
    logprobs: int | None = None
    tokens: list[int] = field(default_factory=list)  # the prompt, then each picked token
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Pick:
    """A row's new token, with its log-probability entry when the row asked for them."""

    token: int
    logprob: TokenLogprob | None = None


class Decoder:
    """A running batch of rows over one model; `rows` is the batch in order, which `step()` answers in.

    The KV cache holds every row's tokens except its newest pick, which the next `step()` feeds. `pad_id` fills the
    left padding (any id: padded columns are masked out).
    """

    def __init__(self, model: PreTrainedModel, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.rows: list[DecodeRow] = []
        self.device = next(model.parameters()).device
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cached columns], 1 where a column holds a real token
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        # transformers renamed `past_key_values` to `cache` (5.2x); the old name is deprecated, not gone.
        self._cache_name = "cache" if "cache" in inspect.signature(causal_lm.forward).parameters else "past_key_values"

    @property
    def cache_length(self) -> int:
        """The cached columns of each row: the longest row's tokens but its newest, the others padded on the left."""
        return 0 if self._mask is None else self._mask.shape[1]

    @torch.inference_mode()
    def add(self, rows: Sequence[DecodeRow]) -> list[Pick]:
        """Read the prompts of `rows` (one left-padded forward pass), put them at the end of the batch and return
        each one's first token."""
        if not rows:
            return []
        for row in rows:
            row.tokens = list(row.prompt_ids)
            if row.sampling.seed is not None and not row.sampling.greedy:
                row.generator = torch.Generator(device=self.device).manual_seed(row.sampling.seed)
        padded = left_pad([list(row.prompt_ids) for row in rows], self.pad_id)
        mask = padded["attention_mask"].to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(rows, padded["input_ids"].to(self.device), mask, positions, cache)
        self._join(cache, mask)
        self.rows.extend(rows)
        return self._pick(rows, logits)

    @torch.inference_mode()
    def step(self) -> list[Pick]:
        """One new token for every row, in the order of `rows`."""
        if not self.rows:
            return []
        newest = torch.tensor([[row.tokens[-1]] for row in self.rows], device=self.device)
        positions = self._mask.sum(-1, keepdim=True)
        mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=1)
        logits = self._forward(self.rows, newest, mask, positions, self._cache)
        self._mask = mask
        return self._pick(self.rows, logits)

    def drop(self, rows: Collection[DecodeRow]) -> None:
        """Take `rows` out of the batch, freeing their share of the cache."""
        gone = {id(row) for row in rows}
        keep = [index for index, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[index] for index in keep]
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        start = int(mask.any(0).long().argmax())  # columns that only the dropped rows used go too
        self._mask = mask[:, start:]
        for layer in self._layers(self._cache):
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]

    def clear(self) -> None:
        """Drop every row."""
        self.rows, self._cache, self._mask = [], None, None

    def _forward(self, rows: Sequence[DecodeRow], ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: DynamicCache) -> torch.Tensor:
        """The float32 logits of the last position of each row; `cache` grows by the columns of `ids`."""
        with row_adapters(self.model, [row.adapter for row in rows]) as options:
            output = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                                logits_to_keep=1, **{self._cache_name: cache}, **options)
        return output.logits[:, -1].float()

    def _join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Put a newly read cache below the batch's, both padded on the left to the wider one."""
        if self._cache is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_pad_left(self._mask, width, -1), _pad_left(mask, width, -1)])
        for mine, theirs in zip(self._layers(self._cache), self._layers(cache)):
            mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)])
            mine.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)])

    @staticmethod
    def _layers(cache: DynamicCache) -> list:
        return [layer for layer in cache.layers if layer.is_initialized]

    def _pick(self, rows: Sequence[DecodeRow], logits: torch.Tensor) -> list[Pick]:
        picks = []
        for row, scores in zip(rows, logits):
            token = _choose(row, scores[None])
            entry = None
            if row.logprobs is not None:
                logprobs = torch.log_softmax(scores, dim=-1)[None]
                entry = TokenLogprob(token, float(logprobs[0, token]), top_logprobs(logprobs, row.logprobs)[0])
            row.tokens.append(token)
            picks.append(Pick(token, entry))
        return picks


def adapter_names(model) -> list[str]:
    """The names of the adapters on `model` (none for a plain model)."""
    return list(getattr(model, "peft_config", {}) or {})


@contextlib.contextmanager
def use_adapter(model, name: str) -> Iterator[None]:
    """Within the block `model` computes with adapter `name`, or with no adapter for "base"."""
    if name == BASE:
        if not adapter_names(model):
            yield
            return
        with model.disable_adapter():
            yield
        return
    known = adapter_names(model)
    if name not in known:
        raise ConfigError(f"No adapter called '{name}' is loaded; loaded: {', '.join([BASE, *known])}.")
    model.set_adapter(name)
    yield


@contextlib.contextmanager
def row_adapters(model: PreTrainedModel, adapters: Sequence[str | None]) -> Iterator[dict]:
    """Within the block `model` computes row i with adapter `adapters[i]` ("base" for none, None for the model's
    own setting): the one they all share is set on the model, else the yielded options (PEFT's per-row
    `adapter_names`) go to the forward call."""
    if set(adapters) == {None}:
        yield {}
        return
    if None in adapters:
        raise ValueError("Rows that name their adapter cannot share a batch with rows that leave it to the model.")
    if len(set(adapters)) == 1:
        with use_adapter(model, adapters[0]):
            yield {}
        return
    yield {"adapter_names": [PEFT_BASE if adapter == BASE else adapter for adapter in adapters]}


def _choose(row: DecodeRow, scores: torch.Tensor) -> int:
    """The row's next token from its [1, vocab] logits, with transformers' own processors in generate's order."""
    sampling = row.sampling
    if sampling.repetition_penalty != 1.0:
        seen = torch.tensor([row.tokens], device=scores.device)
        scores = RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)(seen, scores)
    if sampling.greedy:
        return int(scores.argmax(-1))
    scores = TemperatureLogitsWarper(sampling.temperature)(None, scores)
    if sampling.top_k > 0:
        scores = TopKLogitsWarper(sampling.top_k)(None, scores)
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=row.generator))


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def top_logprobs(logprobs: torch.Tensor, k: int) -> list[tuple[tuple[int, float], ...]]:
    """The k likeliest (token id, log-probability) of each row of a [rows, vocab] tensor."""
    if k <= 0:
        return [()] * logprobs.shape[0]
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return [tuple(zip(row_ids, row_values)) for row_ids, row_values in zip(indices.tolist(), values.tolist())]
