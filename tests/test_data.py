"""Reading and validating datasets: every format into one canonical form, and errors that name file, line, field."""

import json
from pathlib import Path

import pytest

from lorakit.config import DataConfig
from lorakit.data import load_conversations, split_validation
from lorakit.errors import DataError

from conftest import shared_data

FIXTURES = Path(__file__).parent / "fixtures"


def load(path, **options):
    conversations, summary = load_conversations(DataConfig(paths=(str(path),), **options))
    return conversations, summary


def write_jsonl(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n",
                    encoding="utf-8")
    return path


def messages(conversation):
    return [(m["role"], m["content"]) for m in conversation.messages]


def test_alpaca_with_input_system_and_history(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "Add", "input": "1+1", "output": "2", "system": "Be terse.",
                                 "history": [["hi", "hello"]]}]))
    [conversation], summary = load(path)
    assert messages(conversation) == [("system", "Be terse."), ("user", "hi"), ("assistant", "hello"),
                                      ("user", "Add\n1+1"), ("assistant", "2")]
    assert summary.formats == {str(path): "alpaca"}


@pytest.mark.parametrize("record, expected", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     [("user", "q"), ("assistant", "a")]),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "a"}]}, [("system", "s"), ("user", "q"), ("assistant", "a")]),
    ({"question": "q", "answer": "a"}, [("user", "q"), ("assistant", "a")]),
    ({"prompt": "q", "completion": "a"}, [("user", "q"), ("assistant", "a")]),
], ids=["sharegpt", "openai", "qa", "prompt_completion"])
def test_formats_are_detected_and_converted(tmp_path, record, expected):
    [conversation], _ = load(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert messages(conversation) == expected


def test_plain_text_for_continued_pretraining(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first document\n\nsecond document\n")
    conversations, _ = load(path)
    assert [c.text for c in conversations] == ["first document", "second document"]


def test_csv_parquet_and_columns_dict(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("question,reply\nq1,a1\nq2,\"a, 2\"\n")
    conversations, _ = load(tmp_path / "d.csv", columns={"answer": "reply"})
    assert [messages(c) for c in conversations][1] == [("user", "q2"), ("assistant", "a, 2")]

    pq.write_table(pa.table({"instruction": ["i"], "output": ["o"]}), tmp_path / "d.parquet")
    [conversation], _ = load(tmp_path / "d.parquet")
    assert messages(conversation) == [("user", "i"), ("assistant", "o")]

    (tmp_path / "cols.json").write_text(json.dumps({"prompt": ["p1", "p2"], "completion": ["c1", "c2"]}))
    conversations, _ = load(tmp_path / "cols.json")
    assert len(conversations) == 2


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"instruction": "i", "output": "o"}]).save_to_disk(str(tmp_path / "saved"))
    [conversation], _ = load(tmp_path / "saved")
    assert messages(conversation) == [("user", "i"), ("assistant", "o")]


def test_tool_calls_from_sharegpt(tmp_path):
    record = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "{\"temp\": 20}"},
        {"from": "gpt", "value": "20 degrees."}],
        "tools": json.dumps([{"name": "weather", "parameters": {"type": "object"}}])}
    [conversation], _ = load(write_jsonl(tmp_path / "t.jsonl", [record]))
    assert conversation.messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    assert conversation.messages[2]["role"] == "tool"
    assert conversation.tools[0]["function"]["name"] == "weather"


def test_placeholders_are_replaced(tmp_path):
    path = tmp_path / "i.json"
    path.write_text(json.dumps([{"instruction": "who?", "output": "I am {{name}} by {{author}}."}]))
    [conversation], _ = load(path, replace={"{{name}}": "Lumi", "{{author}}": "Lab"})
    assert conversation.messages[-1]["content"] == "I am Lumi by Lab."


def test_mixing_by_ratio_and_split_are_reproducible(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}", "completion": "x"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}", "completion": "y"} for i in range(30)])
    config = DataConfig(paths=(str(a), str(b)), mix_ratios=(1, 1), seed=3)
    mixed, summary = load_conversations(config)
    from_a = sum(c.messages[0]["content"].startswith("a") for c in mixed)
    assert len(mixed) == 40 and from_a == 20  # the small set is repeated to reach its share
    assert summary.per_source == {str(a): 10, str(b): 30}
    first = split_validation(mixed, 0.25, seed=1)
    again = split_validation(mixed, 0.25, seed=1)
    assert len(first.validation) == 10 and first.validation == again.validation
    assert len(split_validation(mixed, 5, seed=1).validation) == 5


