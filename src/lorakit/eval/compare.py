"""A/B answers: `compare_answers()` asks several models (base, tuned, ...) the same questions, side by side.

`load_questions()` reads the questions, `answer_fn_for()` turns a model (a PeftModel with its adapter on or off)
into an answer function, and `write_comparison()` writes answers.jsonl, answers.md and answers.html, the input of
`lorakit judge`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import ModelConfig
from lorakit.errors import ConfigError, DataError
from lorakit.files import write_text
from lorakit.infer import GenerationConfig, generate, load_for_inference
from lorakit.templates import Template

QUESTION_FIELDS = ("question", "instruction", "prompt")
AnswerFn = Callable[[list[list[dict]]], list[str]]


def load_questions(path: Path) -> list[str]:
    """The questions in a .json or .jsonl file (strings, or objects with a question/instruction/prompt field) or
    a .txt file (one per non-empty line). An alpaca `input` is appended to its instruction.

    Raises DataError naming the file (and line or item) for an unreadable record or a file with no questions.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Questions file {path} does not exist. Check the path (relative to where you run lorakit).")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8. Re-save the file as UTF-8 (e.g. `iconv -f GBK -t UTF-8`).") from None
    if suffix == ".txt":
        questions = [line.strip() for line in text.splitlines() if line.strip()]
    elif suffix == ".jsonl":
        questions = [_question(json_line, f"{path}, line {number}")
                     for number, json_line in _jsonl_values(path, text)]
    elif suffix == ".json":
        questions = _json_questions(path, text)
    else:
        raise DataError(f"{path}: unsupported questions file type '{path.suffix}'. Use .json, .jsonl or .txt.")
    if not questions:
        raise DataError(f"{path} holds no questions. Write one question per line (.txt), a JSON list of strings, or "
                        f"records with a {'/'.join(QUESTION_FIELDS)} field.")
    return questions


def _jsonl_values(path: Path, text: str):
    # Own JSONL reader, not datasets.load_dataset: errors need line numbers.
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno}). "
                            "Each line must be one JSON string or object.") from None


def _json_questions(path: Path, text: str) -> list[str]:
    try:
        value = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
    if isinstance(value, dict):
        value = value.get("questions", value.get("data"))
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of questions (strings or objects), or an object with a "
                        "'questions' list.")
    return [_question(item, f"{path}, item {index}") for index, item in enumerate(value, start=1)]


def _question(value: Any, origin: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict):
        for name in QUESTION_FIELDS:
            if isinstance(value.get(name), str) and value[name].strip():
                extra = value.get("input") if name == "instruction" else None
                question = value[name].strip()
                return f"{question}\n\n{extra.strip()}" if isinstance(extra, str) and extra.strip() else question
        found = ", ".join(repr(key) for key in value) or "no fields"
        raise DataError(f"{origin}: no question. Each record needs a non-empty {'/'.join(QUESTION_FIELDS)} field; "
                        f"this one has {found}.")
    raise DataError(f"{origin}: expected a question string or an object with a {'/'.join(QUESTION_FIELDS)} field, "
                    f"got {json.dumps(value, ensure_ascii=False)[:80]}.")


def compare_answers(questions: Sequence[str], answer_fns: Mapping[str, AnswerFn],
                    system: str | None = None) -> list[dict[str, Any]]:
    """Each model's answer to each question: rows {"index", "question", "answers": {name: text}}.

    Each answer function gets all conversations at once (it batches them itself, as `generate` does) and must
    return one reply per conversation. Models answer in the order of `answer_fns`.
    """
    if not answer_fns:
        raise ConfigError("compare_answers needs at least one model to ask, e.g. {'base': ..., 'tuned': ...}.")
    prefix = [{"role": "system", "content": system}] if system else []
    conversations = [[*prefix, {"role": "user", "content": question}] for question in questions]
    answers: dict[str, list[str]] = {}
    for name, answer_fn in answer_fns.items():
        replies = list(answer_fn(conversations))
        if len(replies) != len(conversations):
            raise ValueError(f"Answer function '{name}' returned {len(replies)} replies for "
                             f"{len(conversations)} questions.")
        answers[name] = replies
    return [{"index": index, "question": question, "answers": {name: replies[index]
                                                               for name, replies in answers.items()}}
            for index, question in enumerate(questions)]


