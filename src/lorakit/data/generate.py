"""Dataset generation: `generate_dataset(config, generator, judge)` turns documents into training records with an
LLM and keeps those a judge model scores well, behind `lorakit data generate`.

Documents are cut into chunks (`lorakit.data.chunks`); each chunk gives records by `config.mode`: qa (questions
first, then an answer to each from the chunk alone), summary, continuation (previous passage -> next passage, no
generator call), dialogue, or custom (a Jinja prompt). Each record is scored 1-10 against a rubric; records under
`judge.threshold`, and replies that stayed unusable after one retry, go to `rejects.jsonl` with their raw text.

Every finished item is appended to `checkpoint.jsonl`, keyed by (chunk id, item index), before anything else
happens, so a killed run started again with the same settings asks only for what is missing. The outputs are
rewritten from the checkpoint at the end of each run, in chunk order, which is what makes them exact. Each line
also holds the requests and tokens spent since the line before, so the report counts what every run used.

The generator and the judge are `lorakit.llm_client` clients: an OpenAI-compatible endpoint or (`backend: local`)
a model lorakit loads and answers in batches itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorakit.config import GenerateConfig, to_dict
from lorakit.data.chunks import Chunk, chunk_documents, read_documents
from lorakit.data.formats import Conversation
from lorakit.data.inspect import to_record
from lorakit.errors import ConfigError, DataError
from lorakit.files import save_figure, write_json, write_text
from lorakit.llm_client import (BudgetSpent, ModelClient, ReplyError, Usage, ask_parsed, open_client,
                                parse_json_reply, strip_think)

CHECKPOINT_FILE, REJECTS_FILE, REPORT_FILE, HISTOGRAM_FILE = ("checkpoint.jsonl", "rejects.jsonl",
                                                              "generate_report.json", "scores.png")
REGISTRY_FILE = "dataset_info.json"
QUESTIONS = "questions"  # the checkpoint key of a chunk's question list (qa), beside its items 0, 1, ...
_USAGE_KEYS = ("requests", "prompt_tokens", "completion_tokens")

# ---------------------------------------------------------------- prompts

_LANGUAGE_NAMES = {"en": "English", "zh": "Chinese (简体中文)"}

_PROMPTS = {
    "en": {
        "questions": "Read the passage below (from {source}{heading}). Write {count} different questions that a "
                     "reader can answer from this passage alone. Each question must stand on its own: name what it "
                     "asks about instead of saying \"the passage\" or \"the text\". Write them in {language}.\n\n"
                     "[Passage]\n{chunk}\n[End of passage]\n\n"
                     "Reply with a single JSON object and nothing else: {{\"questions\": [\"...\", \"...\"]}}",
        "answer": "Answer the question using only the passage below. Do not mention the passage; answer fully, in "
                  "{language}. If the passage does not hold the answer, say so.\n\n"
                  "[Passage]\n{chunk}\n[End of passage]\n\n[Question]\n{question}\n\nReply with the answer only.",
        "summary": "Summarise the passage below in {language}, in a few sentences that keep its key facts and "
                   "names.\n\n[Passage]\n{chunk}\n[End of passage]\n\nReply with the summary only.",
        "summary_instruction": "Summarise the following text.\n\n{chunk}",
        "continuation_instruction": "Continue the following text.\n\n{chunk}",
        "dialogue": "Write a realistic multi-turn conversation in {language} between a user who wants to learn "
                    "about the passage below and a helpful assistant who answers only from it. 2 to 4 user turns, "
                    "each followed by the assistant's answer; the user never mentions \"the passage\".\n\n"
                    "[Passage]\n{chunk}\n[End of passage]\n\n"
                    "Reply with a single JSON object and nothing else: {{\"messages\": [{{\"role\": \"user\", "
                    "\"content\": \"...\"}}, {{\"role\": \"assistant\", \"content\": \"...\"}}]}}",
        "judge": "You check training data generated from a document. Score the record below from 1 (unusable) to "
                 "10 (excellent) against the rubric.\n\n[Rubric]\n{rubric}\n\n[Passage]\n{chunk}\n"
                 "[End of passage]\n\n[Record]\n{record}\n[End of record]\n\n"
                 "Reply with a single JSON object and nothing else: {{\"score\": 7, \"reason\": \"one sentence\"}}",
        "rubric": "- Faithful: everything the answer states is supported by the passage.\n"
                  "- Self-contained: the question makes sense without seeing the passage.\n"
                  "- Useful and complete: the answer fully and clearly answers the question.",
    },
    "zh": {
        "questions": "阅读下面的段落（出自 {source}{heading}）。写出 {count} 个不同的问题，读者仅凭这段文字就能回答。"
                     "每个问题都要独立成立：直接说出所问的对象，不要说“这段文字”“原文”。用{language}写。\n\n"
                     "[段落]\n{chunk}\n[段落结束]\n\n"
                     "只回复一个 JSON 对象，不要其他内容：{{\"questions\": [\"...\", \"...\"]}}",
        "answer": "只根据下面的段落回答问题。不要提到“段落”；回答完整，用{language}。如果段落中没有答案，请直说。\n\n"
                  "[段落]\n{chunk}\n[段落结束]\n\n[问题]\n{question}\n\n只回复答案。",
        "summary": "用{language}把下面的段落概括成几句话，保留关键事实和名字。\n\n[段落]\n{chunk}\n[段落结束]\n\n只回复摘要。",
        "summary_instruction": "请概括下面这段文字。\n\n{chunk}",
        "continuation_instruction": "请续写下面这段文字。\n\n{chunk}",
        "dialogue": "用{language}写一段多轮对话：用户想了解下面段落中的内容，助手只根据段落回答。用户发言 2 到 4 次，每次后面跟着"
                    "助手的回答；用户不提“段落”。\n\n[段落]\n{chunk}\n[段落结束]\n\n"
                    "只回复一个 JSON 对象，不要其他内容：{{\"messages\": [{{\"role\": \"user\", \"content\": \"...\"}}, "
                    "{{\"role\": \"assistant\", \"content\": \"...\"}}]}}",
        "judge": "你在检查根据文档生成的训练数据。按评分标准给下面的记录打分，1（不可用）到 10（优秀）。\n\n[评分标准]\n{rubric}\n\n"
                 "[段落]\n{chunk}\n[段落结束]\n\n[记录]\n{record}\n[记录结束]\n\n"
                 "只回复一个 JSON 对象，不要其他内容：{{\"score\": 7, \"reason\": \"一句话理由\"}}",
        "rubric": "- 忠实：回答中的每一点都有段落支持。\n- 独立：不看段落也能读懂问题。\n- 有用且完整：回答完整、清楚地回答了问题。",
    },
}


# ---------------------------------------------------------------- report


@dataclass
class GenerateReport:
    """What a run did. Counts cover every item in the checkpoint (earlier runs included), and so do `requests`
    and the tokens (retries included; a killed run's requests whose replies were lost to the kill are not
    counted); `run_*` and `seconds` are this run's own; `resumed` items were found in the checkpoint at the start."""

    chunks: int = 0
    items: int = 0
    generated: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    parse_failures: int = 0
    retried_replies: int = 0
    scores: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    run_requests: int = 0
    run_prompt_tokens: int = 0
    run_completion_tokens: int = 0
    seconds: float = 0.0
    resumed: int = 0
    complete: bool = True
    stopped: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- checkpoint


