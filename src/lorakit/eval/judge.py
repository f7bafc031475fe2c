"""LLM-as-judge: `judge_comparison()` scores answers on a rubric and pits the tuned model against the base.

Two judges: `OpenAIJudge` (any OpenAI-compatible endpoint: OpenAI, vLLM, llama.cpp, `lorakit serve`) and
`LocalJudge` (a lorakit model, through `lorakit.infer.generate`). Rubric scoring asks for a JSON verdict with one
score per criterion. The pairwise judgement asks twice with the answers' positions swapped: a win counts only when
both orders agree, so a judge that always prefers the first answer yields ties, not wins. Verdicts that cannot be
parsed are recorded as failures with the judge's raw text, never a crash.

The prompts are in English and tell the judge that questions and answers may be in another language, such as
Chinese; a capable judge model handles that well.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lorakit.config import EndpointConfig, ModelConfig
from lorakit.errors import ConfigError, DataError
from lorakit.files import write_json, write_text
from lorakit.llm_client import ChatClient, Completion, parse_json_reply

SCORES_FILE, PAIRWISE_FILE, SUMMARY_FILE = "judge_scores.jsonl", "judge_pairwise.jsonl", "judge_summary.json"


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str


@dataclass(frozen=True)
class Rubric:
    """What the judge scores, each criterion an integer from `low` to `high`."""

    criteria: tuple[Criterion, ...]
    low: int = 1
    high: int = 10

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(criterion.name for criterion in self.criteria)


DEFAULT_RUBRIC = Rubric(criteria=(
    Criterion("correctness", "Are the facts, reasoning, calculations and code right? Penalise every error."),
    Criterion("relevance", "Does it answer the question that was asked, in the question's language, "
                           "without drifting off topic?"),
    Criterion("completeness", "Does it cover every part of the question and the details a user needs?"),
    Criterion("depth", "Does it explain why, with insight and useful specifics, rather than stay superficial?"),
    Criterion("usefulness", "Would it actually help the person who asked: clear, well organised, actionable?"),
))

_RUBRIC_PROMPT = """You are an impartial judge of answers written by an AI assistant. Rate the answer below on each \
criterion with an integer from {low} (very poor) to {high} (excellent).
The question and the answer may be in any language, for example Chinese: judge the content in its own language, \
and expect the answer to use the question's language. Do not reward length for its own sake.

Criteria:
{criteria}

[Question]
{question}
[End of question]
{reference}
[Answer]
{answer}
[End of answer]

Reply with a single JSON object and nothing else: one integer score per criterion, then a short explanation in \
English, for example:
{example}"""

_REFERENCE_BLOCK = "\n[Reference answer, for comparison]\n{reference}\n[End of reference answer]\n"

_PAIRWISE_PROMPT = """You are an impartial judge. Compare two answers written by AI assistants to the same question \
and decide which one is better overall: more correct, relevant, complete and useful.
The question and the answers may be in any language, for example Chinese: judge them in their own language. The \
order in which the answers appear must not influence you, nor their length alone. If they are equally good, or \
equally bad, say "tie".

[Question]
{question}
[End of question]

[Answer A]
{answer_a}
[End of answer A]

[Answer B]
{answer_b}
[End of answer B]

Reply with a single JSON object and nothing else:
{{"winner": "A" or "B" or "tie", "explanation": "one or two sentences in English"}}"""


# ---------------------------------------------------------------- rubric files

_RUBRIC_KEYS = ("criteria", "scale")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def load_rubric(path: Path) -> Rubric:
    """A rubric from YAML or JSON: `criteria` (a name -> description mapping, or a list of {name, description})
    and an optional `scale: [low, high]` (default [1, 10]).

    Raises ConfigError naming the file and every problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Rubric file {path} does not exist. Write a YAML or JSON file with `criteria` "
                          "(name: description) and an optional `scale: [1, 10]`.")
    raw = _read_rubric_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a rubric is a mapping with `criteria` and an optional `scale`, "
                          f"not a {type(raw).__name__}.")
    problems = []
    for key in raw.keys() - set(_RUBRIC_KEYS):
        close = difflib.get_close_matches(str(key), _RUBRIC_KEYS, n=1)
        problems.append(f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else
                                                   f" (known keys: {', '.join(_RUBRIC_KEYS)})"))
    criteria = _rubric_criteria(raw.get("criteria"), problems)
    low, high = _rubric_scale(raw.get("scale", [1, 10]), problems)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems) + ".")
    return Rubric(criteria=tuple(criteria), low=low, high=high)


