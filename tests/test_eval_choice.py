"""Multiple-choice benchmarks: loaders for the three layouts, their errors, and scoring checked against plain torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, make_model, make_tokenizer, shared_data
from lorakit.errors import ConfigError, DataError
from lorakit.eval.benchmarks import (CEVAL_CATEGORIES, CMMLU_CATEGORIES, LETTERS, MMLU_CATEGORIES, Question,
                                     load_choice_benchmark)
from lorakit.eval.choice import evaluate_choice, format_prompt

EVAL = FIXTURES / "eval"


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny llama with large random weights: its answers vary and options differ by far more than float noise."""
    model = make_model("llama", len(tokenizer)).float().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 1.0, generator=generator)
    return model


# ---------------------------------------------------------------------------------------------------- loaders


def test_loads_mmlu_layout():
    bench = load_choice_benchmark(EVAL / "mmlu")

    assert (bench.layout, bench.split, bench.name) == ("mmlu", "test", "mmlu")
    assert {name: len(qs) for name, qs in bench.test.items()} == {"elementary_mathematics": 4, "global_facts": 3}
    assert {name: len(qs) for name, qs in bench.dev.items()} == {"elementary_mathematics": 3, "global_facts": 2}
    assert bench.categories == {"elementary_mathematics": "STEM", "global_facts": "other"}
    first = bench.test["elementary_mathematics"][0]
    assert first == Question("elementary_mathematics", "2+3=?", ("4", "5", "6", "7"), "B",
                             f"{EVAL / 'mmlu/test/elementary_mathematics_test.csv'}:1")
    quoted = bench.test["global_facts"][1]  # a quoted field spanning two lines
    assert quoted.question == "Coal\ncolor?" and quoted.source.endswith("global_facts_test.csv:2")
    assert bench.test["global_facts"][2].source.endswith(":4")
    assert bench.test["elementary_mathematics"][2].question == "Sum of 1, 2?"


def test_loads_ceval_layout_val_and_test_without_answers():
    val = load_choice_benchmark(EVAL / "ceval", split="validation", subjects=["middle_school_mathematics"])
    test = load_choice_benchmark(EVAL / "ceval")

    assert (val.layout, val.split) == ("ceval", "val")
    assert [q.answer for q in val.test["middle_school_mathematics"]] == ["B", "A"]
    assert val.dev["middle_school_mathematics"][0].options == ("1", "2", "3", "4")
    assert val.categories == {"middle_school_mathematics": "STEM"}
    assert test.categories == {"high_school_history": "Humanities", "middle_school_mathematics": "STEM"}
    assert all(q.answer is None for qs in test.test.values() for q in qs)


def test_loads_cmmlu_layout_with_limit_and_subjects():
    bench = load_choice_benchmark(EVAL / "cmmlu", subjects=["chinese_history", "elementary_mathematics"], limit=2)

    assert bench.layout == "cmmlu"
    assert list(bench.test) == ["chinese_history", "elementary_mathematics"]
    assert [len(qs) for qs in bench.test.values()] == [2, 2]
    assert bench.test["chinese_history"][0].options == ("秦", "五代十国", "汉", "清")
    assert bench.test["chinese_history"][0].source.endswith("chinese_history.csv:2")  # line 1 is the header
    assert bench.categories == {"chinese_history": "China specific", "elementary_mathematics": "STEM"}


def test_category_maps_cover_the_real_subject_lists():
    assert len(MMLU_CATEGORIES) == 57 and len(CMMLU_CATEGORIES) == 67 and len(CEVAL_CATEGORIES) == 52
    assert set(MMLU_CATEGORIES.values()) == {"STEM", "humanities", "social sciences", "other"}
    assert set(CMMLU_CATEGORIES.values()) == {"STEM", "Humanities", "Social Science", "Other", "China specific"}
    assert set(CEVAL_CATEGORIES.values()) == {"STEM", "Social Science", "Humanities", "Other"}
    for layout, table, suffix in (("mmlu", MMLU_CATEGORIES, "_test"), ("cmmlu", CMMLU_CATEGORIES, ""),
                                  ("ceval", CEVAL_CATEGORIES, "_test")):
        folder = shared_data(layout, "test")
        assert {path.stem.removesuffix(suffix) for path in folder.glob("*.csv")} == set(table)


def test_prompt_formats():
    mmlu = load_choice_benchmark(EVAL / "mmlu")
    question = mmlu.test["elementary_mathematics"][0]
    assert format_prompt(mmlu, question, 1) == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2+3=?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:")
    assert format_prompt(mmlu, question, 1, scoring="content").split("\n\n")[1].endswith("Answer: 2")
    cmmlu = load_choice_benchmark(EVAL / "cmmlu", subjects=["chinese_history"])
    assert format_prompt(cmmlu, cmmlu.test["chinese_history"][0], 0) == (
        "以下是关于中国历史的单项选择题，请直接给出正确答案的选项。\n\n"
        "唐朝之后是哪个朝代？\nA. 秦\nB. 五代十国\nC. 汉\nD. 清\n答案：")


# ---------------------------------------------------------------------------------------------------- errors