# ---- bad input: each case asserts the message a user sees ----

def test_broken_jsonl_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a"}, '{"prompt": "q", "completion"'])
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: not valid JSON .* set data.skip_bad=true to skip it"):
        load(path)


def test_skip_bad_skips_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a"}, "{oops",
                                                {"prompt": "q2", "completion": ""}, {"prompt": "q3", "completion": "c"}])
    conversations, summary = load(path, skip_bad=True)
    assert len(conversations) == 2
    assert (summary.read, summary.used, summary.skipped) == (4, 2, 2)
    assert "line 3: field 'completion' is empty" in summary.problems[1]


def test_missing_field_names_record_line_and_fix(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "answer": "d"}\n]\n')
    with pytest.raises(DataError, match=r"train.json, record 2 \(line 3\): missing field 'output'. A alpaca record "
                                        r"needs 'instruction' and 'output'; this one has 'instruction', 'answer'. "
                                        r"Rename the field in the file, or map it with `data.columns.output=<your column>`"):
        load(path)


def test_empty_field(tmp_path):
    with pytest.raises(DataError, match=r"line 1: field 'output' is empty"):
        load(write_jsonl(tmp_path / "e.jsonl", [{"instruction": "a", "output": "  "}]))


def test_unknown_role(tmp_path):
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}
    with pytest.raises(DataError, match=r"line 1: turn conversations\[2\] has unknown role 'bot'. Known roles: .*gpt"):
        load(write_jsonl(tmp_path / "r.jsonl", [record]))


def test_wrong_turn_order(tmp_path):
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q again"},
                           {"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError, match="turns 1 and 2 are both from the user"):
        load(write_jsonl(tmp_path / "o.jsonl", [record]))


def test_conversation_ending_with_user(tmp_path):
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                           {"role": "user", "content": "and?"}]}
    with pytest.raises(DataError, match="the last turn is from 'user', so there is no answer to learn"):
        load(write_jsonl(tmp_path / "o.jsonl", [record]))


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(b'{"prompt": "ok", "completion": "ok"}\n' + '{"prompt": "你好", "completion": "好"}\n'.encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.jsonl, line 2: not valid UTF-8 \(byte 0x.. at column 13\). Re-save"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="Dataset file .*nope.jsonl does not exist"):
        load(tmp_path / "nope.jsonl")


def test_unknown_format_lists_formats(tmp_path):
    with pytest.raises(DataError, match=r"line 1: cannot tell the format from the fields \['foo'\]. lorakit reads alpaca"):
        load(write_jsonl(tmp_path / "u.jsonl", [{"foo": 1}]))


def test_function_call_that_is_not_json(tmp_path):
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "weather(paris)"},
                                {"from": "observation", "value": "20"}, {"from": "gpt", "value": "a"}]}
    with pytest.raises(DataError, match=r"conversations\[2\] is a function_call whose value is not JSON"):
        load(write_jsonl(tmp_path / "f.jsonl", [record]))


def test_csv_row_with_extra_values(tmp_path):
    (tmp_path / "d.csv").write_text("question,answer\nq1,a1\nq2,a2,extra\n")
    with pytest.raises(DataError, match=r"d.csv, line 3: 3 values but the header names 2 columns"):
        load(tmp_path / "d.csv")


def test_unknown_registry_name_suggests(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"}}))
    (tmp_path / "identity.json").write_text("[]")
    with pytest.raises(DataError, match="Dataset 'identiy' is neither a file .* Did you mean 'identity'"):
        load_conversations(DataConfig(paths=("identiy",), dataset_dir=tmp_path))


# ---- LLaMA-Factory's registry with the real demo datasets ----

def _registry_names():
    registry = Path(__file__).resolve().parents[2] / "shared" / "data" / "llamafactory" / "dataset_info.json"
    if not registry.is_file():
        return ["(absent)"]
    info = json.loads(registry.read_text())
    return [name for name, entry in info.items()
            if "file_name" in entry and (registry.parent / entry["file_name"]).exists()]


@pytest.mark.parametrize("name", _registry_names())
def test_every_llamafactory_text_dataset_loads_by_name(name):
    folder = shared_data("llamafactory")
    conversations, summary = load_conversations(DataConfig(paths=(name,), dataset_dir=folder))
    info = json.loads((folder / "dataset_info.json").read_text())[name]
    assert summary.skipped == 0 and len(conversations) == summary.read > 0
    if info.get("ranking"):
        assert all(c.rejected for c in conversations)
    if "tools" in info.get("columns", {}):
        assert any(m.get("tool_calls") for c in conversations for m in c.messages)
