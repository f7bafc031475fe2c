"""LLM-as-judge against a fake OpenAI-compatible endpoint (an in-process mock transport) and a tiny local model."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from lorakit.config import ModelConfig
from lorakit.errors import ConfigError, DataError
from lorakit.eval.judge import (DEFAULT_RUBRIC, EndpointConfig, OpenAIJudge, choose_judge, first_json_object,
                                judge_comparison, judge_pairwise, load_rubric, local_judge, parse_scores,
                                parse_winner, score_answers)
from lorakit.infer import GenerationConfig

GOOD = {"correctness": 9, "relevance": 8, "completeness": 7, "depth": 6, "usefulness": 10, "explanation": "fine"}
POOR = {"correctness": 3, "relevance": 4, "completeness": 5, "depth": 2, "usefulness": 1, "explanation": "weak"}


def _answer_in(prompt: str, label: str) -> str:
    return re.search(rf"\[{label}\]\n(.*?)\n\[End of {label[0].lower() + label[1:]}\]", prompt, re.S)[1]


def fake_judge(prefers: str = "position A", requests: list | None = None, fail_first: int = 0) -> OpenAIJudge:
    """An OpenAIJudge whose endpoint is a function: canned rubric verdicts keyed by the answer text, and pairwise
    verdicts that either always name position A or always pick the answer containing 'TUNED'."""
    failures = {"left": fail_first}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.url.path == "/v1/chat/completions" and body["temperature"] == 0
        if requests is not None:
            requests.append(body)
        if failures["left"] > 0:
            failures["left"] -= 1
            return httpx.Response(503, json={"error": {"message": "busy"}}, headers={"retry-after-ms": "1"})
        prompt = body["messages"][-1]["content"]
        if "[Answer A]" in prompt:
            if prefers == "position A":
                text = 'Answer A is better. {"winner": "A", "explanation": "first"}'
            else:
                winner = "A" if "TUNED" in _answer_in(prompt, "Answer A") else "B"
                text = json.dumps({"winner": winner, "explanation": "tuned is better"})
        else:
            answer = _answer_in(prompt, "Answer")
            text = ("I cannot decide." if "garbled" in answer
                    else f"```json\n{json.dumps(GOOD if 'TUNED' in answer else POOR)}\n```")
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return OpenAIJudge(EndpointConfig(base_url="http://judge.test/v1", model="judge-1", max_retries=2),
                       http_client=client)


ROWS = [{"index": 0, "question": "What is LoRA?", "answers": {"base": "no idea", "tuned": "TUNED: low-rank"}},
        {"index": 1, "question": "天空为什么是蓝色的？", "answers": {"base": "因为", "tuned": "TUNED 瑞利散射"}},
        {"index": 2, "question": "2+2?", "answers": {"base": "garbled", "tuned": "TUNED 4"}}]


def test_rubric_scores_are_parsed_averaged_and_failures_recorded(tmp_path):
    requests = []

    summary = judge_comparison(fake_judge(requests=requests), ROWS, tmp_path, pair=None)

    tuned, base = summary["scores"]["tuned"], summary["scores"]["base"]
    assert tuned == {"judged": 3, "failed": 0, "mean": {**{k: v for k, v in GOOD.items() if k != "explanation"},
                                                        "overall": 8.0}}
    assert (base["judged"], base["failed"]) == (2, 1) and base["mean"]["correctness"] == 3
    assert summary["pairwise"] is None and len(requests) == 6
    records = [json.loads(line) for line in (tmp_path / "judge_scores.jsonl").read_text().splitlines()]
    failed = [record for record in records if record["failed"]]
    assert len(failed) == 1 and failed[0]["raw"] == "I cannot decide." and failed[0]["scores"] is None
    assert "no JSON object" in failed[0]["error"]
    assert "Chinese" in records[0]["prompt"] and "correctness" in records[0]["prompt"]
    assert json.loads((tmp_path / "judge_summary.json").read_text()) == summary


def test_a_judge_that_always_prefers_position_a_gives_ties(tmp_path):
    summary = judge_comparison(fake_judge("position A"), ROWS, tmp_path, score=False)

    pairwise = summary["pairwise"]
    assert (pairwise["wins"], pairwise["ties"], pairwise["losses"], pairwise["inconsistent"]) == (0, 3, 0, 3)
    assert (pairwise["win_rate"], pairwise["tie_rate"]) == (0.0, 1.0)
    records = [json.loads(line) for line in (tmp_path / "judge_pairwise.jsonl").read_text().splitlines()]
    assert {record["outcome"] for record in records} == {"tie"} and not records[0]["consistent"]
    assert [order["a"] for order in records[0]["orders"]] == ["tuned", "base"]  # asked in both orders
    assert "position bias" in records[0]["note"]


def test_a_consistent_preference_is_a_win(tmp_path):
    summary = judge_comparison(fake_judge("tuned"), ROWS, tmp_path, score=False)

    assert (summary["pairwise"]["wins"], summary["pairwise"]["win_rate"], summary["pairwise"]["inconsistent"]) \
        == (3, 1.0, 0)
    swapped = judge_pairwise(fake_judge("tuned"), ["q"], ("base", ["plain"]), ("tuned", ["TUNED"]))
    assert swapped[0]["outcome"] == "loss"


def test_retries_then_succeeds_and_config_errors_stop_the_run():
    requests = []
    judge = fake_judge("tuned", requests=requests, fail_first=2)

    records = score_answers(judge, ["q"], {"tuned": ["TUNED"]})

    assert len(requests) == 3 and not records[0]["failed"]  # two 503s, then the answer
    exhausted = score_answers(fake_judge("tuned", fail_first=10), ["q"], {"tuned": ["TUNED"]})
    assert exhausted[0]["failed"] and "InternalServerError" in exhausted[0]["error"]

    refusing = OpenAIJudge(EndpointConfig(base_url="http://judge.test/v1", model="m"), http_client=httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(401, json={"error": {"message": "no"}}))))
    with pytest.raises(ConfigError, match="refused the API key"):
        score_answers(refusing, ["q"], {"tuned": ["a"]})
    calls = []

    def unreachable(request):
        calls.append(request)
        raise httpx.ConnectError("connection refused")

    down = OpenAIJudge(EndpointConfig(base_url="http://judge.test/v1", model="m", max_retries=0, concurrency=2),
                       http_client=httpx.Client(transport=httpx.MockTransport(unreachable)))
    with pytest.raises(ConfigError, match="Cannot reach the judge at http://judge.test/v1"):
        score_answers(down, ["q"] * 50, {"tuned": ["a"] * 50})
    assert len(calls) < 10  # the queued requests were dropped
    with pytest.raises(ConfigError, match="must start with http"):
        EndpointConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ConfigError, match="No answers from model 'tuned'.*base"):
        judge_comparison(fake_judge(), [{"index": 0, "question": "q", "answers": {"base": "a"}}], None)
    incomplete = [{"index": 0, "question": "q0", "answers": {"base": "a", "tuned": "b"}},
                  {"index": 1, "question": "q1", "answers": {"base": "a"}}]
    with pytest.raises(DataError, match="Question 1 \\('q1'\\) has no answer from tuned"):
        judge_comparison(fake_judge(), incomplete, None)


def test_verdict_parsing_is_forgiving_but_checked():
    assert first_json_object('Sure! {"a": {"b": 1}} and {"c": 2}') == {"a": {"b": 1}}
    assert first_json_object("{not json} then {\"x\": 1}") == {"x": 1}
    clamped = parse_scores(json.dumps({**GOOD, "correctness": 12, "depth": "7/10"}), DEFAULT_RUBRIC)
    assert clamped.scores["correctness"] == 10 and clamped.scores["depth"] == 7
    assert clamped.notes == ("correctness: 12 clamped to 10",)
    nested = parse_scores(json.dumps({"scores": {k: 5 for k in DEFAULT_RUBRIC.names}, "explanation": "ok"}),
                          DEFAULT_RUBRIC)
    assert nested.scores == {k: 5 for k in DEFAULT_RUBRIC.names} and nested.explanation == "ok"
    missing = parse_scores('{"correctness": 5, "relevance": "high"}', DEFAULT_RUBRIC)
    assert missing.scores is None and "'relevance' is not a number" in missing.error
    assert "no score for 'depth'" in missing.error
    assert parse_winner('{"winner": "Answer B"}')[0] == "B"
    assert parse_winner('{"winner": "TIE", "explanation": "same"}')[:2] == ("tie", "same")
    assert parse_winner('{"winner": "C"}')[2] == "'winner' must be A, B or tie, got 'C'"


def test_custom_rubric_files_and_their_errors(tmp_path):
    (tmp_path / "r.yaml").write_text("scale: [0, 5]\ncriteria:\n  accuracy: Is it right?\n  tone: 语气是否礼貌？\n",
                                     encoding="utf-8")
    (tmp_path / "r.json").write_text(json.dumps({"criteria": [{"name": "fluency", "description": "Reads well?"}]}))
    (tmp_path / "bad.yaml").write_text("scales: [1, 10]\ncriteria:\n  explanation: x\n  bad-name: y\n  ok: ''\n")
    (tmp_path / "scale.yaml").write_text("scale: [10, 1]\ncriteria: {a: b, A: c}\n")
    (tmp_path / "broken.yaml").write_text("criteria:\n  a: [\n")

    rubric = load_rubric(tmp_path / "r.yaml")
    assert (rubric.names, rubric.low, rubric.high) == (("accuracy", "tone"), 0, 5)
    assert load_rubric(tmp_path / "r.json").names == ("fluency",)
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'scales' \(did you mean 'scale'\?\); "
                                          r"'explanation' is reserved.*'bad-name' must start with a letter.*"
                                          r"criterion 'ok' needs a non-empty description"):
        load_rubric(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"criterion 'A' is listed twice; `scale` must be two integers"):
        load_rubric(tmp_path / "scale.yaml")
    with pytest.raises(ConfigError, match=r"broken\.yaml, line \d+: not valid YAML"):
        load_rubric(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_rubric(tmp_path / "missing.yaml")

    records = score_answers(fake_judge(), ["q"], {"tuned": ["TUNED"]}, rubric)
    assert "from 0 (very poor) to 5" in records[0]["prompt"] and "语气是否礼貌" in records[0]["prompt"]
    assert records[0]["failed"] and "no score for 'accuracy'" in records[0]["error"]


def test_local_model_judge_runs_and_records_failures(tmp_path, tiny_model_dir):
    judge = local_judge(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32"),
                        generation=GenerationConfig(max_new_tokens=4, batch_size=4))

    summary = judge_comparison(judge, ROWS[:1], tmp_path)

    assert summary["scores"]["tuned"]["failed"] == 1 and summary["scores"]["tuned"]["mean"]["overall"] is None
    assert summary["pairwise"]["failed"] == 1 and summary["pairwise"]["win_rate"] is None
    records = [json.loads(line) for line in (tmp_path / "judge_pairwise.jsonl").read_text().splitlines()]
    assert all(order["error"] for record in records for order in record["orders"])
    assert judge.name == f"local {tiny_model_dir}"
    assert json.loads((tmp_path / "judge_summary.json").read_text())["judge"] == judge.name


def test_choose_judge_wants_exactly_one_judge():
    endpoint = EndpointConfig(base_url="http://judge.test/v1", model="m")
    assert isinstance(choose_judge(endpoint), OpenAIJudge)
    with pytest.raises(ConfigError, match="Choose one judge"):
        choose_judge()
    with pytest.raises(ConfigError, match="Choose one judge"):
        choose_judge(endpoint, ModelConfig(name="tiny"))