def _read_rubric_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}).") from None
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{path}: a rubric file is .yaml, .yml or .json, not '{path.suffix}'.")
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)}).") from None


def _rubric_criteria(raw: Any, problems: list[str]) -> list[Criterion]:
    if isinstance(raw, dict):
        items = [(name, description) for name, description in raw.items()]
    elif isinstance(raw, list):
        items = []
        for number, entry in enumerate(raw, start=1):
            if not isinstance(entry, dict) or "name" not in entry:
                problems.append(f"criteria entry {number} needs `name` and `description`")
                continue
            items.append((entry["name"], entry.get("description")))
    else:
        problems.append("`criteria` is missing or empty: give name: description pairs, e.g. "
                        "`correctness: Are the facts right?`")
        return []
    if not items:
        problems.append("`criteria` is empty: give at least one name: description pair")
    criteria, seen = [], set()
    for name, description in items:
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"criterion name {name!r} must start with a letter and hold only letters, digits and "
                            "underscores (it becomes a JSON key)")
        elif name.lower() == "explanation":
            problems.append("'explanation' is reserved for the judge's reasoning; rename that criterion")
        elif name.lower() in seen:
            problems.append(f"criterion '{name}' is listed twice")
        elif not isinstance(description, str) or not description.strip():
            problems.append(f"criterion '{name}' needs a non-empty description telling the judge what to look for")
        else:
            seen.add(name.lower())
            criteria.append(Criterion(name, description.strip()))
    return criteria


def _rubric_scale(raw: Any, problems: list[str]) -> tuple[int, int]:
    valid = (isinstance(raw, (list, tuple)) and len(raw) == 2
             and all(isinstance(value, int) and not isinstance(value, bool) for value in raw))
    if not valid or raw[0] >= raw[1] or raw[0] < 0:
        problems.append(f"`scale` must be two integers [low, high] with 0 <= low < high, e.g. [1, 10]; got {raw!r}")
        return 1, 10
    return int(raw[0]), int(raw[1])


# ---------------------------------------------------------------- judges

class Judge(Protocol):
    name: str

    def complete(self, conversations: Sequence[list[dict]]) -> list[Completion]:
        """One reply per conversation, in order."""


class OpenAIJudge(ChatClient):
    """A judge behind an OpenAI-compatible endpoint: lorakit's one chat client, asked greedily."""

    def __init__(self, config: EndpointConfig, http_client: Any = None):
        super().__init__(config, http_client, role="judge")


class LocalJudge:
    """A lorakit model as judge: greedy `generate` in batches. Small models often fail to follow the JSON format;
    those verdicts are recorded as failures."""

    def __init__(self, model, tokenizer, template, generation=None, name: str | None = None):
        from lorakit.infer import GenerationConfig

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.generation = generation or GenerationConfig(max_new_tokens=256)
        self.name = name or f"local {getattr(model.config, '_name_or_path', '') or type(model).__name__}"

    def complete(self, conversations: Sequence[list[dict]]) -> list[Completion]:
        from lorakit.infer import generate

        return [Completion(text) for text in generate(self.model, self.tokenizer, self.template,
                                                      list(conversations), self.generation)]


def local_judge(model_config, template_name: str | None = None, generation=None) -> LocalJudge:
    """A LocalJudge on the model of `model_config` (a bundled name, folder or hub id), loaded for inference."""
    from lorakit.infer import load_for_inference

    model, tokenizer, template = load_for_inference(model_config, None, template_name)
    return LocalJudge(model, tokenizer, template, generation, name=f"local {model_config.name}")


def choose_judge(endpoint: EndpointConfig | None = None, local: ModelConfig | None = None) -> Judge:
    """The judge to ask: an OpenAI-compatible `endpoint`, or a `local` model loaded here; exactly one of them."""
    if (endpoint is None) == (local is None):
        raise ConfigError("Choose one judge: an OpenAI-compatible endpoint (base_url and model), or a local model "
                          "run here.")
    return OpenAIJudge(endpoint) if endpoint is not None else local_judge(local)


# ---------------------------------------------------------------- prompts and verdicts

