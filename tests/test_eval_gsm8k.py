"""GSM8K: loading, final-number extraction, prompts, and a greedy end-to-end run on a tiny model."""

from __future__ import annotations

import pytest

from conftest import FIXTURES, make_model, make_tokenizer, shared_data
from lorakit.errors import ConfigError, DataError
from lorakit.eval.gsm8k import (WEI_EXEMPLARS, GsmProblem, GsmResult, evaluate_gsm8k, exemplars_from,
                                extract_final_number, format_prompt, load_gsm8k)

EVAL = FIXTURES / "eval"


@pytest.mark.parametrize(("text", "expected"), [
    ("She has 9 - 3 = 6 eggs. The answer is 6.", "6"),
    ("The answer is $1,234.", "1234"),
    ("It costs $18.00 in total. The answer is 18.00", "18"),
    ("5 boxes of 12 make 60 pens. The answer is: 60 pens, not 12.", "60"),
    ("The answer is 3. Wait, the answer is 4.", "4"),
    ("First 2, then 3.5 kg.", "3.5"),
    ("Temperatures fell to -7 degrees", "-7"),
    ("He ran 1,000,000 steps.", "1000000"),
    ("Count 1,2,3 then stop", "3"),
    ("The answer is unclear, but 12 and 15 appear", "12"),
    ("no digits here", None),
    ("", None),
    ("The answer is 7.5.", "7.5"),
    ("The answer is 10.0.", "10"),
])
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_load_gsm8k_reads_final_answers():
    problems = load_gsm8k(EVAL / "gsm8k_test.jsonl")

    assert [p.final for p in problems] == ["2", "1000", "5"]  # "#### 1,000" loses its comma
    assert problems[0] == GsmProblem("Ann has 1 cat and gets 1 more. How many cats?", "1 + 1 = <<1+1=2>>2\n#### 2",
                                     "2", f"{EVAL / 'gsm8k_test.jsonl'}:1")
    assert len(load_gsm8k(EVAL / "gsm8k_test.jsonl", limit=2)) == 2


def test_load_gsm8k_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1\\n#### 1"}\n{"question": "q"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: each record needs string fields 'question' and "
                                        r"'answer'; this one has question"):
        load_gsm8k(bad)
    bad.write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(DataError, match=r"line 1: the answer has no '#### N' final line"):
        load_gsm8k(bad)
    bad.write_text('{"question": "q",\n')
    with pytest.raises(DataError, match=r"line 1: not valid JSON"):
        load_gsm8k(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_gsm8k(tmp_path / "missing.jsonl")


def test_prompts_from_fixed_exemplars_and_from_training_problems():
    train = load_gsm8k(EVAL / "gsm8k_train.jsonl")
    assert exemplars_from(train, 1) == [("Tom has 2 apples and buys 3 more. How many apples?",
                                         "Tom has 2 + 3 = 5 apples.\nThe answer is 5.")]
    assert format_prompt("Q?", exemplars_from(train, 1)) == (
        "Question: Tom has 2 apples and buys 3 more. How many apples?\n"
        "Answer: Tom has 2 + 3 = 5 apples.\nThe answer is 5.\n\nQuestion: Q?\nAnswer:")
    assert len(WEI_EXEMPLARS) == 8
    assert all(extract_final_number(answer) == answer.rsplit(" ", 1)[1].rstrip(".") for _, answer in WEI_EXEMPLARS)


def test_evaluate_gsm8k_end_to_end_on_a_tiny_model():
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    problems = load_gsm8k(EVAL / "gsm8k_test.jsonl")
    train = load_gsm8k(EVAL / "gsm8k_train.jsonl")

    result = evaluate_gsm8k(model, tokenizer, problems, shots=1, train_problems=train, max_new_tokens=12,
                            batch_size=2, progress=False)

    assert isinstance(result, GsmResult)
    assert (result.total, result.shots) == (3, 1)
    assert result.correct == sum(r["correct"] for r in result.records)
    assert result.accuracy == result.correct / 3
    for record, problem in zip(result.records, problems):
        assert set(record) >= {"question", "reference", "generated", "extracted", "correct"}
        assert (record["question"], record["reference"]) == (problem.question, problem.final)
        assert record["extracted"] == extract_final_number(record["generated"])
        assert record["correct"] == (record["extracted"] == problem.final)
        assert record["shots"] == 1
        assert "\n\n" not in record["generated"] and "Question:" not in record["generated"]


def test_batching_does_not_change_greedy_answers():
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    problems = load_gsm8k(EVAL / "gsm8k_test.jsonl")

    one = evaluate_gsm8k(model, tokenizer, problems, shots=0, max_new_tokens=8, batch_size=1, progress=False)
    three = evaluate_gsm8k(model, tokenizer, problems, shots=0, max_new_tokens=8, batch_size=3, progress=False)

    assert [r["generated"] for r in one.records] == [r["generated"] for r in three.records]


def test_overlong_prompts_drop_exemplars():
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))  # 256 positions; the 8 exemplars are ~3,000 characters
    problems = load_gsm8k(EVAL / "gsm8k_test.jsonl", limit=1)

    result = evaluate_gsm8k(model, tokenizer, problems, shots=8, max_new_tokens=4, progress=False)

    assert result.shots == 8 and result.records[0]["shots"] < 8


def test_bad_shot_counts():
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    problems = load_gsm8k(EVAL / "gsm8k_test.jsonl", limit=1)
    with pytest.raises(ConfigError, match="shots=9 but the fixed chain-of-thought exemplars number 8"):
        evaluate_gsm8k(model, tokenizer, problems, shots=9, progress=False)
    with pytest.raises(ConfigError, match="shots=3 but only 2 training problems"):
        evaluate_gsm8k(model, tokenizer, problems, shots=3, train_problems=load_gsm8k(EVAL / "gsm8k_train.jsonl"),
                       progress=False)


def test_real_gsm8k_files_load():
    test = load_gsm8k(shared_data("gsm8k", "test.jsonl"))
    train = load_gsm8k(shared_data("gsm8k", "train_first1000.jsonl"))
    assert (len(test), len(train)) == (1319, 1000)
    assert test[0].final == "18"
    assert all(p.final.lstrip("-").replace(".", "").isdigit() for p in test + train)