class _Checkpoint:
    """The append-only record of finished work: a header line (the settings), then one line per finished key,
    each with the `usage` spent since the line before (read from `meter`, this run's running total); a last
    `usage` line at `close()` holds the rest."""

    def __init__(self, path: Path, settings: dict[str, Any], force: bool, meter: Callable[[], Usage] = Usage):
        self.path, self._lock, self._meter = path, threading.Lock(), meter
        self.entries: dict[tuple[str, Any], dict[str, Any]] = {}
        self.used_before = Usage()  # by earlier runs
        self._recorded = Usage()  # of this run's usage, what the lines written so far hold
        if force and path.exists():
            path.unlink()
        if path.exists():
            self._load(settings)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"kind": "header", "settings": settings})

    def _load(self, settings: dict[str, Any]) -> None:
        good_bytes, lines = 0, []
        with self.path.open("rb") as handle:
            for raw in handle:
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: dropped, its work is redone
                if not raw.endswith(b"\n"):
                    break
                good_bytes += len(raw)
                lines.append(line)
        if not lines or lines[0].get("kind") != "header":
            raise DataError(f"{self.path}: not a lorakit generate checkpoint. Choose another output_dir, or set "
                            "force=true to start over there.")
        changed = sorted(key for key in settings.keys() | lines[0]["settings"].keys()
                         if settings.get(key) != lines[0]["settings"].get(key))
        if changed:
            raise ConfigError(f"{self.path.parent} holds a generate run with other settings (they differ in: "
                              f"{', '.join(changed)}). Run it again with its settings to go on, choose another "
                              "output_dir, or set force=true to start over.")
        with self.path.open("r+b") as handle:
            handle.truncate(good_bytes)
        for line in lines[1:]:
            for key, value in line.get("usage", {}).items():
                setattr(self.used_before, key, getattr(self.used_before, key) + value)
            if line.get("kind") != "usage":
                self.entries[(line["chunk"], line["index"])] = line

    def get(self, chunk: str, index: Any) -> dict[str, Any] | None:
        return self.entries.get((chunk, index))

    def add(self, line: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            line = {**line, "usage": self._unrecorded_usage()}
            self.entries[(line["chunk"], line["index"])] = line
            self._append(line)
        return line

    def close(self) -> None:
        with self._lock:
            usage = self._unrecorded_usage()
            if any(usage.values()):
                self._append({"kind": "usage", "usage": usage})

    def total_usage(self) -> Usage:
        """Every run's usage: the earlier runs' and all of this run's."""
        now = self._meter()
        return Usage(*(getattr(self.used_before, key) + getattr(now, key) for key in _USAGE_KEYS))

    def _unrecorded_usage(self) -> dict[str, int]:
        now = self._meter()
        usage = {key: getattr(now, key) - getattr(self._recorded, key) for key in _USAGE_KEYS}
        self._recorded = now
        return usage

    def _append(self, line: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


# ---------------------------------------------------------------- generation


class _Generation:
    """One run's state: the settings, the clients, and where finished items are recorded (None in preview)."""

    def __init__(self, config: GenerateConfig, generator: ModelClient, judge: ModelClient | None,
                 checkpoint: _Checkpoint | None):
        self.config, self.generator, self.judge, self.checkpoint = config, generator, judge, checkpoint
        self.rubric = Path(config.judge.rubric).read_text(encoding="utf-8") if config.judge.rubric else None
        self.template = _load_template(config.template) if config.mode == "custom" else None
        self.items: list[dict[str, Any]] = []

    def chunk_items(self, chunk: Chunk, previous: Chunk | None, limit: int | None = None) -> list[dict[str, Any]]:
        """The items of `chunk` (from the checkpoint where done), generating and judging the missing ones."""
        if self.config.mode == "continuation":
            if previous is None or previous.source != chunk.source:
                return []
            return [self._item(chunk, 0, lambda: _continuation(previous, chunk, self.language(chunk)))]
        if self.config.mode != "qa":
            return [self._item(chunk, 0, lambda: self._single(chunk))]
        plan = self._questions(chunk)
        if plan["error"] is not None:
            return [self._item(chunk, 0, lambda: {"messages": None, "raw": plan["raw"], "error": plan["error"],
                                                  "attempts": 0, "stage": "questions"})]
        questions = plan["questions"][:limit] if limit else plan["questions"]
        return [self._item(chunk, index, lambda question=question: self._answer(chunk, question))
                for index, question in enumerate(questions)]

    def language(self, chunk: Chunk) -> str:
        return chunk.language if self.config.language == "auto" else self.config.language

    def _prompt(self, chunk: Chunk, name: str, **values: Any) -> str:
        language = self.language(chunk)
        heading = f", {chunk.heading}" if chunk.heading else ""
        return _PROMPTS[language][name].format(source=Path(chunk.source).name, heading=heading, chunk=chunk.text,
                                               language=_LANGUAGE_NAMES[language], **values)

    def _ask(self, prompt: str, parse: Callable[[str], Any]):
        return ask_parsed(self.generator, [{"role": "user", "content": prompt}], parse, self.config.temperature)

    def _questions(self, chunk: Chunk) -> dict[str, Any]:
        done = self.checkpoint.get(chunk.id, QUESTIONS) if self.checkpoint else None
        if done is not None:
            return done
        count = self.config.questions_per_chunk
        parsed = self._ask(self._prompt(chunk, "questions", count=count), lambda text: _parse_questions(text, count))
        plan = {"chunk": chunk.id, "index": QUESTIONS, "questions": parsed.value or [], "raw": parsed.raw,
                "error": parsed.error, "attempts": parsed.attempts}
        return self.checkpoint.add(plan) if self.checkpoint else plan

    def _answer(self, chunk: Chunk, question: str) -> dict[str, Any]:
        parsed = self._ask(self._prompt(chunk, "answer", question=question), _parse_text)
        messages = ([{"role": "user", "content": question}, {"role": "assistant", "content": parsed.value}]
                    if parsed.error is None else None)
        return {"messages": messages, "raw": parsed.raw, "error": parsed.error, "attempts": parsed.attempts,
                "stage": "answer", "question": question}

    def _single(self, chunk: Chunk) -> dict[str, Any]:
        mode = self.config.mode
        if mode == "summary":
            parsed = self._ask(self._prompt(chunk, "summary"), _parse_text)
            instruction = self._prompt(chunk, "summary_instruction")
            messages = ([{"role": "user", "content": instruction}, {"role": "assistant", "content": parsed.value}]
                        if parsed.error is None else None)
        else:
            prompt = (self._prompt(chunk, "dialogue") if mode == "dialogue" else
                      self.template.render(chunk=chunk.text, source=chunk.source, heading=chunk.heading,
                                           language=self.language(chunk), span=[chunk.start, chunk.end]))
            parsed = self._ask(prompt, _parse_dialogue if mode == "dialogue" else _parse_custom)
            messages = parsed.value
        return {"messages": messages, "raw": parsed.raw, "error": parsed.error, "attempts": parsed.attempts,
                "stage": mode}

    def _item(self, chunk: Chunk, index: int, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        done = self.checkpoint.get(chunk.id, index) if self.checkpoint else None
        if done is not None:
            return done
        item = {"chunk": chunk.id, "index": index, **make()}
        if item["messages"] is not None and self.judge is not None:
            item.update(self._judge(chunk, item["messages"]))
        return self.checkpoint.add(item) if self.checkpoint else item

    def _judge(self, chunk: Chunk, messages: list[dict[str, str]]) -> dict[str, Any]:
        record = "\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in messages)
        rubric = self.rubric or _PROMPTS[self.language(chunk)]["rubric"]
        prompt = self._prompt(chunk, "judge", rubric=rubric, record=record)
        parsed = ask_parsed(self.judge, [{"role": "user", "content": prompt}], _parse_verdict)
        score, reason = parsed.value if parsed.error is None else (None, "")
        return {"score": score, "reason": reason, "judge_raw": parsed.raw, "judge_error": parsed.error,
                "judge_attempts": parsed.attempts}


def _load_template(path: Path):
    import jinja2

    try:
        return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(Path(path).read_text("utf-8"))
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"template {path}, line {err.lineno}: {err.message}.") from None


def _continuation(previous: Chunk, chunk: Chunk, language: str) -> dict[str, Any]:
    instruction = _PROMPTS[language]["continuation_instruction"].format(chunk=previous.text)
    return {"messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": chunk.text}],
            "raw": "", "error": None, "attempts": 0, "stage": "continuation", "previous_chunk": previous.id}