def rubric_prompt(rubric: Rubric, question: str, answer: str, reference: str | None = None) -> str:
    criteria = "\n".join(f"- {criterion.name}: {criterion.description}" for criterion in rubric.criteria)
    example = json.dumps({**{name: (rubric.low + rubric.high) // 2 for name in rubric.names},
                          "explanation": "..."})
    return _RUBRIC_PROMPT.format(low=rubric.low, high=rubric.high, criteria=criteria, question=question,
                                 answer=answer, example=example,
                                 reference=_REFERENCE_BLOCK.format(reference=reference) if reference else "")


def pairwise_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return _PAIRWISE_PROMPT.format(question=question, answer_a=answer_a, answer_b=answer_b)


def first_json_object(text: str) -> dict | None:
    """The first JSON object in `text`, wherever it sits (after prose or reasoning, inside a ```json fence), or
    None."""
    return parse_json_reply(text, dict)


@dataclass(frozen=True)
class ScoreVerdict:
    """Parsed rubric verdict: `scores` is None when the reply could not be used, and `error` says why."""

    scores: dict[str, float] | None
    explanation: str
    error: str | None
    notes: tuple[str, ...] = ()


def parse_scores(text: str, rubric: Rubric) -> ScoreVerdict:
    """Scores from a judge reply; out-of-range scores are clamped (noted), missing or non-numeric ones fail it."""
    verdict = first_json_object(text)
    if verdict is None:
        return ScoreVerdict(None, "", "no JSON object in the judge's reply")
    if not any(name.lower() in {str(key).lower() for key in verdict} for name in rubric.names) \
            and isinstance(verdict.get("scores"), dict):
        verdict = {**verdict["scores"], "explanation": verdict.get("explanation", "")}
    lowered = {str(key).lower(): value for key, value in verdict.items()}
    explanation = str(lowered.get("explanation", "") or "")
    scores, notes, problems = {}, [], []
    for name in rubric.names:
        value = _number(lowered.get(name.lower()))
        if value is None:
            found = lowered.get(name.lower())
            problems.append(f"no score for '{name}'" if found is None else f"'{name}' is not a number: {found!r}")
            continue
        clamped = min(max(value, rubric.low), rubric.high)
        if clamped != value:
            notes.append(f"{name}: {value:g} clamped to {clamped:g}")
        scores[name] = clamped
    if problems:
        return ScoreVerdict(None, explanation, "; ".join(problems), tuple(notes))
    return ScoreVerdict(scores, explanation, None, tuple(notes))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.match(r"\s*(-?\d+(?:\.\d+)?)", value)  # "8", "8/10", "8 points"
        return float(match[1]) if match else None
    return None


_WINNERS = {"a": "A", "answer a": "A", "assistant a": "A", "[[a]]": "A", "b": "B", "answer b": "B",
            "assistant b": "B", "[[b]]": "B", "tie": "tie", "[[c]]": "tie", "equal": "tie", "draw": "tie",
            "both": "tie", "neither": "tie", "none": "tie"}


def parse_winner(text: str) -> tuple[str | None, str, str | None]:
    """(position "A"/"B"/"tie" or None, explanation, error) from a pairwise reply."""
    verdict = first_json_object(text)
    if verdict is None:
        return None, "", "no JSON object in the judge's reply"
    lowered = {str(key).lower(): value for key, value in verdict.items()}
    explanation = str(lowered.get("explanation", "") or "")
    raw = next((lowered[key] for key in ("winner", "better", "verdict", "choice") if key in lowered), None)
    if raw is None:
        return None, explanation, "no 'winner' in the verdict"
    position = _WINNERS.get(str(raw).strip().lower())
    if position is None:
        return None, explanation, f"'winner' must be A, B or tie, got {raw!r}"
    return position, explanation, None


# ---------------------------------------------------------------- judging

def score_answers(judge: Judge, questions: Sequence[str], answers: Mapping[str, Sequence[str]],
                  rubric: Rubric = DEFAULT_RUBRIC, references: Sequence[str | None] | None = None) -> list[dict]:
    """Rubric scores for each model's answer to each question: one record per (model, question), with the prompt,
    the judge's raw reply, the parsed scores (None when failed) and the error."""
    jobs = []
    for model_name, model_answers in answers.items():
        for index, (question, answer) in enumerate(zip(questions, model_answers, strict=True)):
            reference = references[index] if references else None
            jobs.append((index, model_name, question, answer, rubric_prompt(rubric, question, answer, reference)))
    replies = judge.complete([[{"role": "user", "content": job[4]}] for job in jobs])
    records = []
    for (index, model_name, question, answer, prompt), reply in zip(jobs, replies, strict=True):
        verdict = parse_scores(reply.text, rubric) if reply.error is None else ScoreVerdict(None, "", reply.error)
        records.append({"index": index, "model": model_name, "question": question, "answer": answer,
                        "prompt": prompt, "raw": reply.text, "scores": verdict.scores,
                        "explanation": verdict.explanation, "failed": verdict.scores is None,
                        "error": verdict.error, "notes": list(verdict.notes)})
    return records


def judge_pairwise(judge: Judge, questions: Sequence[str], candidate: tuple[str, Sequence[str]],
                   baseline: tuple[str, Sequence[str]]) -> list[dict]:
    """Candidate vs baseline per question, asked in both orders; outcome "win", "loss", "tie" or "failed".

    A win or loss needs both orders to agree; a split verdict (each order prefers its first answer, say) is a tie
    with `consistent: false`, as it shows position bias or a close call rather than a preference.
    """
    (candidate_name, candidate_answers), (baseline_name, baseline_answers) = candidate, baseline
    if candidate_name == baseline_name:
        raise ConfigError(f"Pairwise judging needs two different models, got '{candidate_name}' twice.")
    orders, conversations = [], []
    for question, mine, theirs in zip(questions, candidate_answers, baseline_answers, strict=True):
        for a_name, a_text, b_name, b_text in ((candidate_name, mine, baseline_name, theirs),
                                               (baseline_name, theirs, candidate_name, mine)):
            prompt = pairwise_prompt(question, a_text, b_text)
            orders.append({"a": a_name, "b": b_name, "prompt": prompt})
            conversations.append([{"role": "user", "content": prompt}])
    replies = judge.complete(conversations)
    for order, reply in zip(orders, replies, strict=True):
        position, explanation, error = (parse_winner(reply.text) if reply.error is None
                                        else (None, "", reply.error))
        preferred = None if position is None else "tie" if position == "tie" else order[position.lower()]
        order.update(raw=reply.text, winner_position=position, preferred=preferred, explanation=explanation,
                     error=error)
    records = []
    for index, question in enumerate(questions):
        first, second = orders[2 * index], orders[2 * index + 1]
        records.append({"index": index, "question": question, "candidate": candidate_name, "baseline": baseline_name,
                        **_outcome(first["preferred"], second["preferred"], candidate_name, baseline_name),
                        "orders": [first, second]})
    return records


def _outcome(first: str | None, second: str | None, candidate: str, baseline: str) -> dict[str, Any]:
    if first is None or second is None:
        return {"outcome": "failed", "consistent": None, "note": "at least one of the two verdicts failed"}
    if first != second:
        return {"outcome": "tie", "consistent": False,
                "note": f"the orders disagree ({candidate} first: {first}; {baseline} first: {second}), "
                        "counted as a tie: position bias or a close call"}
    outcome = {candidate: "win", baseline: "loss", "tie": "tie"}[first]
    return {"outcome": outcome, "consistent": True, "note": "both orders agree"}


def summarize(scores: Sequence[dict], pairwise: Sequence[dict], rubric: Rubric, judge_name: str) -> dict[str, Any]:
    """Mean score per criterion per model (failed verdicts left out, counted) and win/tie/loss rates."""
    by_model: dict[str, list[dict]] = {}
    for record in scores:
        by_model.setdefault(record["model"], []).append(record)
    score_summary = {}
    for model_name, records in by_model.items():
        judged = [record["scores"] for record in records if not record["failed"]]
        means = {name: (sum(score[name] for score in judged) / len(judged) if judged else None)
                 for name in rubric.names}
        overall = (sum(means.values()) / len(means)) if judged else None
        score_summary[model_name] = {"judged": len(judged), "failed": len(records) - len(judged),
                                     "mean": {**means, "overall": overall}}
    summary: dict[str, Any] = {"judge": judge_name, "rubric": {"scale": [rubric.low, rubric.high],
                                                               "criteria": list(rubric.names)},
                               "scores": score_summary, "pairwise": None}
    if pairwise:
        counts = {outcome: sum(record["outcome"] == outcome for record in pairwise)
                  for outcome in ("win", "tie", "loss", "failed")}
        compared = counts["win"] + counts["tie"] + counts["loss"]
        summary["pairwise"] = {
            "candidate": pairwise[0]["candidate"], "baseline": pairwise[0]["baseline"], "compared": compared,
            "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"], "failed": counts["failed"],
            "inconsistent": sum(record["consistent"] is False for record in pairwise),
            **{f"{name}_rate": (counts[name] / compared if compared else None) for name in ("win", "tie", "loss")},
        }
    return summary


