"""`lorakit data check|stats|preview|convert`: counts, token statistics, marked previews and format round trips.

With the character-level tokenizer every character is one token and so is each ChatML marker, so
"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello.<|im_end|>\n" is 29 tokens, 7 of them trained
("hello." and the <|im_end|> that closes the reply).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorakit.config import DataConfig
from lorakit.data import load_conversations
from lorakit.data.inspect import (check_data, convert, data_config_and_overrides, dataset_stats, format_check,
                                  format_stats, plot_length_histogram, preview, problem_kinds)
from lorakit.errors import ConfigError, DataError
from lorakit.templates import resolve_template


def chat(*turns: str, **extra) -> dict:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)], **extra}


# Token lengths: 29, 29 (a repeat of line 1), 93 (a 60-token answer), 55 (two exchanges), 26 (two CJK characters).
RECORDS = [chat("hi", "hello."), chat("hi", "hello."), chat("tell me more", "a" * 60),
           chat("hi", "yo.", "and?", "bye."), chat("你好", "ok.")]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


@pytest.fixture
def chats(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chats.jsonl", RECORDS)


@pytest.fixture
def chatml(tiny_tokenizer):
    return resolve_template("chatml", tiny_tokenizer)


def load(path: Path, **settings):
    return load_conversations(DataConfig(paths=(str(path),), **settings))[0]


def test_check_counts_records_sources_formats_and_problems(tmp_path, chats):
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "a"), "{not json", {"messages": []}, chat("q2", "a2")])
    config = DataConfig(paths=(str(chats), str(bad)), skip_bad=True, val_size=2)

    report = check_data(config)

    assert (report.read, report.used, report.skipped) == (9, 7, 2)
    assert report.per_source == {str(chats): 5, str(bad): 2}
    assert report.formats == {str(chats): "openai", str(bad): "openai"}
    assert len(report.problems) == 2
    assert f"{bad}, line 2: not valid JSON" in report.problems[0]
    assert f"{bad}, line 3: field 'messages' must be a non-empty list" in report.problems[1]
    assert (report.train, report.validation) == (5, 2)
    text = format_check(report, shown=1)
    assert "Read 9 records: 7 used, 2 skipped." in text
    assert "... and 1 more." in text
    assert "Training skips the 2 bad records (data.skip_bad is true)." in text


def test_check_lists_every_bad_record_without_skip_bad(tmp_path):
    user_only = {"messages": [{"role": "user", "content": "q"}]}
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "a"), user_only, "{oops", user_only, chat("q2", "a2"),
                                               {"messages": [{"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": " "}]}])

    report = check_data(DataConfig(paths=(str(bad),)))

    assert (report.read, report.used, report.skipped) == (6, 2, 4)
    assert [problem.split(":")[0] for problem in report.problems] == [f"{bad}, line {n}" for n in (2, 3, 4, 6)]
    assert "line 2: the last turn is from 'user'" in report.problems[0]
    text = format_check(report, shown=2)
    assert f"{bad}, line 3: not valid JSON" in text and f"{bad}, line 4" not in text
    assert "... and 2 more." in text
    assert "By kind:\n  2  the last turn is from 'user', so there is no answer to learn\n" in text
    assert "  1  not valid JSON\n" in text and "  1  messages[N] is empty\n" in text
    assert "set data.skip_bad=true" in text and "--skip-bad" not in text


def test_check_reports_a_dataset_without_usable_records_and_keeps_going(tmp_path, chats):
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops", "[1]"])

    report = check_data(DataConfig(paths=(str(bad), str(chats)), mix_ratios=(1, 1)))

    assert (report.read, report.used, report.skipped) == (7, 5, 2)
    assert report.per_source == {str(bad): 0, str(chats): 5}
    assert report.problems[-1] == f"{bad}: no usable records: every record in it is bad (listed above)."


def test_check_reports_an_impossible_validation_split(chats):
    report = check_data(DataConfig(paths=(str(chats),), val_size=5))

    assert report.problems == [("data.val_size=5 holds out 5 of 5 records; it must leave at least one record on "
                                "each side. Use a fraction such as 0.1 or a smaller count.")]


def test_check_of_a_clean_file_lists_no_problems(chats):
    report = check_data(DataConfig(paths=(str(chats),)))

    assert report.problems == []
    assert "Problems" not in format_check(report) and "skip_bad" not in format_check(report)


def test_check_still_raises_when_a_file_cannot_be_read(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_data(DataConfig(paths=(str(tmp_path / "missing.jsonl"),)))


def test_problem_kinds_drop_origin_and_numbers():
    kinds = problem_kinds(["a.jsonl, line 2: not valid JSON (Expecting value at column 1). Each line ...",
                           "a.json, record 3 (line 9): turn messages[3] is empty. Fill it in",
                           "a.json, record 4 (line 12): turn messages[1] is empty. Fill it in",
                           "x.parquet, row 7: missing field 'output'. A alpaca record needs"])

    assert kinds == {"turn messages[N] is empty": 2, "not valid JSON": 1, "missing field 'output'": 1}


@pytest.mark.parametrize(("args", "expected"), [
    (["train.jsonl"], (None, ["data.paths=['train.jsonl']"])),
    (["train.jsonl", "data.template=chatml"], (None, ["data.template=chatml", "data.paths=['train.jsonl']"])),
    (["alpaca_en_demo", "run.yaml", "seed=1"], (Path("run.yaml"), ["seed=1", "data.paths=['alpaca_en_demo']"])),
    (["run.yaml", "seed=1"], (Path("run.yaml"), ["seed=1"])),
    (["outputs/x/config.yml"], (Path("outputs/x/config.yml"), [])),
    (["data.paths=[a.json]", "seed=1"], (None, ["data.paths=[a.json]", "seed=1"])),
    ([], (None, [])),
])
def test_data_arguments_tell_a_dataset_from_a_config(args, expected):
    assert data_config_and_overrides(args) == expected


def test_stats_count_lengths_truncation_loss_share_and_duplicates(chats, tiny_tokenizer, chatml):
    stats = dataset_stats(load(chats), tiny_tokenizer, chatml, DataConfig(max_seq_len=64))

    assert stats.lengths == [29, 29, 93, 55, 26]
    assert (stats.length_min, stats.length_median, stats.length_p90, stats.length_p95,
            stats.length_max) == (26, 29, 93, 93, 93)
    assert (stats.truncated, stats.dropped_overlong, stats.dropped_no_labels) == (1, 0, 0)
    assert stats.truncated_share == pytest.approx(0.2)
    # 29 + 29 + 64 + 55 + 26 tokens kept; trained: 7 + 7 + 33 'a's + (4 + 5) + 4.
    assert (stats.tokens, stats.supervised_tokens) == (203, 60)
    assert stats.supervised_share == pytest.approx(60 / 203)
    assert (stats.turns_max, stats.multi_turn, stats.turns_mean) == (2, 1, pytest.approx(1.2))
    assert (stats.cjk, stats.with_tools, stats.text_records) == (1, 0, 0)
    assert stats.duplicates == 1
    assert stats.duplicate_examples == [(f"{chats}, line 2", f"{chats}, line 1")]
    text = format_stats(stats)
    assert "min 26, median 29, p90 93, p95 93, max 93" in text
    assert "64: 1 truncated (20.0%)" in text
    assert "60 of 203 (29.6%) carry loss" in text
    assert f"{chats}, line 2 repeats {chats}, line 1" in text


def test_stats_count_dropped_records(chats, tiny_tokenizer, chatml):
    conversations = load(chats)
    dropped = dataset_stats(conversations, tiny_tokenizer, chatml, DataConfig(max_seq_len=64, overlong="drop"))
    assert (dropped.truncated, dropped.dropped_overlong, dropped.tokens, dropped.supervised_tokens) == (0, 1, 139, 27)

    # At 31 tokens the 60-'a' record's prompt fills the window: no trained token is left, so training drops it.
    tight = dataset_stats(conversations, tiny_tokenizer, chatml, DataConfig(max_seq_len=31))
    assert (tight.truncated, tight.dropped_no_labels, tight.dropped) == (2, 1, 1)
    assert tight.dropped_share == pytest.approx(0.2)


def test_histogram_is_a_png(tmp_path):
    path = plot_length_histogram([29, 29, 93, 55, 26], 64, tmp_path / "plots" / "lengths.png")

    assert path == tmp_path / "plots" / "lengths.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in path.parent.iterdir()] == ["lengths.png"]  # no temporary file left behind


def test_preview_marks_exactly_the_assistant_text(chats, tiny_tokenizer, chatml):
    blocks = preview(load(chats), tiny_tokenizer, chatml, DataConfig(max_seq_len=64), count=4)

    assert len(blocks) == 4
    header, body = blocks[0].split("\n", 1)
    assert header == f"=== 1. {chats}, line 1: 29 tokens, 7 trained, between « » ==="
    assert body == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n«hello.<|im_end|>»\n"
    assert "<|im_start|>assistant\n«" + "a" * 33 + "»\n[... 29 more tokens cut by max_seq_len=64" in blocks[2]
    assert "assistant\n«yo.<|im_end|>»\n<|im_start|>user\nand?<|im_end|>\n<|im_start|>assistant\n«bye.<|im_end|>»" \
        in blocks[3]


def test_preview_follows_the_labels(tmp_path, chats, tiny_tokenizer, chatml):
    conversations = load(chats)
    on_prompt = preview(conversations, tiny_tokenizer, chatml, DataConfig(train_on_prompt=True), count=1)[0]
    assert on_prompt.endswith("\n«<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello.<|im_end|>\n»")

    dropped = preview(conversations[2:3], tiny_tokenizer, chatml, DataConfig(max_seq_len=64, overlong="drop"), 1)[0]
    assert "93 tokens, longer than max_seq_len=64, so dropped" in dropped
    assert "«" not in dropped

    system = preview(conversations, tiny_tokenizer, chatml, DataConfig(system="Be brief."), count=1)[0]
    assert system.endswith("\n<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                           "<|im_start|>assistant\n«hello.<|im_end|>»\n")

    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "plain words."}])
    assert preview(load(text), tiny_tokenizer, chatml, DataConfig(), 1)[0].endswith("\n«plain words.<|im_end|>»")


TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]
SYSTEM_MULTI_TURN = {"messages": [{"role": "system", "content": "Be brief."},
                                  *chat("hi", "yo.", "and?", "bye.")["messages"]]}
CALL = {"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
TOOL_CALL = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "1+2?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "3"},
    {"role": "assistant", "content": "It is 3."}]}
PREFERENCE = {**chat("pick one"), "chosen": "this one.", "rejected": "that one."}
UNTRAINED = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "loss_weight": 0},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}


def same(conversation) -> tuple:
    return conversation.messages, conversation.tools, conversation.text, conversation.rejected, conversation.untrained


@pytest.mark.parametrize(("target", "records", "suffix"), [
    ("openai", [SYSTEM_MULTI_TURN, TOOL_CALL, PREFERENCE, UNTRAINED, chat("你好", "ok.")], ".jsonl"),
    ("openai", [SYSTEM_MULTI_TURN, TOOL_CALL], ".json"),
    ("sharegpt", [SYSTEM_MULTI_TURN, TOOL_CALL, PREFERENCE, chat("q", "a")], ".json"),
    ("sharegpt", [SYSTEM_MULTI_TURN, TOOL_CALL], ".jsonl"),
    ("alpaca", [SYSTEM_MULTI_TURN, PREFERENCE, chat("q", "a")], ".json"),
    ("text", [{"text": "first."}, {"text": "second, 第二."}], ".jsonl"),
])
def test_convert_round_trips(tmp_path, target, records, suffix):
    original = load(write_jsonl(tmp_path / "in.jsonl", records))
    out = tmp_path / f"out{suffix}"

    assert convert(original, target, out) == len(records)

    raw = out.read_text(encoding="utf-8")
    written = json.loads(raw) if suffix == ".json" else [json.loads(line) for line in raw.splitlines()]
    assert isinstance(written, list) and len(written) == len(records)
    assert [same(c) for c in load(out)] == [same(c) for c in original]


def test_convert_writes_the_shapes_other_tools_expect(tmp_path):
    original = load(write_jsonl(tmp_path / "in.jsonl", [SYSTEM_MULTI_TURN, TOOL_CALL]))

    convert(original, "sharegpt", tmp_path / "s.json")
    first, second = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert first["system"] == "Be brief."
    assert [t["from"] for t in first["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert [t["from"] for t in second["conversations"]] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(second["conversations"][1]["value"]) == {"name": "add", "arguments": {"a": 1, "b": 2}}
    assert json.loads(second["tools"]) == [TOOLS[0]["function"]]

    convert(original[:1], "alpaca", tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text(encoding="utf-8")) == [
        {"instruction": "and?", "input": "", "output": "bye.", "system": "Be brief.", "history": [["hi", "yo."]]}]


def test_convert_refuses_what_the_format_cannot_hold(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [chat("q", "a"), TOOL_CALL, UNTRAINED])
    conversations = load(source)

    with pytest.raises(DataError, match=r"in.jsonl, line 2: uses tools, which alpaca records cannot hold"):
        convert(conversations, "alpaca", tmp_path / "out.json")
    with pytest.raises(DataError, match=r"line 3: has assistant turns with loss_weight 0.*Convert to 'openai'"):
        convert(conversations, "sharegpt", tmp_path / "out.json")
    with pytest.raises(DataError, match=r"line 1: is a conversation; 'text' holds plain text only"):
        convert(conversations, "text", tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match=r"Did you mean 'sharegpt'\?"):
        convert(conversations, "sharegtp", tmp_path / "out.json")
    with pytest.raises(ConfigError, match=r"name the output .jsonl"):
        convert(conversations, "openai", tmp_path / "out.csv")
    assert not (tmp_path / "out.json").exists()


def test_convert_keeps_a_text_record_out_of_chat_formats(tmp_path):
    conversations = load(write_jsonl(tmp_path / "in.jsonl", [{"text": "just text."}]))
    with pytest.raises(DataError, match=r"line 1: is plain text with no conversation.*Convert it to 'text'"):
        convert(conversations, "openai", tmp_path / "out.jsonl")


# --- preference pairs (stage dpo) ----------------------------------------------------------------------------------

PAIR = {"prompt": "hi", "chosen": "hello.", "rejected": "go away, now."}


def test_check_lists_every_bad_preference_record(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        PAIR, {"prompt": "hi", "chosen": "same", "rejected": "same"}, {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "hi", "chosen": "a"}, {"prompt": [{"role": "robot", "content": "hi"}], "chosen": "a",
                                          "rejected": "b"}, {"prompt": "hi", "chosen": "", "rejected": "b"}])

    report = check_data(DataConfig(paths=(str(path),)), stage="dpo")

    assert (report.used, report.skipped, report.pairs) == (1, 5, 1)
    assert [problem.split(": ", 1)[0] for problem in report.problems] == [
        f"{path}, line {n}" for n in (2, 3, 4, 5, 6)]
    assert "'chosen' and 'rejected' are the same answer" in report.problems[0]
    assert "field 'prompt' is empty" in report.problems[1]
    assert "missing field 'rejected'" in report.problems[2]
    assert "message prompt[1] must be an object with 'role'" in report.problems[3]
    assert "field 'chosen' must be a non-empty answer" in report.problems[4]
    assert "Preference pairs (chosen and rejected): 1." in format_check(report)


def test_check_for_dpo_reports_records_that_are_not_pairs(tmp_path):
    path = write_jsonl(tmp_path / "mixed.json", [])
    path.write_text(json.dumps([{"instruction": "hi", "chosen": "a", "rejected": "b"},
                                {"instruction": "hi", "output": "a"}]))

    assert check_data(DataConfig(paths=(str(path),))).problems == []
    report = check_data(DataConfig(paths=(str(path),)), stage="dpo")

    assert report.problems == [f"{path}, record 2 (line 1): no rejected answer. Stage dpo trains on preference "
                               "pairs: each record needs 'chosen' and 'rejected' (LLaMA-Factory ranking records, or "
                               "prompt/chosen/rejected)."]
    assert (report.used, report.skipped) == (1, 1)


def test_stats_show_both_answers_of_preference_pairs(tmp_path, tiny_tokenizer, chatml):
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR, {**PAIR, "chosen": "a much longer and better answer."}])
    conversations = load(path)

    stats = dataset_stats(conversations, tiny_tokenizer, chatml, DataConfig(max_seq_len=512))

    # each answer plus its <|im_end|>: "hello." 7, "a much longer and better answer." 33, "go away, now." 14
    assert stats.chosen_lengths == [7, 33] and stats.rejected_lengths == [14, 14]
    text = format_stats(stats)
    assert "Pairs            2; the chosen answer is the longer in 1 (50.0%)" in text
    assert "Chosen answer    min 7, median 7, p90 33, max 33 tokens" in text
    assert "Rejected answer  min 14, median 14, p90 14, max 14 tokens" in text


# --- unpaired answers (stage kto) and plain text (stage pt) --------------------------------------------------------

ANSWER = {"prompt": "hi", "completion": "hello.", "label": True}


def test_check_for_kto_lists_bad_and_unlabelled_records_and_counts_labels(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        ANSWER, {**ANSWER, "label": False}, {**ANSWER, "label": "maybe"}, {"prompt": "hi", "completion": "a"},
        {**ANSWER, "label": 1}])

    report = check_data(DataConfig(paths=(str(path),)), stage="kto")

    assert (report.used, report.skipped, report.desirable, report.undesirable) == (3, 2, 2, 1)
    assert report.problems[0].startswith(f"{path}, line 3: field 'label' must be true or false")
    assert report.problems[1].startswith(f"{path}, line 4: no desirable/undesirable label. Stage kto trains")
    assert "KTO labels: 2 desirable, 1 undesirable." in format_check(report)
    assert check_data(DataConfig(paths=(str(path),))).skipped == 1  # for SFT a missing label is no problem


def test_check_for_kto_reports_data_of_one_kind(tmp_path):
    path = write_jsonl(tmp_path / "good.jsonl", [ANSWER, {**ANSWER, "completion": "hey."}])

    report = check_data(DataConfig(paths=(str(path),)), stage="kto")

    assert report.problems == [f"{path}: all 2 labelled answers are desirable, none undesirable. KTO learns from the "
                               "contrast of the two kinds; add undesirable examples (label false), or train the "
                               "desirable answers with stage: sft."]


def test_stats_count_kto_labels(tmp_path, tiny_tokenizer, chatml):
    path = write_jsonl(tmp_path / "kto.jsonl", [ANSWER, {**ANSWER, "label": False}, {**ANSWER, "label": False}])

    stats = dataset_stats(load(path), tiny_tokenizer, chatml, DataConfig(max_seq_len=512))

    assert (stats.desirable, stats.undesirable) == (1, 2)
    assert "KTO labels       1 desirable (33.3%), 2 undesirable" in format_stats(stats)


def test_check_for_pt_reports_records_that_are_not_text(tmp_path, chats):
    text = tmp_path / "docs.txt"
    text.write_text("a document.\n")

    report = check_data(DataConfig(paths=(str(text), str(chats))), stage="pt")

    assert report.used == 1 and report.skipped == 5
    assert report.problems[0] == (f"{chats}, line 1: not plain text. Stage pt trains on documents: lines of a .txt "
                                  "file, or records with a 'text' field (data.format: text; another field with "
                                  "data.columns.text=<field>).")
