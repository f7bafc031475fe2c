"""Generation: `generate()` answers conversations in left-padded batches, `stream_generate()` one reply in pieces.

Both run lorakit.infer.decoder's `Decoder`, the one decoding loop every caller shares (`lorakit serve` drives it a
token at a time); `score_prompts()` gives the log-probabilities of given tokens (a prompt), the float32
log-softmax of the model's own logits.

The prompt is rendered with the template the adapter was trained with (saved in its tokenizer), so inference
sees exactly what training saw. Replies end at the tokenizer's EOS, the template's stop words or a user's stop
strings, and never contain them.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import GenerationConfig, ModelConfig
from lorakit.data.tokenize import pad_token_id
from lorakit.infer.decoder import Decoder, DecodeRow, Sampling, TokenLogprob, top_logprobs
from lorakit.model import load_model, load_tokenizer
from lorakit.runs import SETTINGS_FILE, check_same_base, find_adapter_dir, open_run
from lorakit.templates import Template, render, resolve_template


def inference_model(name: str | None, adapter: Path | None, device: str = "auto",
                    dtype: str = "auto") -> tuple[ModelConfig, Path | None]:
    """The model to load and the adapter folder: with no `name`, the adapter's own base (or the default model).

    `adapter` may be any trained model `runs.open_run` knows; a full or freeze run's `model/` becomes the model.
    """
    adapter_dir = None
    if adapter is not None:
        run = open_run(adapter)
        if not run.is_adapter:
            return ModelConfig(name=str(run.weights_dir), device=device, dtype=dtype), None
        adapter_dir = run.weights_dir
    if name is None:
        name = open_run(adapter_dir).require_base_model() if adapter_dir is not None else ModelConfig().name
    return ModelConfig(name=name, device=device, dtype=dtype), adapter_dir


def load_adapter(model: PreTrainedModel, adapter_dir: Path, base_name: str):
    """Put a saved PEFT adapter on `model`; refuse one trained on another base model."""
    from peft import PeftModel

    adapter_dir = find_adapter_dir(adapter_dir)
    check_same_base(adapter_dir, model, base_name)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def load_inference_tokenizer(model_config: ModelConfig, adapter_dir: Path | None = None,
                             template_name: str | None = None) -> tuple[PreTrainedTokenizerBase, Template]:
    """The tokenizer and template to talk to a model: an adapter's own tokenizer and training template win.

    With no `template_name`, a model lorakit trained (an adapter, or a full run's model folder) is prompted with
    the template it was trained with, rendering options and system prompt included (see runs.py), provided its
    tokenizer still carries the same Jinja.
    """
    tokenizer = None
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    if tokenizer is None:
        tokenizer = load_tokenizer(model_config)
    if template_name is None:
        trained_folder = adapter_dir if adapter_dir is not None else Path(model_config.name).expanduser()
        if adapter_dir is not None or (trained_folder / SETTINGS_FILE).is_file():
            trained = open_run(trained_folder).template(tokenizer)
            if trained is not None:
                return tokenizer, trained
    return tokenizer, resolve_template(template_name, tokenizer)


def load_for_inference(model_config: ModelConfig, adapter_dir: Path | None = None,
                       template_name: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Template]:
    """Base model (plus adapter) with the tokenizer and template to talk to it; the adapter's own tokenizer wins."""
    tokenizer, template = load_inference_tokenizer(model_config, adapter_dir, template_name)
    model = load_model(model_config)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir, model_config.name)
    model.eval()
    return model, tokenizer, template


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
             conversations: list[list[dict]], config: GenerationConfig = GenerationConfig(),
             tools: Sequence[list[dict] | None] | None = None) -> list[str]:
    """The assistant's reply to each conversation, generated in left-padded batches.

    `tools`, when given, holds each conversation's function schemas (or None), shown to the model by the template.
    """
    tools = list(tools) if tools is not None else [None] * len(conversations)
    prompts = [render(template, tokenizer, messages, tools=schemas, add_generation_prompt=True)
               for messages, schemas in zip(conversations, tools)]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    return generate_replies(model, tokenizer, prompt_ids, config, _stop_strings(template, config),
                            stop_token_ids(tokenizer, template))


