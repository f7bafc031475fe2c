"""Multiple-choice benchmarks (MMLU, C-Eval, CMMLU): `evaluate_choice()` scores a model by log-likelihood.

Questions come from benchmarks.py. Prompts are raw text in the original k-shot format (no chat template), as the
benchmarks' own scripts and lm-eval-harness do; the model's answer is the option whose continuation has the highest
summed log-probability.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.data.tokenize import bos_prefix, pad_token_id
from lorakit.errors import ConfigError, DataError
from lorakit.eval.benchmarks import LETTERS, SCORINGS, SUBJECT_NAMES_ZH, Benchmark, Question
from lorakit.progress import ProgressTarget, tracked

@dataclass
class ChoiceResult:
    """Accuracy overall, per subject and per category (`{"accuracy", "correct", "total"}`), plus every answer.

    `accuracy` counts questions (micro average); `subject_average` is the mean of per-subject accuracies, the
    figure the CMMLU and C-Eval leaderboards report.
    """

    benchmark: str
    shots: int
    accuracy: float
    correct: int
    total: int
    per_subject: dict[str, dict]
    per_category: dict[str, dict]
    records: list[dict]
    scoring: str = "letter"
    split: str = "test"
    subject_average: float = 0.0


# ---------------------------------------------------------------------------------------------------- prompts


def format_prompt(benchmark: Benchmark, question: Question, shots: int, scoring: str = "letter") -> str:
    """The raw-text k-shot prompt for `question`, ending where the answer starts ('Answer:' or '答案：')."""
    return _prompt(benchmark, question, _examples(benchmark, question, shots), scoring)


def _examples(benchmark: Benchmark, question: Question, shots: int) -> list[Question]:
    """The first `shots` dev questions of the subject, never the question itself (when scoring the dev split)."""
    pool = benchmark.dev.get(question.subject, [])
    return [example for example in pool if example.source != question.source][:shots]


def _prompt(benchmark: Benchmark, question: Question, examples: Sequence[Question], scoring: str) -> str:
    parts = [_header(benchmark.layout, question.subject)]
    for example in examples:
        answer = _continuations(benchmark.layout, example, scoring)[LETTERS.index(example.answer)]
        parts.append(f"{_block(benchmark.layout, example)}{answer}\n\n")
    parts.append(_block(benchmark.layout, question))
    return "".join(parts)


def _header(layout: str, subject: str) -> str:
    if layout == "mmlu":
        return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    name = SUBJECT_NAMES_ZH.get(layout, {}).get(subject, subject.replace("_", " "))
    return f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"


def _block(layout: str, question: Question) -> str:
    options = "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, question.options))
    return f"{question.question}{options}\n{'Answer:' if layout == 'mmlu' else '答案：'}"


def _continuations(layout: str, question: Question, scoring: str) -> list[str]:
    """What follows the prompt for each option: ' A' (English) / 'A' (Chinese), or the option's own text."""
    space = " " if layout == "mmlu" else ""
    if scoring == "letter":
        return [space + letter for letter in LETTERS[:len(question.options)]]
    return [space + option for option in question.options]


# ---------------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _Request:
    """One sequence to run: the context plus every continuation token but the last, and the options it scores.

    Each target is (option index, position where its continuation starts, continuation token ids). Options that
    differ only in their last token (" A" / " B" ...) share one sequence, so letter scoring is one pass per question.
    Requests of one `group` (a subject) share their few-shot prefix, which is run once and cached.
    """

    group: int
    question: int
    tokens: tuple[int, ...]
    targets: tuple[tuple[int, int, tuple[int, ...]], ...]


@dataclass
class _Prepared:
    requests: list[_Request] = field(default_factory=list)
    shots_used: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)


