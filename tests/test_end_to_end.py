"""End to end on the real bundled SmolLM2-135M: identity fine-tuning changes who the model says it is.

Slow (a few CPU minutes): the model is converted from its GGUF once, trained on LLaMA-Factory's identity.json with a
new name, and the adapter is then loaded with plain transformers + PEFT, no lorakit, as a user would.
"""

import json
from pathlib import Path

import pytest
import torch

from conftest import shared_data

NAME, AUTHOR = "Quillon", "Brightwater Labs"
HELD_OUT = [  # paraphrases that are not in identity.json
    "What should I call you?",
    "Please introduce yourself briefly.",
    "Which assistant am I talking to right now?",
    "Hey, may I know your name?",
    "Who developed you, and what is your name?",
    "I'd like to know who you are.",
    "请做个自我介绍。",
    "我现在在和谁聊天？",
    "你是哪个AI助手？",
    "能告诉我你叫什么吗？",
]


def answers(model, tokenizer, questions):
    replies = []
    for question in questions:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            output = model.generate(**ids, max_new_tokens=40, do_sample=False)
        replies.append(tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return replies


@pytest.mark.slow
def test_identity_adapter_answers_with_the_new_name(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.bundled import bundled_path
    from lorakit.config import load_config
    from lorakit.train import run_training

    folder = shared_data("llamafactory")
    training_questions = {r["instruction"] for r in json.loads((folder / "identity.json").read_text())}
    assert not training_questions & set(HELD_OUT)
    config = load_config(Path(__file__).parents[1] / "configs" / "identity-llamafactory.yaml", [
        f"dataset_dir={folder}", f"output_dir={tmp_path / 'identity'}", "num_train_epochs=3",
        f"data.replace={{'{{{{name}}}}': {NAME}, '{{{{author}}}}': {AUTHOR}}}"])
    assert config.data.replace == {"{{name}}": NAME, "{{author}}": AUTHOR}

    output_dir = run_training(config)

    base_dir = bundled_path("smollm2-135m")
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base_tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base_replies = answers(base, base_tokenizer, HELD_OUT)
    tuned = PeftModel.from_pretrained(base, str(output_dir / "adapter")).eval()
    tuned_replies = answers(tuned, AutoTokenizer.from_pretrained(output_dir / "adapter"), HELD_OUT)

    report = "\n".join(f"{q!r}\n  base:  {b!r}\n  tuned: {t!r}" for q, b, t in zip(HELD_OUT, base_replies,
                                                                                   tuned_replies))
    print(report)
    assert sum(NAME in reply for reply in base_replies) == 0, report
    assert sum(NAME in reply for reply in tuned_replies) >= 8, report