def _mmlu_folder(root: Path, test_csv: str) -> Path:
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "dev" / "algebra_dev.csv").write_text("1+1=?,1,2,3,4,B\n")
    (root / "test" / "algebra_test.csv").write_text(test_csv)
    return root


def test_missing_option_column_names_file_and_line(tmp_path):
    folder = _mmlu_folder(tmp_path / "bench", "2+2=?,3,4,5,6,B\n2+3=?,4,5,6,B\n")
    with pytest.raises(DataError, match=r"algebra_test.csv, line 2: expected 6 columns \(question, A, B, C, D, "
                                        r"answer\), found 5"):
        load_choice_benchmark(folder)


def test_header_without_option_column(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "dev" / "x.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n")
    (tmp_path / "test" / "x.csv").write_text(",Question,A,B,C,Answer\n0,q,a,b,c,A\n")
    with pytest.raises(DataError, match=r"x.csv, line 1: the header has no column 'D'"):
        load_choice_benchmark(tmp_path, layout="cmmlu")


def test_answer_outside_a_to_d(tmp_path):
    folder = _mmlu_folder(tmp_path / "bench", "2+2=?,3,4,5,6,B\n2+3=?,4,5,6,7,E\n")
    with pytest.raises(DataError, match=r"algebra_test.csv, line 2: the answer is 'E', not one of A, B, C, D"):
        load_choice_benchmark(folder)


def test_empty_folder_and_folder_without_csvs(tmp_path):
    with pytest.raises(DataError, match="holds no CSV files"):
        load_choice_benchmark(tmp_path)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no CSV files"):
        load_choice_benchmark(tmp_path, layout="mmlu")


def test_unknown_layout_split_and_subject():
    with pytest.raises(ConfigError, match="Unknown benchmark layout 'mmlu2'; use one of: auto, mmlu, ceval, cmmlu"):
        load_choice_benchmark(EVAL / "mmlu", layout="mmlu2")
    with pytest.raises(ConfigError, match="splits dev, test; got 'val'"):
        load_choice_benchmark(EVAL / "cmmlu", split="val")
    with pytest.raises(ConfigError, match="Unknown subject 'elementary_math'.*Did you mean: elementary_mathematics"):
        load_choice_benchmark(EVAL / "mmlu", subjects=["elementary_math"])


def test_scoring_a_split_without_answers_says_use_val(model, tokenizer):
    bench = load_choice_benchmark(EVAL / "ceval")
    with pytest.raises(ConfigError, match="test split has no answers.*Score split=val instead"):
        evaluate_choice(model, tokenizer, bench, shots=0, progress=False)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="'cais/mmlu' is a hub id, but HF_HUB_OFFLINE is set: offline, the "
                                          "benchmark must be a local folder"):
        load_choice_benchmark("cais/mmlu", subjects=["anatomy"])


# ---------------------------------------------------------------------------------------------------- scoring


def _reference_logprob(model, tokenizer, prompt: str, continuation: str) -> float:
    """Plain torch: one unbatched forward of prompt + continuation, log_softmax, gather the continuation."""
    context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + continuation, add_special_tokens=False)["input_ids"]
    assert whole[:len(context)] == context
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.tensor(whole[len(context):])
    positions = torch.arange(len(context) - 1, len(whole) - 1)
    return float(logprobs[positions, targets].sum())


def _reference(model, tokenizer, bench, shots: int, scoring: str) -> tuple[list[str], list[dict]]:
    predicted, logprobs = [], []
    space = " " if bench.layout == "mmlu" else ""
    for questions in bench.test.values():
        for question in questions:
            prompt = format_prompt(bench, question, shots, scoring)
            texts = LETTERS if scoring == "letter" else question.options
            scores = {letter: _reference_logprob(model, tokenizer, prompt, space + text)
                      for letter, text in zip(LETTERS, texts)}
            predicted.append(max(scores, key=scores.get))
            logprobs.append(scores)
    return predicted, logprobs


@pytest.mark.parametrize(("layout", "scoring", "shots"), [("mmlu", "letter", 0), ("mmlu", "letter", 2),
                                                         ("mmlu", "content", 0), ("mmlu", "content", 2),
                                                         ("cmmlu", "letter", 2), ("cmmlu", "content", 2)])
def test_scores_agree_with_plain_torch_reference(model, tokenizer, layout, scoring, shots):
    bench = load_choice_benchmark(EVAL / layout)
    predicted, logprobs = _reference(model, tokenizer, bench, shots, scoring)
    answers = [q.answer for qs in bench.test.values() for q in qs]
    expected_accuracy = sum(p == a for p, a in zip(predicted, answers)) / len(answers)

    for batch_size in (1, 3):
        result = evaluate_choice(model, tokenizer, bench, shots=shots, batch_size=batch_size, scoring=scoring,
                                 progress=False)
        assert [r["predicted"] for r in result.records] == predicted
        assert result.accuracy == expected_accuracy
        assert result.correct == sum(p == a for p, a in zip(predicted, answers))
        for record, reference in zip(result.records, logprobs):
            assert record["logprobs"] == pytest.approx(reference, abs=1e-4)
            assert record["shots"] == min(shots, len(bench.dev[record["subject"]]))
    assert len(set(predicted)) > 1  # the test model does not answer the same letter every time


