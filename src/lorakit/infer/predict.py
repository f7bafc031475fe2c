"""Batch prediction: `predict()` answers every record of a dataset and appends one JSON line per record.

A record's last assistant turn, if any, is its reference and is left out of the prompt. The output file is the
checkpoint: each batch is appended, flushed and fsynced, so a killed run loses at most the batch in flight, and a
rerun skips the records already written (a half-written last line is dropped and redone, never duplicated).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import DataConfig, ModelConfig
from lorakit.data import Conversation, load_conversations
from lorakit.errors import DataError
from lorakit.files import write_json
from lorakit.infer.generate import GenerationConfig, generate, load_for_inference
from lorakit.progress import ProgressTarget, track
from lorakit.runs import find_adapter_dir
from lorakit.templates import Template


@dataclass(frozen=True)
class PredictionRequest:
    """One record to answer: its position in the dataset, the prompt messages and the reference answer."""

    index: int
    prompt: list[dict[str, Any]]
    reference: str | None
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class PredictSummary:
    output: Path
    total: int
    already_done: int
    written: int
    dropped_partial_line: bool


def prediction_requests(conversations: Sequence[Conversation], system: str | None = None) -> list[PredictionRequest]:
    """Each conversation as a prompt plus reference; `system` is added where a record has no system message.

    Raises DataError for plain-text records and records with nothing left to prompt with.
    """
    requests = []
    for index, conversation in enumerate(conversations):
        if not conversation.messages:
            raise DataError(f"{conversation.origin}: a plain-text record has no prompt to answer. predict needs "
                            "conversations (alpaca, sharegpt, openai, qa or prompt/completion records).")
        messages = [dict(message) for message in conversation.messages]
        reference = None
        if messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"]
        if system is not None and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": system})
        if not any(message["role"] in ("user", "tool") for message in messages):
            raise DataError(f"{conversation.origin}: no user message is left once the reference answer is set "
                            "aside, so there is nothing to answer. Give each record a user turn.")
        tools = [dict(schema) for schema in conversation.tools] if conversation.tools else None
        requests.append(PredictionRequest(index, messages, reference, tools))
    return requests


def predict(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
            requests: Sequence[PredictionRequest], output: Path, config: GenerationConfig = GenerationConfig(),
            show_progress: ProgressTarget = True) -> PredictSummary:
    """Append a prediction for every request not yet in `output` (JSONL); return what was done.

    Each line is {"index", "prompt", "prediction", "reference" (when the record has one), "tools" (when it has
    function schemas)}. Records already in the file are skipped, so an interrupted run continues where it stopped;
    the file must come from the same dataset. `show_progress` counts records, those already done included (see
    lorakit.progress).
    """
    done, dropped = _completed(output, requests)
    pending = [request for request in requests if request.index not in done]
    output.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with track("predict", len(requests), show_progress, "sample", len(done)) as advance, output.open("ab") as handle:
        for start in range(0, len(pending), config.batch_size):
            batch = pending[start:start + config.batch_size]
            replies = generate(model, tokenizer, template, [request.prompt for request in batch], config,
                               [request.tools for request in batch])
            handle.write(b"".join(_line(request, reply) for request, reply in zip(batch, replies)))
            handle.flush()
            os.fsync(handle.fileno())
            written += len(batch)
            advance(len(batch))
    return PredictSummary(output, len(requests), len(done), written, dropped)


def _line(request: PredictionRequest, prediction: str) -> bytes:
    record: dict[str, Any] = {"index": request.index, "prompt": request.prompt, "prediction": prediction}
    if request.tools:
        record["tools"] = request.tools
    if request.reference is not None:
        record["reference"] = request.reference
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _completed(output: Path, requests: Sequence[PredictionRequest]) -> tuple[set[int], bool]:
    """Indices already predicted in `output`; a last line cut short by a kill is removed from the file."""
    if not output.is_file():
        return set(), False
    by_index = {request.index: request for request in requests}
    data = output.read_bytes()
    lines = data.splitlines(keepends=True)
    done: set[int] = set()
    kept = 0
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        record = _parse(line) if line.endswith(b"\n") else None
        if record is None:
            if last:
                break  # written when the run was killed: redone below
            raise DataError(f"{output}, line {number}: not a prediction record. The file is damaged or is not "
                            "lorakit predict output; delete it or choose another output file.")
        index = record["index"]
        if index not in by_index or record.get("prompt") != _as_json(by_index[index].prompt):
            raise DataError(f"{output}, line {number}: the prediction for record {index} was made for another prompt, "
                            "so this file belongs to another dataset or settings. Choose another output file, or delete "
                            "the file to start over.")
        done.add(index)
        kept += len(line)
    if kept < len(data):
        with output.open("r+b") as handle:
            handle.truncate(kept)
            os.fsync(handle.fileno())
    return done, kept < len(data)


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False))


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("index"), int) or "prediction" not in record:
        return None
    return record


def run_predict(data: DataConfig, model_config: ModelConfig, output: Path,
                config: GenerationConfig = GenerationConfig(), adapter: Path | None = None,
                template_name: str | None = None, show_progress: ProgressTarget = True) -> PredictSummary:
    """Read the dataset (before loading any model, so data errors come first), load the model, predict to `output`."""
    conversations, _ = load_conversations(data)
    requests = prediction_requests(conversations, data.system)
    adapter_dir = find_adapter_dir(adapter) if adapter is not None else None
    settings = {"model": model_config.name, "adapter": str(adapter_dir) if adapter_dir else None,
                "template": template_name, "dtype": model_config.dtype,
                "generation": {key: value for key, value in dataclasses.asdict(config).items() if key != "batch_size"}}
    _check_settings(output, _as_json(settings))
    model, tokenizer, template = load_for_inference(model_config, adapter_dir, template_name)
    return predict(model, tokenizer, template, requests, output, config, show_progress)


def settings_file(output: Path) -> Path:
    """Beside the predictions: the model and sampling settings they were made with."""
    return output.with_name(output.name + ".settings.json")


def _check_settings(output: Path, settings: dict[str, Any]) -> None:
    """A rerun may only continue a file made with the same model, adapter and sampling; else say what differs."""
    sidecar = settings_file(output)
    if output.is_file() and output.stat().st_size and sidecar.is_file():
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
        differs = [key for key in settings if saved.get(key) != settings[key]]
        if differs:
            details = "; ".join(f"{key}: {saved.get(key)!r} then, {settings[key]!r} now" for key in differs)
            raise DataError(f"{output} holds predictions made with other settings ({details}). Rerun with the same "
                            "settings to continue it, or choose another output file.")
    write_json(sidecar, settings)