# ---------------------------------------------------------------- reading replies


def _parse_text(text: str) -> str:
    answer = strip_think(text)
    if not answer:
        raise ReplyError("the reply is empty (or only reasoning)")
    return answer


def _parse_questions(text: str, count: int) -> list[str]:
    value = parse_json_reply(text, dict)
    questions = value.get("questions") if value is not None else parse_json_reply(text, list)
    if not isinstance(questions, list):
        raise ReplyError('no JSON {"questions": [...]} in the reply')
    questions = [str(question).strip() for question in questions if str(question).strip()]
    if not questions:
        raise ReplyError("the reply lists no questions")
    return questions[:count]


def _parse_dialogue(text: str) -> list[dict[str, str]]:
    value = parse_json_reply(text, dict)
    messages = value.get("messages") if value is not None else None
    if not isinstance(messages, list) or len(messages) < 2:
        raise ReplyError('no JSON {"messages": [...]} with at least two turns in the reply')
    turns = []
    for number, message in enumerate(messages):
        role = str(message.get("role", "")).lower() if isinstance(message, dict) else ""
        content = str(message.get("content", "")).strip() if isinstance(message, dict) else ""
        if role != ("user", "assistant")[number % 2] or not content:
            raise ReplyError(f"turn {number + 1} must be a non-empty {('user', 'assistant')[number % 2]} turn")
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] != "assistant":
        turns.pop()
    return turns


