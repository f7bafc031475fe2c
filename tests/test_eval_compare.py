"""A/B answers: reading questions, asking several models, writing the side-by-side files."""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import make_model
from lorakit.config import ModelConfig
from lorakit.errors import ConfigError, DataError
from lorakit.eval.compare import (answer_fn_for, compare_answers, compare_base_and_tuned, load_questions,
                                  read_comparison, write_comparison)
from lorakit.infer import GenerationConfig, generate
from lorakit.templates import resolve_template


def test_questions_from_json_jsonl_and_txt(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps(["What is LoRA?", {"question": "为什么天空是蓝色的？"},
                                                 {"instruction": "Translate", "input": "hello"},
                                                 {"prompt": "  Say hi  "}], ensure_ascii=False), encoding="utf-8")
    (tmp_path / "q.jsonl").write_text('"one"\n\n{"instruction": "two"}\n{"prompt": "three"}\n')
    (tmp_path / "q.txt").write_text("first question\n\n   \nsecond question\n")

    assert load_questions(tmp_path / "q.json") == ["What is LoRA?", "为什么天空是蓝色的？", "Translate\n\nhello",
                                                   "Say hi"]
    assert load_questions(tmp_path / "q.jsonl") == ["one", "two", "three"]
    assert load_questions(tmp_path / "q.txt") == ["first question", "second question"]


@pytest.mark.parametrize("name, content", [("empty.txt", "\n  \n"), ("empty.jsonl", ""), ("empty.json", "[]")])
def test_a_file_without_questions_is_a_data_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)

    with pytest.raises(DataError, match=f"{name} holds no questions"):
        load_questions(path)


def test_bad_records_name_their_line_or_item(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "ok"}\n{"question": oops}\n')
    (tmp_path / "nofield.jsonl").write_text('{"question": "ok"}\n\n{"answer": "x"}\n')
    (tmp_path / "item.json").write_text('["ok", 3]')
    (tmp_path / "q.csv").write_text("question\nq\n")

    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_questions(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"nofield\.jsonl, line 3: no question.*has 'answer'"):
        load_questions(tmp_path / "nofield.jsonl")
    with pytest.raises(DataError, match=r"item\.json, item 2"):
        load_questions(tmp_path / "item.json")
    with pytest.raises(DataError, match="unsupported questions file type"):
        load_questions(tmp_path / "q.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_questions(tmp_path / "missing.txt")


def test_compare_writes_readable_side_by_side_files(tmp_path):
    calls = []

    def echo(prefix):
        def answer(conversations):
            calls.append((prefix, len(conversations)))
            return [f"{prefix}: {messages[-1]['content']} | a\nb <b>" for messages in conversations]
        return answer

    rows = compare_answers(["q1?", "问题二？"], {"base": echo("base"), "tuned": echo("tuned")}, system="Be brief.")
    paths = write_comparison(rows, tmp_path / "out")

    assert calls == [("base", 2), ("tuned", 2)]  # one batched call per model
    assert rows[1] == {"index": 1, "question": "问题二？",
                       "answers": {"base": "base: 问题二？ | a\nb <b>", "tuned": "tuned: 问题二？ | a\nb <b>"}}
    assert read_comparison(paths["jsonl"]) == rows
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "| # | question | base | tuned |" in markdown
    assert "| 2 | 问题二？ | base: 问题二？ \\| a<br>b &lt;b&gt; |" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 4 and all(len(re.split(r"(?<!\\)\|", line)) == 6 for line in table)  # 4 cells each
    page = paths["html"].read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and "问题二？" in page and "&lt;b&gt;" in page and "<b>" not in page


def test_compare_checks_its_answer_functions(tmp_path):
    with pytest.raises(ConfigError, match="at least one model"):
        compare_answers(["q"], {})
    with pytest.raises(ValueError, match="returned 0 replies for 1 questions"):
        compare_answers(["q"], {"base": lambda conversations: []})
    (tmp_path / "answers.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(DataError, match="answers.jsonl, line 1: expected an object with 'question' and 'answers'"):
        read_comparison(tmp_path / "answers.jsonl")


def test_adapter_off_answers_match_the_plain_base_model(tiny_tokenizer):
    template = resolve_template(None, tiny_tokenizer)
    generation = GenerationConfig(max_new_tokens=6, batch_size=2)
    conversations = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "how are you?"}],
                     [{"role": "user", "content": "x"}]]
    base = make_model("llama", len(tiny_tokenizer)).eval()
    expected = generate(base, tiny_tokenizer, template, conversations, generation)
    peft_model = get_peft_model(make_model("llama", len(tiny_tokenizer)),
                                LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj",
                                                                               "down_proj"])).eval()
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 5.0)

    base_answers = answer_fn_for(peft_model, tiny_tokenizer, template, generation, adapter=False)(conversations)
    tuned_answers = answer_fn_for(peft_model, tiny_tokenizer, template, generation, adapter=True)(conversations)

    assert base_answers == expected
    assert tuned_answers != expected  # the adapter is back on after the base answers
    assert answer_fn_for(base, tiny_tokenizer, template, generation, adapter=False)(conversations) == expected
    with pytest.raises(ConfigError, match="needs a model with a LoRA adapter"):
        answer_fn_for(base, tiny_tokenizer, template, generation, adapter=True)


def test_base_and_tuned_from_a_saved_adapter(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=2, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 5.0)
    peft_model.save_pretrained(tmp_path / "run" / "adapter")
    generation = GenerationConfig(max_new_tokens=5)
    model_config = ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="float32")

    rows = compare_base_and_tuned(model_config, tmp_path / "run" / "adapter", ["hi", "why?"], tmp_path / "out",
                                  generation)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected = generate(base, tiny_tokenizer, resolve_template(None, tiny_tokenizer),
                        [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "why?"}]], generation)
    assert [row["answers"]["base"] for row in rows] == expected
    assert read_comparison(tmp_path / "out" / "answers.jsonl") == rows