@torch.inference_mode()
def generate_replies(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                     config: GenerationConfig, stops: tuple[str, ...] = (), eos_ids: Sequence[int] | None = None,
                     after_text: bool = False, batches: Iterable[Sequence[int]] | None = None) -> list[str]:
    """The batched generation loop: a reply to each token-id prompt, in the order of `prompts`.

    Prompts go `config.batch_size` at a time in their order, or as the index lists of `batches` (a caller may sort
    them by length or wrap them in a progress bar); a batch's rows leave it as they end. Sampling is seeded once
    with `config.seed`. A row ends at a token of `eos_ids` (default: the tokenizer's eos), `config.max_new_tokens`
    or a stop string of `stops`; its reply is cut at its first stop string and stripped. With `after_text`, a stop
    string before the reply's first non-blank character does not count (GSM8K's answers may open with a blank
    line).
    """
    if batches is None:
        batches = [range(start, min(start + config.batch_size, len(prompts)))
                   for start in range(0, len(prompts), config.batch_size)]
    if eos_ids is None:
        eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if config.seed is not None:
        torch.manual_seed(config.seed)
    decoder = Decoder(model, pad_token_id(tokenizer))
    replies: dict[int, str] = {}
    for batch in batches:
        rows = {DecodeRow(prompts[index], _sampling(config)): index for index in batch}
        ends = {row: Reply(tokenizer, stops, eos_ids, config.max_new_tokens, after_text) for row in rows}
        for _ in _decode(decoder, ends):
            pass
        for row, index in rows.items():
            text = ends[row].text()
            replies[index] = trim_reply(text.lstrip() if after_text else text, stops)
    return [replies[index] for index in range(len(prompts))]