def _parse_custom(text: str) -> list[dict[str, str]]:
    value = parse_json_reply(text, dict)
    if value is not None and "messages" in value:
        return _parse_dialogue(text)
    for prompt_key, response_key in (("instruction", "output"), ("question", "answer"), ("prompt", "response")):
        if value is not None and str(value.get(prompt_key, "")).strip() and str(value.get(response_key, "")).strip():
            prompt = str(value[prompt_key]).strip()
            if str(value.get("input", "")).strip():
                prompt = f"{prompt}\n\n{str(value['input']).strip()}"
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(value[response_key])}]
    raise ReplyError("no JSON object with instruction/output, question/answer or messages in the reply")


def _parse_verdict(text: str) -> tuple[float, str]:
    value = parse_json_reply(text, dict)
    if value is None:
        raise ReplyError('no JSON {"score": ..., "reason": ...} in the reply')
    score = value.get("score")
    if isinstance(score, str):
        try:
            score = float(score.split("/")[0])
        except ValueError:
            score = None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 1 <= score <= 10:
        raise ReplyError(f"'score' must be a number from 1 to 10, got {value.get('score')!r}")
    return float(score), str(value.get("reason", "")).strip()


# ---------------------------------------------------------------- the run


def generate_dataset(config: GenerateConfig, generator: ModelClient, judge: ModelClient | None) -> GenerateReport:
    """Generate, judge and write the dataset of `config` under `config.output_dir`: `config.data_file` (kept
    records, with provenance), rejects.jsonl, dataset_info.json, generate_report.json, scores.png and the
    checkpoint. Goes on from the checkpoint of an interrupted run with the same settings.

    Raises ConfigError when output_dir holds other files or a run with other settings (unless `force`).
    A spent request budget stops the run early: what was finished is written, and `report.complete` is False.
    """
    started = time.monotonic()
    chunks = _chunks(config)
    _refuse_foreign_output(config)
    used = _meter(generator, judge)
    checkpoint = _Checkpoint(Path(config.output_dir) / CHECKPOINT_FILE, _settings(config, generator, judge),
                             config.force, used)
    report = GenerateReport(chunks=len(chunks),
                            resumed=sum(key[1] != QUESTIONS for key in checkpoint.entries))
    run = _Generation(config, generator, judge, checkpoint)
    pool = ThreadPoolExecutor(max_workers=generator.config.concurrency)
    try:
        list(pool.map(lambda pair: run.chunk_items(*pair), zip(chunks, [None, *chunks[:-1]])))
    except BudgetSpent as err:
        report.complete, report.stopped = False, str(err)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    checkpoint.close()
    this_run, in_all = used(), checkpoint.total_usage()
    report.requests, report.prompt_tokens, report.completion_tokens = (getattr(in_all, key) for key in _USAGE_KEYS)
    report.run_requests, report.run_prompt_tokens, report.run_completion_tokens = (getattr(this_run, key)
                                                                                  for key in _USAGE_KEYS)
    _write_outputs(config, chunks, checkpoint, report, generator, judge)
    report.seconds = round(time.monotonic() - started, 2)
    write_json(Path(config.output_dir) / REPORT_FILE, asdict(report))
    return report


