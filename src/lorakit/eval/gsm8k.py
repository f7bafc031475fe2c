"""GSM8K grade-school maths: `evaluate_gsm8k()` generates a chain of thought and checks the final number.

The prompt is raw text, few-shot "Question: ...\\nAnswer: ... The answer is N.\\n\\n": by default the eight fixed
exemplars of Wei et al. (2022), else the first k training problems with their worked answers. Decoding is greedy;
the prediction is the number after the last "The answer is" (else the last number), compared exactly with the
number after "####" in the reference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.config import GenerationConfig
from lorakit.data.tokenize import bos_prefix
from lorakit.errors import ConfigError, DataError
from lorakit.infer.generate import generate_replies
from lorakit.progress import ProgressTarget, tracked

# Wei et al. 2022, "Chain-of-thought prompting elicits reasoning in large language models", Table 20.
WEI_EXEMPLARS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
     "had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
)

# A chain of thought is one paragraph, so a blank line ends it as surely as the next "Question:" does, sooner.
STOP_STRINGS = ("\n\n", "Question:")

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclass(frozen=True)
class GsmProblem:
    """One problem: `answer_text` is the worked solution ending '#### N', `final` the normalised N."""

    question: str
    answer_text: str
    final: str
    source: str  # "file:line"


@dataclass
class GsmResult:
    """Exact-match accuracy of the final number, with one record per problem."""

    accuracy: float
    correct: int
    total: int
    shots: int
    records: list[dict]  # question, reference, generated, extracted, correct, source, shots


def load_gsm8k(path: Path, limit: int | None = None) -> list[GsmProblem]:
    """Read a GSM8K JSONL file ({"question", "answer"} per line); `limit` keeps the first N problems."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GSM8K file {path} does not exist; it is a JSONL file like GSM8K's test.jsonl.")
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit must be a positive number of problems, got {limit}.")
    problems = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if limit is not None and len(problems) >= limit:
                break
            problems.append(_problem(path, number, line))
    if not problems:
        raise DataError(f"{path} holds no problems.")
    return problems


def _problem(path: Path, number: int, line: str) -> GsmProblem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
    if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("question", "answer")):
        found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{path}, line {number}: each record needs string fields 'question' and 'answer'; "
                        f"this one has {found}.")
    if "####" not in record["answer"]:
        raise DataError(f"{path}, line {number}: the answer has no '#### N' final line; GSM8K answers end with one.")
    final = _normalise(record["answer"].rsplit("####", 1)[1].strip())
    return GsmProblem(question=record["question"].strip(), answer_text=record["answer"].strip(), final=final,
                      source=f"{path}:{number}")


def extract_final_number(text: str) -> str | None:
    """The number after the last 'The answer is', else the last number in `text`; commas, $ and '.0' dropped."""
    text = text.replace("$", "")
    answers = list(_ANSWER_IS.finditer(text))
    if answers:
        after = _NUMBER.search(text, answers[-1].end())
        if after is not None:
            return _normalise(after.group())
    numbers = _NUMBER.findall(text)
    return _normalise(numbers[-1]) if numbers else None


def _normalise(number: str) -> str:
    number = number.replace(",", "").replace("$", "").strip().rstrip(".")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return "0" if number == "-0" else number


def exemplars_from(train_problems: Sequence[GsmProblem], shots: int) -> list[tuple[str, str]]:
    """The first `shots` training problems as (question, answer): calculator notes stripped, '#### N' reworded."""
    pairs = []
    for problem in train_problems[:shots]:
        worked = _CALCULATOR.sub("", problem.answer_text.rsplit("####", 1)[0]).strip()
        pairs.append((problem.question, f"{worked}\nThe answer is {problem.final}."))
    return pairs


def format_prompt(question: str, exemplars: Sequence[tuple[str, str]]) -> str:
    """'Question: ...\\nAnswer: ...\\n\\n' per exemplar, then the question and 'Answer:'."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in exemplars)
    return f"{shots}Question: {question}\nAnswer:"


@torch.inference_mode()
def evaluate_gsm8k(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: Sequence[GsmProblem],
                   shots: int = 8, train_problems: Sequence[GsmProblem] | None = None, max_new_tokens: int = 256,
                   batch_size: int = 8, progress: ProgressTarget = True, stop: Sequence[str] = STOP_STRINGS,
                   max_length: int | None = None) -> GsmResult:
    """Generate greedily for every problem and score the extracted final number against the reference.

    Without `train_problems` the exemplars are Wei et al.'s eight (so `shots` is at most 8); with them, the first
    `shots` training problems. Prompts that do not fit `max_length` (default: the model's max positions) minus
    `max_new_tokens` lose exemplars from the left, then tokens from the left.
    """
    if not problems:
        raise ConfigError("evaluate_gsm8k got no problems to score.")
    exemplars = _exemplars(shots, train_problems)
    if max_length is None:
        max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    model.eval()
    prefix = bos_prefix(tokenizer)
    prompts = [_fit(tokenizer, prefix, problem.question, exemplars, max_length - max_new_tokens)
               for problem in problems]
    generated = _generate(model, tokenizer, [ids for ids, _ in prompts], max_new_tokens, batch_size, stop, progress)
    records = []
    for problem, (_, used), text in zip(problems, prompts, generated):
        extracted = extract_final_number(text)
        records.append({"question": problem.question, "reference": problem.final, "generated": text,
                        "extracted": extracted, "correct": extracted == problem.final, "source": problem.source,
                        "shots": used})
    correct = sum(record["correct"] for record in records)
    return GsmResult(accuracy=correct / len(records), correct=correct, total=len(records), shots=shots,
                     records=records)


def _exemplars(shots: int, train_problems: Sequence[GsmProblem] | None) -> list[tuple[str, str]]:
    if shots < 0:
        raise ConfigError(f"shots must be 0 or more, got {shots}.")
    if train_problems is None:
        if shots > len(WEI_EXEMPLARS):
            raise ConfigError(f"shots={shots} but the fixed chain-of-thought exemplars number "
                              f"{len(WEI_EXEMPLARS)}; pass train_problems for more.")
        return list(WEI_EXEMPLARS[:shots])
    if shots > len(train_problems):
        raise ConfigError(f"shots={shots} but only {len(train_problems)} training problems were given.")
    return exemplars_from(train_problems, shots)


def _fit(tokenizer: PreTrainedTokenizerBase, prefix: list[int], question: str,
         exemplars: Sequence[tuple[str, str]], room: int) -> tuple[list[int], int]:
    """Prompt token ids within `room` tokens, and how many exemplars survived."""
    exemplars = list(exemplars)
    while True:
        ids = prefix + tokenizer(format_prompt(question, exemplars), add_special_tokens=False)["input_ids"]
        if len(ids) <= room or not exemplars:
            break
        exemplars = exemplars[1:]
    if len(ids) > room:
        ids = ids[len(ids) - max(room, 1):]
    return ids, len(exemplars)


def _generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
              max_new_tokens: int, batch_size: int, stop: Sequence[str], progress: ProgressTarget) -> list[str]:
    eos = {tokenizer.eos_token_id} - {None}
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(model_eos if isinstance(model_eos, list) else [model_eos]) - {None}
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)  # greedy
    # Longest first: similar lengths share a batch, so less padding.
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    return generate_replies(model, tokenizer, prompts, config, tuple(stop), sorted(eos), after_text=True,
                            batches=tracked(batches, "gsm8k", progress))