def test_result_structure(model, tokenizer):
    bench = load_choice_benchmark(EVAL / "mmlu")
    result = evaluate_choice(model, tokenizer, bench, shots=1, progress=False)

    assert (result.benchmark, result.shots, result.total, result.scoring, result.split) == ("mmlu", 1, 7, "letter",
                                                                                            "test")
    assert set(result.per_subject) == {"elementary_mathematics", "global_facts"}
    assert set(result.per_category) == {"STEM", "other"}
    assert result.per_subject["elementary_mathematics"]["total"] == 4
    assert sum(entry["correct"] for entry in result.per_category.values()) == result.correct
    assert 0 <= result.accuracy <= 1 and 0 <= result.subject_average <= 1
    record = result.records[0]
    assert set(record) >= {"subject", "source", "answer", "predicted", "logprobs", "correct"}
    assert set(record["logprobs"]) == set(LETTERS) and record["correct"] == (record["predicted"] == record["answer"])


def test_overlong_prompts_drop_shots_then_tokens(model, tokenizer):
    bench = load_choice_benchmark(EVAL / "mmlu", subjects=["elementary_mathematics"])
    full = len(format_prompt(bench, bench.test["elementary_mathematics"][0], 2))  # one token per character

    dropped = evaluate_choice(model, tokenizer, bench, shots=2, max_length=full - 5, progress=False)
    assert dropped.records[0]["shots"] == 1 and not dropped.records[0]["truncated"]
    cut = evaluate_choice(model, tokenizer, bench, shots=2, max_length=20, progress=False)
    assert all(r["shots"] == 0 and r["truncated"] for r in cut.records)
    assert all(len(r["logprobs"]) == 4 for r in cut.records)


def test_scoring_the_dev_split_never_shows_a_question_as_its_own_example():
    bench = load_choice_benchmark(EVAL / "mmlu", split="dev", subjects=["elementary_mathematics"])
    first = bench.test["elementary_mathematics"][0]

    prompt = format_prompt(bench, first, 2)

    assert prompt.count("1+1=?") == 1 and prompt.index("2+2=?") < prompt.index("3, then 4?")


def test_bad_scoring_and_shots(model, tokenizer):
    bench = load_choice_benchmark(EVAL / "mmlu")
    with pytest.raises(ConfigError, match="scoring must be one of letter, content; got 'letters'"):
        evaluate_choice(model, tokenizer, bench, scoring="letters", progress=False)
    with pytest.raises(ConfigError, match="shots must be 0 or more"):
        evaluate_choice(model, tokenizer, bench, shots=-1, progress=False)


# ---------------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def smollm2():
    from lorakit.config import ModelConfig
    from lorakit.model import load_model, load_tokenizer

    config = ModelConfig(name="smollm2-135m", dtype="float32")
    return load_model(config), load_tokenizer(config)


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "subjects"), [("mmlu", ["high_school_geography", "marketing"]),
                                                  ("cmmlu", ["chinese_history", "elementary_mathematics"])])
def test_smollm2_five_shot_on_real_benchmarks(smollm2, layout, subjects):
    model, tokenizer = smollm2
    bench = load_choice_benchmark(shared_data(layout), subjects=subjects, limit=10)
    result = evaluate_choice(model, tokenizer, bench, shots=5, progress=False)

    assert result.total == 20 and 0 <= result.accuracy <= 1
    assert set(result.per_subject) == set(subjects)
    assert all(record["shots"] == 5 for record in result.records)


@pytest.mark.parametrize("architecture", ["qwen2", "gemma3", "mistral"])
def test_cached_prefix_matches_reference_on_other_architectures(tokenizer, architecture):
    """Gemma3's sliding-window cache (window 64, prompts ~200 tokens) is the case most likely to go wrong."""
    model = make_model(architecture, len(tokenizer)).float().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 1.0, generator=generator)
    bench = load_choice_benchmark(EVAL / "mmlu")
    predicted, logprobs = _reference(model, tokenizer, bench, 2, "content")

    result = evaluate_choice(model, tokenizer, bench, shots=2, batch_size=3, scoring="content", progress=False)

    assert [r["predicted"] for r in result.records] == predicted
    for record, reference in zip(result.records, logprobs):
        assert record["logprobs"] == pytest.approx(reference, abs=1e-4)


def test_scores_a_peft_model_like_its_base(model, tokenizer):
    """The before/after report scores base + adapter: a fresh LoRA (B = 0) must give the base model's numbers."""
    import copy

    from peft import LoraConfig, get_peft_model

    bench = load_choice_benchmark(EVAL / "mmlu", subjects=["global_facts"])
    base = evaluate_choice(model, tokenizer, bench, shots=1, batch_size=2, progress=False)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))

    adapted = evaluate_choice(peft_model, tokenizer, bench, shots=1, batch_size=2, progress=False)

    for before, after in zip(base.records, adapted.records):
        assert after["logprobs"] == pytest.approx(before["logprobs"], abs=1e-5)