def preview_generation(config: GenerateConfig, generator: ModelClient, judge: ModelClient | None,
                       records: int = 3) -> tuple[list[Chunk], list[dict[str, Any]]]:
    """The chunks, and the first `records` records generated (and judged) from the first chunks, each as it would
    be written (in `output_format`, with provenance; a reject as in rejects.jsonl) after `kept`; nothing written."""
    chunks = _chunks(config)
    run = _Generation(config, generator, judge, None)
    items: list[dict[str, Any]] = []
    for chunk, previous in zip(chunks, [None, *chunks[:-1]]):
        if len(items) >= records:
            break
        items.extend(run.chunk_items(chunk, previous, limit=records - len(items)))
    by_id = {chunk.id: chunk for chunk in chunks}
    shown = []
    for item in items[:records]:
        reason, line = _written_line(item, by_id[item["chunk"]], config, generator, judge)
        shown.append({"kept": reason is None, **line})
    return chunks, shown


def clients(config: GenerateConfig) -> tuple[ModelClient, ModelClient | None]:
    """The generator's client and the judge's (None when `judge.enabled` is false); a local judge on the
    generator's own model and adapter shares the loaded model. Close both when done."""
    generator = open_client(config.generator, "generator")
    judge = open_client(config.judge.endpoint(config.generator), "judge", generator) if config.judge.enabled else None
    return generator, judge