@torch.inference_mode()
def evaluate_choice(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark,
                    shots: int = 5, batch_size: int = 8, scoring: str = "letter", progress: ProgressTarget = True,
                    max_length: int | None = None) -> ChoiceResult:
    """Score every question of `benchmark.test` k-shot and return accuracies and one record per question.

    `scoring="letter"` compares the log-probabilities of the answer letters after the prompt; "content" compares
    the summed log-probability of each option's text (the few-shot examples then show answers as text too).
    `batch_size` counts sequences per forward pass. Prompts longer than `max_length` tokens (default: the model's
    max_position_embeddings) lose few-shot examples from the left, then tokens from the left. `progress` counts
    batches (see lorakit.progress).
    """
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}; got '{scoring}'.")
    if shots < 0:
        raise ConfigError(f"shots must be 0 or more, got {shots}.")
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    questions = [question for subject in benchmark.test.values() for question in subject]
    unanswered = next((question for question in questions if question.answer is None), None)
    if unanswered is not None:
        raise ConfigError(f"{benchmark.name}: the {benchmark.split} split has no answers ({unanswered.source}); "
                          "C-Eval keeps its test answers private. Score split=val instead.")
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    model.eval()
    prepared = _prepare(tokenizer, benchmark, questions, shots, scoring, max_length)
    scores = _score(model, prepared.requests, batch_size, pad_token_id(tokenizer), progress,
                    f"{benchmark.name} {shots}-shot")
    records = []
    for index, question in enumerate(questions):
        logprobs = {LETTERS[option]: scores[index, option] for option in range(len(question.options))}
        predicted = max(logprobs, key=logprobs.get)
        records.append({"subject": question.subject, "source": question.source, "answer": question.answer,
                        "predicted": predicted, "logprobs": logprobs, "correct": predicted == question.answer,
                        "shots": prepared.shots_used[index], "truncated": prepared.truncated[index]})
    return _summarise(benchmark, shots, scoring, records)


def _prepare(tokenizer: PreTrainedTokenizerBase, benchmark: Benchmark, questions: Sequence[Question], shots: int,
             scoring: str, max_length: int) -> _Prepared:
    prepared = _Prepared()
    prefix = bos_prefix(tokenizer)
    groups: dict[str, int] = {}
    for index, question in enumerate(questions):
        examples = _examples(benchmark, question, shots)
        conts = _continuations(benchmark.layout, question, scoring)
        longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in conts)
        while True:
            context = _prompt(benchmark, question, examples, scoring)
            context_ids = prefix + tokenizer(context, add_special_tokens=False)["input_ids"]
            if len(context_ids) + longest <= max_length or not examples:
                break
            examples = examples[1:]  # drop the leftmost example first
        cont_ids = [_continuation_ids(tokenizer, context, context_ids, prefix, text) for text in conts]
        room = max_length - max(len(ids) for ids in cont_ids)
        truncated = len(context_ids) > room
        if truncated:
            context_ids = context_ids[len(context_ids) - max(room, 1):]
        prepared.requests.extend(_requests(groups.setdefault(question.subject, len(groups)), index, context_ids,
                                           cont_ids))
        prepared.shots_used.append(len(examples))
        prepared.truncated.append(truncated)
    return prepared


def _continuation_ids(tokenizer: PreTrainedTokenizerBase, context: str, context_ids: list[int],
                      prefix: list[int], continuation: str) -> list[int]:
    """The continuation's tokens as the tokenizer splits context + continuation (lm-eval-harness's rule)."""
    whole = prefix + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if whole[:len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"]


def _requests(group: int, question: int, context: list[int], continuations: list[list[int]]) -> list[_Request]:
    if not context:
        raise DataError("A prompt tokenized to nothing; the model needs at least one token before the answer.")
    start = len(context)
    heads = {tuple(ids[:-1]) for ids in continuations}
    if len(heads) == 1:
        head = heads.pop()
        return [_Request(group, question, tuple(context) + head,
                         tuple((option, start, tuple(ids)) for option, ids in enumerate(continuations)))]
    return [_Request(group, question, tuple(context + ids[:-1]), ((option, start, tuple(ids)),))
            for option, ids in enumerate(continuations)]


def _score(model: PreTrainedModel, requests: list[_Request], batch_size: int, pad_id: int, progress: ProgressTarget,
           label: str) -> dict[tuple[int, int], float]:
    """Summed continuation log-probabilities, keyed by (question, option).

    The tokens a subject's requests all start with (header and few-shot examples, most of a 5-shot prompt) run once;
    each batch then runs only the rest of its sequences, right-padded, on a copy of that cache.
    """
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.group, []).append(index)
    plan = []
    for members in groups.values():
        shared = _shared_length(requests, members)
        members.sort(key=lambda index: -len(requests[index].tokens))  # similar lengths share a batch
        plan += [(shared, members[start:start + batch_size]) for start in range(0, len(members), batch_size)]
    scores: dict[tuple[int, int], float] = {}
    cached: tuple[tuple[int, ...], object] | None = None
    for shared, batch in tracked(plan, label, progress):
        rows = [requests[index] for index in batch]
        prefix = rows[0].tokens[:shared]
        if cached is None or cached[0] != prefix:
            cached = (prefix, _prefix_cache(model, prefix))
        scores.update(_score_batch(model, rows, len(prefix), cached[1], pad_id))
    return scores


