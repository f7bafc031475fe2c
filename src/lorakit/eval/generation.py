"""Generation evaluation: `evaluate_generation()` answers each held-out prompt and scores it against the reference.

A conversation's last assistant turn is its reference and everything before it the prompt; a conversation that
ends on a user turn has no reference and is only answered (prediction-only mode). Predictions go to a JSONL file
next to their references and per-sample scores, so a report can show the best and worst answers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.data.formats import Conversation
from lorakit.errors import DataError
from lorakit.eval.metrics import corpus_scores, text_scores
from lorakit.files import write_text
from lorakit.infer import GenerationConfig, generate
from lorakit.progress import ProgressTarget, track
from lorakit.templates import Template


def split_reference(conversation: Conversation, system: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """The prompt messages and the reference answer (None when the conversation does not end with the assistant).

    `system` is put first when the conversation has no system message, as training does with `data.system`.
    Raises DataError for a plain-text record, which has no prompt to answer.
    """
    if conversation.text is not None or not conversation.messages:
        raise DataError(f"{conversation.origin}: a plain-text record has no prompt to answer. Generation evaluation "
                        "needs chat records (alpaca, sharegpt, openai, qa, prompt_completion); measure plain text "
                        "with a perplexity task instead.")
    messages = [dict(message) for message in conversation.messages]
    reference = None
    if messages[-1]["role"] == "assistant":
        reference = messages.pop()["content"] or ""
    if not messages:
        raise DataError(f"{conversation.origin}: the conversation is a lone assistant message, with no prompt to "
                        "answer. Put a user message before it, or drop the record.")
    if system is not None and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages, reference


def evaluate_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
                        conversations: list[Conversation], predictions_file: Path,
                        generation: GenerationConfig = GenerationConfig(), progress: ProgressTarget = True,
                        system: str | None = None, chinese: str = "words") -> dict[str, float]:
    """Answer every conversation's prompt, write the predictions file, and return the corpus scores.

    Returns `corpus_scores()` over the samples that have a reference (ROUGE, BLEU, chrF, EM, F1 on 0-100, `count`)
    plus `samples`, the number answered; without any reference only `samples` and `count` (0). `predictions_file`
    is written once at the end, whole (an interrupted run leaves a previous file as it was), one JSON line per
    sample: index, origin, prompt (the last prompt message), messages (the whole prompt), prediction, reference,
    and scores (`text_scores()`, empty without a reference). `progress` counts samples (see lorakit.progress).
    """
    if not conversations:
        raise DataError("No conversations to evaluate: the generation task's dataset is empty (check data.paths "
                        "and limit).")
    prompts, references = zip(*(split_reference(c, system) for c in conversations))
    predictions = _generate_all(model, tokenizer, template, list(prompts), generation, progress)
    rows, scored = [], []
    for index, (conversation, messages, prediction, reference) in enumerate(
            zip(conversations, prompts, predictions, references)):
        scores = text_scores(prediction, reference, chinese) if reference is not None else {}
        if reference is not None:
            scored.append((prediction, reference, scores))
        rows.append({"index": index, "origin": conversation.origin, "prompt": messages[-1]["content"],
                     "messages": messages, "prediction": prediction, "reference": reference, "scores": scores})
    write_text(predictions_file, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    if not scored:
        return {"samples": float(len(rows)), "count": 0.0}
    preds, refs, per_sample = zip(*scored)
    return {**corpus_scores(preds, refs, chinese, per_sample=per_sample), "samples": float(len(rows))}


def _generate_all(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
                  prompts: list[list[dict[str, Any]]], generation: GenerationConfig,
                  progress: ProgressTarget) -> list[str]:
    """`generate()` chunk by chunk, to move a progress bar; replies come back in the order of `prompts`.

    Prompts of similar length share a batch (less left padding); a seed is set once, as for a single call.
    """
    order = sorted(range(len(prompts)), key=lambda i: -sum(len(str(m.get("content") or "")) for m in prompts[i]))
    replies: dict[int, str] = {}
    was_training = model.training
    model.eval()
    try:
        with track("generate", len(prompts), progress, unit="sample") as advance:
            for start in range(0, len(order), generation.batch_size):
                chunk = order[start:start + generation.batch_size]
                answers = generate(model, tokenizer, template, [prompts[i] for i in chunk], generation)
                replies.update(zip(chunk, answers))
                if getattr(generation, "seed", None) is not None:
                    generation = dataclasses.replace(generation, seed=None)
                advance(len(chunk))
    finally:
        model.train(was_training)
    return [replies[i] for i in range(len(prompts))]


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a predictions file written by `evaluate_generation()`; DataError names a bad line."""
    if not path.is_file():
        raise DataError(f"{path}: no such predictions file. Run a generation evaluation first; it writes "
                        "predictions.jsonl in the task's folder.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}). The file may have been edited by "
                            "hand; run the evaluation again to rewrite it.") from error
        if not isinstance(row, dict) or "prediction" not in row:
            raise DataError(f"{path}, line {number}: a predictions row needs a 'prediction' field. Is this a file "
                            "written by `lorakit eval`?")
        rows.append(row)
    return rows