def _meter(generator: ModelClient, judge: ModelClient | None) -> Callable[[], Usage]:
    """What the clients have used since this call, both together (one client counted once): this run's usage."""
    unique = list({id(client): client for client in (generator, judge) if client is not None}.values())

    def total() -> list[int]:
        return [sum(getattr(client.usage, key) for client in unique) for key in _USAGE_KEYS]

    start = total()
    return lambda: Usage(*(now - before for now, before in zip(total(), start)))


def _chunks(config: GenerateConfig) -> list[Chunk]:
    overlap = 0 if config.mode == "continuation" else config.chunk_overlap  # a continuation must not repeat
    chunks = chunk_documents(read_documents(config.input), config.chunk_chars, overlap)
    if not chunks:
        raise DataError(f"{config.input}: the documents hold no text to generate from.")
    return chunks[:config.max_chunks] if config.max_chunks else chunks


def _refuse_foreign_output(config: GenerateConfig) -> None:
    folder = Path(config.output_dir)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CHECKPOINT_FILE).is_file() and not config.force:
        raise ConfigError(f"output_dir {folder} already holds other files. Choose another output_dir, or set "
                          "force=true to write there anyway.")


def _settings(config: GenerateConfig, generator: ModelClient, judge: ModelClient | None) -> dict[str, Any]:
    """What decides the items: a run resumes only with all of these unchanged. The threshold, output format,
    max_chunks and request budgets are left out: they change what is written, not what is generated."""
    settings = to_dict(config)
    for key in ("output_dir", "force", "output_format", "max_chunks", "dataset_name", "output_file"):
        settings.pop(key)
    settings["judge"].pop("threshold")
    settings["judge"]["api_key"] = None
    for key in ("backend", "adapter"):  # the judge's endpoint below says what counts
        settings["judge"].pop(key)
    settings["generator"] = {**_model_settings(generator), "max_tokens": generator.config.max_tokens}
    settings["judge"]["endpoint"] = None if judge is None else _model_settings(judge)
    settings["documents"] = _digest_files(Path(config.input))
    for key in ("template", "rubric"):
        owner = settings if key == "template" else settings["judge"]
        if owner[key]:
            owner[key] = _digest_files(Path(owner[key]))
    return json.loads(json.dumps(settings))