def judge_comparison(judge: Judge, rows: Sequence[Mapping[str, Any]], output_dir: Path,
                     rubric: Rubric = DEFAULT_RUBRIC, pair: tuple[str, str] | None = ("tuned", "base"),
                     score: bool = True) -> dict[str, Any]:
    """Judge the rows of an A/B comparison (`lorakit.eval.compare`): rubric scores for every model and, with
    `pair` = (candidate, baseline), the pairwise judgement. Writes judge_scores.jsonl, judge_pairwise.jsonl
    (prompts, raw replies, parsed verdicts) and judge_summary.json under `output_dir`; returns the summary.

    Raises ConfigError when a model of `pair` has no answers in `rows`.
    """
    questions = [row["question"] for row in rows]
    names = list(dict.fromkeys(name for row in rows for name in row["answers"]))
    for row in rows:
        missing = [name for name in names if name not in row["answers"]]
        if missing:
            raise DataError(f"Question {row.get('index', '?')} ({row['question'][:60]!r}) has no answer from "
                            f"{', '.join(missing)}; judge only complete comparisons (rerun `lorakit compare`).")
    answers = {name: [row["answers"][name] for row in rows] for name in names}
    if pair is not None:
        for name in pair:
            if name not in answers:
                raise ConfigError(f"No answers from model '{name}' to compare; the answers come from "
                                  f"{', '.join(names) or 'no model'}. Pick two of those.")
    scores = score_answers(judge, questions, answers, rubric) if score else []
    pairwise = (judge_pairwise(judge, questions, (pair[0], answers[pair[0]]), (pair[1], answers[pair[1]]))
                if pair is not None else [])
    summary = summarize(scores, pairwise, rubric, judge.name)
    write_judgement(output_dir, scores, pairwise, summary)
    return summary