def answer_fn_for(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template,
                  generation: GenerationConfig, adapter: bool) -> AnswerFn:
    """An answer function on `model` via `generate`; with `adapter=False` a PeftModel answers with its adapter off.

    One PeftModel in memory thus gives both the base and the tuned answers. Raises ConfigError for `adapter=True`
    on a model that has no adapter.
    """
    has_adapter = hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
    if adapter and not has_adapter:
        raise ConfigError("answer_fn_for(adapter=True) needs a model with a LoRA adapter loaded (a PeftModel); "
                          "load one with load_for_inference(model_config, adapter_dir).")

    def answer(conversations: list[list[dict]]) -> list[str]:
        if adapter or not has_adapter:
            return generate(model, tokenizer, template, conversations, generation)
        with model.disable_adapter():
            return generate(model, tokenizer, template, conversations, generation)

    return answer


def compare_base_and_tuned(model_config: ModelConfig, adapter_dir: Path, questions: Sequence[str],
                           output_dir: Path, generation: GenerationConfig = GenerationConfig(),
                           template_name: str | None = None, system: str | None = None) -> list[dict[str, Any]]:
    """Answers of the base model ("base") and base + adapter ("tuned") to `questions`, written under `output_dir`.

    Loads the model once: the base answers come from the same PeftModel with its adapter disabled, rendered with
    the adapter's template, so only the adapter differs. Returns the rows (see `compare_answers`).
    """
    model, tokenizer, template = load_for_inference(model_config, Path(adapter_dir), template_name)
    rows = compare_answers(questions, {
        "base": answer_fn_for(model, tokenizer, template, generation, adapter=False),
        "tuned": answer_fn_for(model, tokenizer, template, generation, adapter=True)}, system)
    write_comparison(rows, output_dir)
    return rows


def read_comparison(path: Path) -> list[dict[str, Any]]:
    """The rows of an answers.jsonl written by `write_comparison`; DataError naming the line for a bad one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Answers file {path} does not exist. Write one with `lorakit eval compare` first.")
    rows = []
    for number, value in _jsonl_values(path, path.read_text(encoding="utf-8-sig")):
        if not (isinstance(value, dict) and isinstance(value.get("question"), str)
                and isinstance(value.get("answers"), dict)):
            raise DataError(f"{path}, line {number}: expected an object with 'question' and 'answers' "
                            "({model name: answer}), as `lorakit eval compare` writes.")
        rows.append({"index": value.get("index", len(rows)), "question": value["question"],
                     "answers": {str(name): str(text) for name, text in value["answers"].items()}})
    if not rows:
        raise DataError(f"{path} holds no answers. Write it with `lorakit eval compare`.")
    return rows


def write_comparison(rows: Sequence[Mapping[str, Any]], output_dir: Path) -> dict[str, Path]:
    """Write answers.jsonl, answers.md (question | model ...) and answers.html (self-contained) under `output_dir`.

    Returns the paths by format. Each file is written atomically.
    """
    output_dir = Path(output_dir)
    names = _model_names(rows)
    paths = {"jsonl": output_dir / "answers.jsonl", "md": output_dir / "answers.md",
             "html": output_dir / "answers.html"}
    write_text(paths["jsonl"], "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in rows))
    write_text(paths["md"], _markdown(rows, names))
    write_text(paths["html"], _html(rows, names))
    return paths


def _model_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row["answers"]))
    return list(names)


def _markdown_cell(text: str) -> str:
    """One table cell: HTML-escaped so answers cannot inject markup, pipes escaped, line breaks as <br>."""
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return escaped.replace("\r\n", "\n").replace("\n", "<br>") or " "


def _markdown(rows: Sequence[Mapping[str, Any]], names: list[str]) -> str:
    header = ["#", "question", *names]
    lines = ["# Answers side by side", "", "| " + " | ".join(_markdown_cell(name) for name in header) + " |",
             "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["index"] + 1), row["question"], *(row["answers"].get(name, "") for name in names)]
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei",
       "Noto Sans CJK SC", sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { border: 1px solid #ccc; padding: 0.5em; vertical-align: top; text-align: left;
         white-space: pre-wrap; overflow-wrap: anywhere; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.index { width: 3em; color: #888; }
tr:nth-child(even) td { background: #fafafa; }
"""


def _html(rows: Sequence[Mapping[str, Any]], names: list[str]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ["question", *names])
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(row['answers'].get(name, ''))}</td>" for name in names)
        body.append(f"<tr><td class=\"index\">{row['index'] + 1}</td><td>{html.escape(row['question'])}</td>"
                    f"{cells}</tr>")
    return ("<!DOCTYPE html>\n<html lang=\"und\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>Answers: {html.escape(' vs '.join(names))}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>Answers: {html.escape(' vs '.join(names))}</h1>\n"
            f"<table>\n<thead><tr><th class=\"index\">#</th>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>\n</body>\n</html>\n")