def _model_settings(client: ModelClient) -> dict[str, Any]:
    config = client.config
    if config.backend == "local":
        return {"backend": "local", "model": config.model, "adapter": str(config.adapter) if config.adapter else None}
    return {"base_url": config.base_url, "model": config.model}


def _model_label(client: ModelClient | None) -> str | None:
    """The model named in each record's provenance."""
    if client is None:
        return None
    return client.config.model if client.config.adapter is None else f"{client.config.model} + {client.config.adapter}"


def _digest_files(path: Path) -> str:
    digest = hashlib.sha256()
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- outputs


def _write_outputs(config: GenerateConfig, chunks: Sequence[Chunk], checkpoint: _Checkpoint, report: GenerateReport,
                   generator: ModelClient, judge: ModelClient | None) -> None:
    by_id = {chunk.id: chunk for chunk in chunks}
    order = {chunk.id: number for number, chunk in enumerate(chunks)}
    items = sorted((line for key, line in checkpoint.entries.items() if key[1] != QUESTIONS and key[0] in order),
                   key=lambda line: (order[line["chunk"]], line["index"]))
    kept, rejects = [], []
    for item in items:
        reason, line = _written_line(item, by_id[item["chunk"]], config, generator, judge)
        report.items += 1
        report.generated += item["messages"] is not None
        report.parse_failures += bool(item.get("error")) + bool(item.get("judge_error"))
        report.retried_replies += (item.get("attempts") == 2) + (item.get("judge_attempts") == 2)
        if item.get("score") is not None:
            bucket = str(int(item["score"]))
            report.scores[bucket] = report.scores.get(bucket, 0) + 1
        if reason is None:
            kept.append(line)
        else:
            report.rejected[reason] = report.rejected.get(reason, 0) + 1
            rejects.append(line)
    report.kept = len(kept)
    report.retried_replies += sum(line.get("attempts") == 2 for key, line in checkpoint.entries.items()
                                  if key[1] == QUESTIONS and key[0] in order)
    report.scores = dict(sorted(report.scores.items(), key=lambda pair: int(pair[0])))
    folder = Path(config.output_dir)
    data_path = folder / config.data_file
    if data_path.suffix.lower() == ".json":
        write_json(data_path, kept)
    else:
        write_text(data_path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in kept))
    write_text(folder / REJECTS_FILE, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in rejects))
    _register(folder, config.dataset_name, data_path.name, config.output_format)
    report.outputs = {"data": str(data_path), "rejects": str(folder / REJECTS_FILE),
                      "registry": str(folder / REGISTRY_FILE), "checkpoint": str(checkpoint.path),
                      "report": str(folder / REPORT_FILE)}
    if report.scores:
        report.outputs["histogram"] = str(plot_scores(report.scores, config.judge.threshold, folder / HISTOGRAM_FILE))