def _shared_length(requests: list[_Request], members: list[int]) -> int:
    """Tokens all these requests start with, leaving each at least the token before its first continuation."""
    first = requests[members[0]].tokens
    length = min(start - 1 for index in members for _, start, _ in requests[index].targets)
    for index in members[1:]:
        tokens = requests[index].tokens
        length = min(length, len(tokens))
        length = next((position for position in range(length) if tokens[position] != first[position]), length)
    return max(length, 0)


def _prefix_cache(model: PreTrainedModel, prefix: tuple[int, ...]):
    if not prefix:
        return None
    device = next(model.parameters()).device
    kwargs = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    output = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, **kwargs)
    return output.past_key_values


def _score_batch(model: PreTrainedModel, rows: list[_Request], shared: int, cache,
                 pad_id: int) -> dict[tuple[int, int], float]:
    device = next(model.parameters()).device
    width = max(len(row.tokens) for row in rows) - shared
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), shared + width), dtype=torch.long)
    attention[:, :shared] = 1
    for row_index, row in enumerate(rows):
        rest = row.tokens[shared:]
        input_ids[row_index, :len(rest)] = torch.tensor(rest)
        attention[row_index, shared:shared + len(rest)] = 1
    # Right padding: real tokens never attend to pads, and positions simply continue after the shared prefix.
    positions = torch.arange(shared, shared + width).expand(len(rows), -1)
    # Token t of a continuation sits at start + t and is predicted by the logits at start + t - 1.
    needed = sorted({start - 1 + t - shared for row in rows for _, start, ids in row.targets for t in range(len(ids))})
    kwargs = {}
    if cache is not None:
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(len(rows))
        kwargs["past_key_values"] = cache
    column = {position: index for index, position in enumerate(needed)}
    head = _plain_head(model)
    if head is not None and _accepts_logits_to_keep(model):
        # bf16 logits are rounded to ~0.1 near typical magnitudes, enough to tie the four options; the model gives
        # hidden states only and the LM head runs in float32 on the few positions that are scored.
        kwargs["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=device)
        outputs = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        position_ids=positions.to(device), use_cache=cache is not None, output_hidden_states=True,
                        **kwargs)
        logprobs = _float32_logprobs(model, head, outputs.hidden_states[-1][:, needed]).cpu()
    else:
        if _accepts_logits_to_keep(model):
            kwargs["logits_to_keep"] = torch.tensor(needed, device=device)
        else:
            column = {position: position for position in needed}
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                       position_ids=positions.to(device), use_cache=cache is not None, **kwargs).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    scores = {}
    for row_index, row in enumerate(rows):
        for option, start, ids in row.targets:
            columns = torch.tensor([column[start - 1 + t - shared] for t in range(len(ids))])
            scores[row.question, option] = float(logprobs[row_index, columns, torch.tensor(ids)].sum())
    return scores


def _plain_head(model: PreTrainedModel) -> torch.nn.Linear | None:
    """The LM head when it is an ordinary Linear layer (not itself adapted by LoRA), else None."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = causal_lm.get_output_embeddings()
    return head if type(head) is torch.nn.Linear else None


def _float32_logprobs(model: PreTrainedModel, head: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    logits = torch.nn.functional.linear(hidden.float(), head.weight.float(),
                                        None if head.bias is None else head.bias.float())
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _summarise(benchmark: Benchmark, shots: int, scoring: str, records: list[dict]) -> ChoiceResult:
    per_subject = _tally(records, lambda record: record["subject"])
    per_category = _tally(records, lambda record: benchmark.categories.get(record["subject"], "other"))
    correct = sum(record["correct"] for record in records)
    total = len(records)
    subject_average = (sum(entry["accuracy"] for entry in per_subject.values()) / len(per_subject)
                       if per_subject else math.nan)
    return ChoiceResult(benchmark=benchmark.name, shots=shots, accuracy=correct / total if total else math.nan,
                        correct=correct, total=total, per_subject=per_subject, per_category=per_category,
                        records=records, scoring=scoring, split=benchmark.split, subject_average=subject_average)


def _tally(records: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[bool]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record["correct"])
    return {name: {"accuracy": sum(hits) / len(hits), "correct": sum(hits), "total": len(hits)}
            for name, hits in sorted(groups.items())}