class Reply:
    """A reply as it grows: its tokens (an end-of-turn token left out), how many were generated, and why it ended:
    "stop" (an end-of-turn token of `eos_ids` or a stop string), "length" (`max_new_tokens`), None while it goes on.

    With `after_text`, a stop string before the reply's first non-blank character does not count.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...], eos_ids: Collection[int],
                 max_new_tokens: int, after_text: bool = False) -> None:
        self.tokenizer, self.stops, self.eos_ids = tokenizer, stops, set(eos_ids)
        self.max_new_tokens, self.after_text = max_new_tokens, after_text
        self.window = max((len(word) for word in stops), default=0) + 8
        self.ids: list[int] = []
        self.generated = 0
        self.reason: str | None = None

    @property
    def done(self) -> bool:
        return self.reason is not None

    def add(self, token: int) -> None:
        self.generated += 1
        if token in self.eos_ids:
            self.reason = "stop"
            return
        self.ids.append(token)
        if self.stops and self._holds_stop():
            self.reason = "stop"
        elif self.generated >= self.max_new_tokens:
            self.reason = "length"

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _holds_stop(self) -> bool:
        # Only the newest tokens can complete a stop string: earlier ones would have ended the reply already.
        window = self.tokenizer.decode(self.ids[-self.window:], skip_special_tokens=True)
        if not any(word in window for word in self.stops):
            return False
        if not self.after_text:
            return True
        return any(word in self.text().lstrip() for word in self.stops)  # rare: only on a hit


def _decode(decoder: Decoder, replies: dict[DecodeRow, Reply],
            cancel: threading.Event | None = None) -> Iterator[None]:
    """Generate the rows of `replies` (keys) until each has ended or `cancel` is set; yields after each token."""
    try:
        picks = decoder.add(list(replies))
        rows = list(decoder.rows)
        while True:
            for row, pick in zip(rows, picks):
                replies[row].add(pick.token)
            decoder.drop([row for row in rows if replies[row].done])
            yield
            if not decoder.rows or (cancel is not None and cancel.is_set()):
                return
            rows, picks = list(decoder.rows), decoder.step()
    finally:
        decoder.clear()


def _sampling(config: GenerationConfig) -> Sampling:
    return Sampling(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                    repetition_penalty=config.repetition_penalty)


@torch.inference_mode()
def score_prompts(model: PreTrainedModel, prompts: Sequence[Sequence[int]], pad_id: int, top: int = 0,
                  **options) -> list[list[TokenLogprob]]:
    """Each prompt's tokens with their log-probabilities given the tokens before them (one teacher-forced,
    right-padded forward pass; the first token's is None) and the `top` likeliest tokens at each position.

    `options` go to the model's forward (PEFT's `adapter_names`, a row each)."""
    width = max(len(row) for row in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for index, row in enumerate(prompts):
        ids[index, :len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[index, :len(row)] = 1
    device = next(model.parameters()).device
    # Right padding: real tokens never attend to the pads after them, and their positions start at 0.
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **options).logits
    scored = []
    for index, row in enumerate(prompts):
        logprobs = torch.log_softmax(logits[index, :len(row) - 1].float(), dim=-1)  # one row at a time: vocab-sized
        targets = torch.tensor(list(row[1:]), dtype=torch.long, device=logprobs.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        entries = [TokenLogprob(row[0], None)]
        entries += [TokenLogprob(token, logprob, row_top)
                    for token, logprob, row_top in zip(row[1:], chosen, top_logprobs(logprobs, top))]
        scored.append(entries)
    return scored


def stream_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
                    messages: list[dict], config: GenerationConfig = GenerationConfig(),
                    cancel: threading.Event | None = None, tools: list[dict] | None = None) -> Iterator[str]:
    """Yield the assistant's reply to `messages` in pieces as its tokens are generated.

    The pieces join to what `generate()` returns for the same settings. Text that may begin a stop string is held
    back until it cannot. Setting `cancel` (from another thread) or closing the iterator stops the generation after
    the token in flight.
    """
    stops = _stop_strings(template, config)
    prompt = render(template, tokenizer, messages, tools=tools, add_generation_prompt=True)
    row = DecodeRow(tokenizer(prompt, add_special_tokens=False)["input_ids"], _sampling(config))
    reply = Reply(tokenizer, stops, stop_token_ids(tokenizer, template), config.max_new_tokens)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    shown = 0
    for _ in _decode(Decoder(model, pad_token_id(tokenizer)), {row: reply}, cancel):
        safe = _safe_prefix(reply.text(), stops)
        if len(safe) > shown:
            yield safe[shown:]
            shown = len(safe)
    final = trim_reply(reply.text(), stops)
    if len(final) > shown:
        yield final[shown:]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """The token ids that end a reply: the tokenizer's eos and each of the template's stop words that is one token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for word in template.stop_words:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(ids)


def _stop_strings(template: Template, config: GenerationConfig) -> tuple[str, ...]:
    return tuple(dict.fromkeys(word for word in (*template.stop_words, *config.stop) if word))


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to its first stop string."""
    return text[:min((text.find(word) for word in stops if word in text), default=len(text))]


def trim_reply(text: str, stops: tuple[str, ...]) -> str:
    """The reply up to its first stop string, without surrounding blanks."""
    return cut_at_stop(text, stops).strip()


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """The part of a growing reply that later tokens cannot change, without trailing whitespace (the final reply
    is stripped)."""
    text = cut_at_stop(text, stops)
    return text[:len(text) - held_back(text, stops)].strip()


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of a growing reply to hold back: an unfinished multi-byte character (U+FFFD)
    or a tail that may begin a stop string. Streaming (here and in the server) shows only what comes before."""
    held = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                held = max(held, size)
                break
    return held