def _written_line(item: dict[str, Any], chunk: Chunk, config: GenerateConfig, generator: ModelClient,
                  judge: ModelClient | None) -> tuple[str | None, dict[str, Any]]:
    """Why the item is rejected (None: kept), and its line: the record in `output_format` with provenance, or
    the rejects file's line."""
    provenance = {"_source": chunk.source, "_span": [chunk.start, chunk.end], "_chunk": chunk.id,
                  **({"_pages": list(chunk.pages)} if chunk.pages else {}),
                  "_generator": _model_label(generator), "_judge": _model_label(judge),
                  "_score": item.get("score"), "_reason": item.get("reason")}
    reason = _rejection(item, config.judge.threshold, judge is not None)
    if reason is None:
        return None, {**_as_record(item, config.output_format), **provenance}
    return reason, {"reason": reason, **provenance, **{key: item.get(key) for key in (
        "messages", "stage", "error", "raw", "judge_error", "judge_raw")}}


def _rejection(item: dict[str, Any], threshold: float, judged: bool) -> str | None:
    if item["messages"] is None:
        return "unusable generation reply"
    if not judged:
        return None
    if item.get("judge_error"):
        return "unusable judge reply"
    return f"score below {threshold:g}" if item["score"] < threshold else None


def _as_record(item: dict[str, Any], output_format: str) -> dict[str, Any]:
    conversation = Conversation(origin=f"{item['chunk']} item {item['index']}", messages=tuple(item["messages"]))
    return to_record(conversation, output_format)


_REGISTRY_ENTRIES = {
    "alpaca": {"formatting": "alpaca", "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                   "history": "history"}},
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}},
    "openai": {"formatting": "sharegpt", "columns": {"messages": "messages"},
               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                        "assistant_tag": "assistant", "system_tag": "system"}},
}


def _register(folder: Path, name: str, file_name: str, output_format: str) -> None:
    """Add (or replace) the dataset's entry in the folder's dataset_info.json, keeping other entries."""
    path = folder / REGISTRY_FILE
    registry = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    registry[name] = {"file_name": file_name, **_REGISTRY_ENTRIES[output_format]}
    write_json(path, registry)


def plot_scores(scores: dict[str, int], threshold: float, path: Path) -> Path:
    """A bar chart of judge scores (1-10) with the threshold marked, written to `path` as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)  # Figure without pyplot: no global state, no display backend needed.
    axes = figure.add_subplot()
    values = range(1, 11)
    axes.bar(values, [scores.get(str(value), 0) for value in values],
             color=["tab:green" if value >= threshold else "tab:red" for value in values])
    axes.axvline(threshold - 0.5, color="black", linestyle="--", label=f"threshold {threshold:g}")
    axes.set_xticks(list(values))
    axes.set_xlabel("judge score")
    axes.set_ylabel("records")
    axes.set_title(f"{sum(scores.values())} records judged")
    axes.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def format_report(report: GenerateReport) -> str:
    """The report as a few lines of text."""
    rejected = ", ".join(f"{reason}: {count}" for reason, count in report.rejected.items()) or "none"
    scores = " ".join(f"{score}:{count}" for score, count in report.scores.items()) or "-"
    lines = [f"chunks {report.chunks}, items {report.items} ({report.resumed} from the checkpoint), generated "
             f"{report.generated}, kept {report.kept}",
             f"rejected: {rejected}",
             f"parse failures {report.parse_failures}, replies asked twice {report.retried_replies}",
             f"scores {scores}",
             f"this run: {report.run_requests} requests, {report.run_prompt_tokens} prompt + "
             f"{report.run_completion_tokens} completion tokens, {report.seconds:.1f} s",
             f"all runs: {report.requests} requests, {report.prompt_tokens} prompt + {report.completion_tokens} "
             "completion tokens"]
    if not report.complete:
        lines.append(f"stopped early: {report.stopped}")
    lines += [f"{name}: {path}" for name, path in report.outputs.items()]
    return "\n".join(lines)
