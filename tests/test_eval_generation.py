"""Generation evaluation on a tiny model: one JSONL line per sample, scores against references, atomic output."""

from __future__ import annotations

import json

import pytest

from lorakit.data.formats import Conversation
from lorakit.errors import DataError
from lorakit.eval import generation as generation_module
from lorakit.eval.generation import evaluate_generation, read_predictions, split_reference
from lorakit.eval.metrics import SCORE_NAMES, corpus_scores, text_scores
from lorakit.infer import GenerationConfig
from lorakit.templates import resolve_template

QUICK = GenerationConfig(max_new_tokens=6, batch_size=2)


def chat(origin: str, *turns: str) -> Conversation:
    roles = ["user", "assistant"] * len(turns)
    return Conversation(origin, tuple({"role": role, "content": text} for role, text in zip(roles, turns)))


@pytest.fixture
def chatml(tiny_tokenizer):
    return resolve_template("chatml", tiny_tokenizer)


CONVERSATIONS = [chat("data.jsonl:1", "hi?", "hello."), chat("data.jsonl:2", "a b c", "a b c d"),
                 chat("data.jsonl:3", "x", "y", "more?", "no more."), chat("data.jsonl:4", "bye", "bye!")]


def test_writes_one_line_per_sample_with_scores(tiny_model, tiny_tokenizer, chatml, tmp_path):
    out = tmp_path / "eval" / "predictions.jsonl"

    result = evaluate_generation(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, out, QUICK, progress=False)

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    assert [row["reference"] for row in rows] == ["hello.", "a b c d", "no more.", "bye!"]
    assert rows[2]["prompt"] == "more?" and [m["content"] for m in rows[2]["messages"]] == ["x", "y", "more?"]
    assert rows[0]["origin"] == "data.jsonl:1"
    for row in rows:
        assert isinstance(row["prediction"], str)
        assert row["scores"] == pytest.approx(text_scores(row["prediction"], row["reference"]))
    expected = corpus_scores([r["prediction"] for r in rows], [r["reference"] for r in rows])
    assert result == pytest.approx({**expected, "samples": 4.0})
    assert read_predictions(out) == rows
    assert not list(out.parent.glob(".*tmp*"))


def test_scores_follow_the_predictions(tiny_model, tiny_tokenizer, chatml, tmp_path, monkeypatch):
    answers = {"hi?": "hello.", "a b c": "a b", "more?": "no more.", "bye": "ciao"}
    calls = []

    def fake_generate(model, tokenizer, template, conversations, config):
        calls.append((len(conversations), config.seed))
        return [answers[messages[-1]["content"]] for messages in conversations]

    monkeypatch.setattr(generation_module, "generate", fake_generate)
    out = tmp_path / "predictions.jsonl"
    seeded = GenerationConfig(max_new_tokens=6, batch_size=2, temperature=0.7, seed=7)

    result = evaluate_generation(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, out, seeded, progress=False)

    # generation.batch_size samples per call, to move the progress bar; seeded once, like a single call
    assert calls == [(2, 7), (2, None)]
    rows = read_predictions(out)
    assert [row["prediction"] for row in rows] == ["hello.", "a b", "no more.", "ciao"]  # back in input order
    assert rows[0]["scores"] == dict.fromkeys(SCORE_NAMES, 100.0)
    assert rows[3]["scores"]["exact_match"] == 0
    assert result["exact_match"] == 50.0 and result["count"] == 4 and result["samples"] == 4


def test_prediction_only_without_references(tiny_model, tiny_tokenizer, chatml, tmp_path):
    prompts = [chat("p:1", "hi?"), chat("p:2", "x", "y", "and now?")]
    out = tmp_path / "predictions.jsonl"

    result = evaluate_generation(tiny_model, tiny_tokenizer, chatml, prompts, out, QUICK, progress=False)

    assert result == {"samples": 2.0, "count": 0.0}
    rows = read_predictions(out)
    assert [(row["reference"], row["scores"]) for row in rows] == [(None, {}), (None, {})]
    assert rows[1]["prompt"] == "and now?"


def test_mixed_references_score_only_those_present(tiny_model, tiny_tokenizer, chatml, tmp_path):
    out = tmp_path / "predictions.jsonl"
    conversations = [chat("m:1", "hi?"), *CONVERSATIONS[:2]]

    result = evaluate_generation(tiny_model, tiny_tokenizer, chatml, conversations, out, QUICK, progress=False)

    assert result["samples"] == 3 and result["count"] == 2
    assert [bool(row["scores"]) for row in read_predictions(out)] == [False, True, True]


def test_an_interrupted_run_leaves_the_old_file(tiny_model, tiny_tokenizer, chatml, tmp_path, monkeypatch):
    out = tmp_path / "predictions.jsonl"
    out.write_text('{"index": 0, "prediction": "old"}\n', encoding="utf-8")
    calls = []

    def failing_generate(model, tokenizer, template, conversations, config):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return ["reply"] * len(conversations)

    monkeypatch.setattr(generation_module, "generate", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        evaluate_generation(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, out, QUICK, progress=False)

    assert out.read_text(encoding="utf-8") == '{"index": 0, "prediction": "old"}\n'
    assert tiny_model.training  # a fresh model is in training mode; evaluation gives it back as it found it

    monkeypatch.undo()
    evaluate_generation(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, out, QUICK, progress=False)
    assert len(read_predictions(out)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]


def test_system_prompt_is_put_first_as_in_training():
    messages, reference = split_reference(chat("s:1", "hi?", "hello."), system="Be brief.")
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi?"}]
    assert reference == "hello."


def test_refuses_plain_text_records(tiny_model, tiny_tokenizer, chatml, tmp_path):
    with pytest.raises(DataError, match="notes.txt:3: a plain-text record has no prompt"):
        evaluate_generation(tiny_model, tiny_tokenizer, chatml, [Conversation("notes.txt:3", text="just text")],
                            tmp_path / "p.jsonl", QUICK, progress=False)
    with pytest.raises(DataError, match="No conversations to evaluate"):
        evaluate_generation(tiny_model, tiny_tokenizer, chatml, [], tmp_path / "p.jsonl", QUICK, progress=False)


def test_read_predictions_names_a_bad_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"prediction": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError, match="predictions.jsonl, line 2: not valid JSON"):
        read_predictions(path)