def write_judgement(output_dir: Path, scores: Sequence[dict], pairwise: Sequence[dict],
                    summary: Mapping[str, Any]) -> dict[str, Path]:
    """Write the score and pairwise records (JSONL) and the summary (JSON) atomically; returns their paths."""
    output_dir = Path(output_dir)
    paths = {"scores": output_dir / SCORES_FILE, "pairwise": output_dir / PAIRWISE_FILE,
             "summary": output_dir / SUMMARY_FILE}
    write_text(paths["scores"], "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in scores))
    write_text(paths["pairwise"], "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in pairwise))
    write_json(paths["summary"], summary)
    return paths


def format_judge_summary(summary: Mapping[str, Any]):
    """A rich renderable: mean scores per criterion per model, then the pairwise win/tie/loss line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(f"judge: {summary['judge']}  scale {summary['rubric']['scale'][0]}-"
                        f"{summary['rubric']['scale'][1]}")]
    if summary["scores"]:
        table = Table(title="Mean rubric scores")
        table.add_column("criterion")
        models = list(summary["scores"])
        for model_name in models:
            table.add_column(model_name, justify="right")
        for criterion in [*summary["rubric"]["criteria"], "overall"]:
            table.add_row(criterion, *(_fmt(summary["scores"][name]["mean"][criterion]) for name in models))
        table.add_row("judged / failed", *(f"{summary['scores'][name]['judged']} / {summary['scores'][name]['failed']}"
                                           for name in models))
        parts.append(table)
    pairwise = summary.get("pairwise")
    if pairwise:
        parts.append(Text(f"{pairwise['candidate']} vs {pairwise['baseline']} ({pairwise['compared']} compared, both "
                     f"orders): win {_pct(pairwise['win_rate'])}, tie {_pct(pairwise['tie_rate'])}, loss "
                     f"{_pct(pairwise['loss_rate'])}; {pairwise['inconsistent']} split verdicts counted as ties, "
                     f"{pairwise['failed']} failed"))
    return Group(*parts)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
