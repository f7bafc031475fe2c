"""Generation: batched and streamed replies agree, stop strings end a reply without leaking into it, and
base + adapter through lorakit answers exactly as plain transformers + PEFT does."""

import json
from pathlib import Path

import pytest
import torch

from lorakit.config import DataConfig, LoraConfig, ModelConfig, TrainConfig, save_config
from lorakit.errors import ConfigError
from lorakit.infer import GenerationConfig, generate, inference_model, load_for_inference, stream_generate
from lorakit.runs import adapter_base_model
from lorakit.templates import TEMPLATES, install_template, resolve_template

from conftest import make_model, make_tokenizer

QUESTIONS = [[{"role": "user", "content": "hello"}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a longer question?"}],
             [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
              {"role": "user", "content": "and then?"}]]


def lively_model(tokenizer, seed: int = 1):
    """A tiny llama whose weights are large enough for its replies to depend on the prompt."""
    model = make_model("llama", len(tokenizer))
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def save_lively_model(folder: Path) -> Path:
    tokenizer = make_tokenizer()
    lively_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_adapter(model_dir: Path, output_dir: Path, template: str = "chatml") -> Path:
    """A lorakit output directory (adapter/, config.yaml) from a few steps on `model_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.train import prepare_data, train

    data = output_dir.parent / "train.json"
    data.write_text(json.dumps([{"instruction": f"say {w}", "output": f"{w} {w}."} for w in
                                ("hi", "yes", "no", "cat", "dog", "sun", "tea", "red")]))
    config = TrainConfig(model=ModelConfig(name=str(model_dir), dtype="float32", device="cpu"),
                         data=DataConfig(paths=(str(data),), template=template, max_seq_len=64),
                         lora=LoraConfig(rank=2, alpha=4, dropout=0.0), output_dir=output_dir, max_steps=3,
                         batch_size=4, learning_rate=5e-2, logging_steps=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return train(model, tokenizer, prepare_data(config, tokenizer), config)


def random_adapter_run(model_dir: Path, output_dir: Path, template: str = "chatml", seed: int = 0) -> Path:
    """A lorakit-shaped output directory without training: a random non-zero LoRA adapter, the tokenizer carrying
    the template, config.yaml naming the base model."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    get_peft_model(base, PeftLoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)).save_pretrained(
        output_dir / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    install_template(tokenizer, TEMPLATES[template])
    tokenizer.save_pretrained(output_dir / "adapter")
    save_config(TrainConfig(model=ModelConfig(name=str(model_dir)), data=DataConfig(template=template)),
                output_dir / "config.yaml")
    return output_dir


@pytest.fixture
def lively():
    tokenizer = make_tokenizer()
    return lively_model(tokenizer), tokenizer, resolve_template(None, tokenizer)


def test_batched_generation_equals_one_at_a_time(lively):
    model, tokenizer, template = lively
    config = GenerationConfig(max_new_tokens=12, batch_size=3)
    batched = generate(model, tokenizer, template, QUESTIONS, config)
    alone = [generate(model, tokenizer, template, [q], config)[0] for q in QUESTIONS]
    assert batched == alone
    assert len(set(batched)) > 1, "the replies should depend on the prompt"


def test_streaming_yields_the_greedy_reply_piece_by_piece(lively):
    model, tokenizer, template = lively
    config = GenerationConfig(max_new_tokens=16)
    expected = generate(model, tokenizer, template, QUESTIONS, config)
    for question, reply in zip(QUESTIONS, expected):
        pieces = list(stream_generate(model, tokenizer, template, question, config))
        assert "".join(pieces) == reply
        assert len(pieces) > 1


def test_stop_strings_end_the_reply_and_never_leak(lively):
    model, tokenizer, template = lively
    full = generate(model, tokenizer, template, QUESTIONS, GenerationConfig(max_new_tokens=16))
    stop = full[1][4:6]
    assert stop.strip() and stop in full[1]
    config = GenerationConfig(max_new_tokens=16, stop=(stop, "never there"))

    cut = generate(model, tokenizer, template, QUESTIONS, config)
    streamed = "".join(stream_generate(model, tokenizer, template, QUESTIONS[1], config))

    assert cut[1] == full[1][:full[1].index(stop)].strip() == streamed
    assert all(stop not in reply for reply in cut)
    assert [c for c, f in zip(cut, full) if stop not in f] == [f for f in full if stop not in f]


def test_stop_string_ends_generation_early(lively, monkeypatch):
    model, tokenizer, template = lively
    full = generate(model, tokenizer, template, QUESTIONS[:1], GenerationConfig(max_new_tokens=30))[0]
    forwards = []  # one per token: the first reads the prompt, each later one decodes a step
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        generate(model, tokenizer, template, QUESTIONS[:1], GenerationConfig(max_new_tokens=30, stop=(full[2:4],)))
    finally:
        hook.remove()
    assert len(forwards) < 10


def test_sampling_is_reproducible_with_a_seed(lively):
    model, tokenizer, template = lively
    config = GenerationConfig(max_new_tokens=12, temperature=1.5, top_p=0.9, top_k=20, seed=7)
    first = generate(model, tokenizer, template, QUESTIONS, config)
    assert generate(model, tokenizer, template, QUESTIONS, config) == first
    alone = generate(model, tokenizer, template, QUESTIONS[:1], config)[0]
    assert "".join(stream_generate(model, tokenizer, template, QUESTIONS[0], config)) == alone


def test_closing_the_stream_stops_generation(lively):
    model, tokenizer, template = lively
    steps = []
    hook = model.register_forward_hook(lambda *_: steps.append(1))
    try:
        generate(model, tokenizer, template, QUESTIONS[:1], GenerationConfig(max_new_tokens=200))
        assert len(steps) == 200  # left alone, this reply runs to max_new_tokens
        steps.clear()
        stream = stream_generate(model, tokenizer, template, QUESTIONS[0], GenerationConfig(max_new_tokens=200))
        next(stream)
        stream.close()  # joins the generation thread
    finally:
        hook.remove()
    assert 1 <= len(steps) < 100, len(steps)


def test_left_padding_leaves_the_shared_tokenizer_alone():
    from lorakit.infer.generate import generate_replies

    tokenizer = make_tokenizer()
    model = lively_model(tokenizer)
    side, masks = tokenizer.padding_side, []

    def recording(module, args, kwargs):
        masks.append(kwargs["attention_mask"].tolist())

    hook = model.register_forward_pre_hook(recording, with_kwargs=True)
    try:
        replies = generate_replies(model, tokenizer, [[5, 6], [5, 6, 7, 8]], GenerationConfig(max_new_tokens=2))
    finally:
        hook.remove()
    assert tokenizer.padding_side == side
    assert masks[0] == [[0, 0, 1, 1], [1, 1, 1, 1]] and len(replies) == 2


def test_stop_string_tails_are_held_back_while_streaming():
    from lorakit.infer.generate import held_back

    assert held_back("hello <|e", ("<|end|>",)) == 3
    assert held_back("caf\ufffd", ("###",)) == 1
    assert held_back("done.", ("###",)) == 0


def test_generation_config_errors_name_every_problem():
    with pytest.raises(ConfigError, match=r"max_new_tokens must be a positive integer, got 0; top_p must be in "
                                          r"\(0, 1\], got 1.5; stop strings must not be empty\."):
        GenerationConfig(max_new_tokens=0, top_p=1.5, stop=("",))
    assert GenerationConfig(stop="###").stop == ("###",)


def plain_peft_replies(model_dir: Path, adapter_dir: Path, tokenizer_dir: Path, max_new_tokens: int,
                       questions: list[list[dict]] = QUESTIONS) -> list[str]:
    """What a user gets without lorakit: transformers + PEFT and the saved chat template."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    replies = []
    for messages in questions:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        with torch.inference_mode():
            output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        replies.append(tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return replies


def test_trained_adapter_answers_as_with_plain_peft(tmp_path):
    model_dir = save_lively_model(tmp_path / "base")
    output_dir = train_adapter(model_dir, tmp_path / "run")
    adapter_dir = output_dir / "adapter"

    model_config, found = inference_model(None, output_dir, device="cpu", dtype="float32")
    model, tokenizer, template = load_for_inference(model_config, found)
    ours = generate(model, tokenizer, template, QUESTIONS, GenerationConfig(max_new_tokens=20, batch_size=2))

    assert found == adapter_dir and model_config.name == str(model_dir) == adapter_base_model(adapter_dir)
    assert template == TEMPLATES["chatml"]  # the training template, stop words included
    assert ours == plain_peft_replies(model_dir, adapter_dir, adapter_dir, 20)
    base_only = generate(load_for_inference(model_config)[0], tokenizer, template, QUESTIONS,
                         GenerationConfig(max_new_tokens=20))
    assert ours != base_only, "the adapter should change the replies"


def test_random_lora_adapter_answers_as_with_plain_peft(tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model_dir = save_lively_model(tmp_path / "base")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                PeftLoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")  # no tokenizer inside: the base model's is used

    model, tokenizer, template = load_for_inference(ModelConfig(name=str(model_dir), dtype="float32", device="cpu"),
                                                    tmp_path / "adapter")
    ours = generate(model, tokenizer, template, QUESTIONS, GenerationConfig(max_new_tokens=20))

    assert ours == plain_peft_replies(model_dir, tmp_path / "adapter", model_dir, 20)
    assert adapter_base_model(tmp_path / "adapter") == str(model_dir)  # from adapter_config.json: no config.yaml


def test_adapter_without_known_base_asks_for_model(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="Cannot tell which base model .* Name the base model in model.name"):
        inference_model(None, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        inference_model(None, tmp_path / "missing")


@pytest.mark.slow
def test_smollm2_with_random_lora_answers_as_with_plain_peft(tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from lorakit.bundled import bundled_path
    from lorakit.model import load_model

    model_config = ModelConfig(name="smollm2-135m", dtype="float32", device="cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(load_model(model_config), PeftLoraConfig(r=8, target_modules=["q_proj", "v_proj"],
                                                                         init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")

    model, tokenizer, template = load_for_inference(model_config, tmp_path / "adapter")
    questions, settings = QUESTIONS[:2], GenerationConfig(max_new_tokens=16)
    ours = generate(model, tokenizer, template, questions, settings)
    streamed = "".join(stream_generate(model, tokenizer, template, questions[0], settings))

    base_dir = bundled_path("smollm2-135m")
    assert ours == plain_peft_replies(base_dir, tmp_path / "adapter", base_dir, 16, questions)
    assert streamed == ours[0]


def test_stop_after_text_ignores_a_stop_string_before_the_reply_starts():
    from lorakit.infer.generate import Reply

    tokenizer = make_tokenizer()
    blank_line = tokenizer.decode(tokenizer("\n\n", add_special_tokens=False)["input_ids"])  # "\n \n" here

    def ends(text: str, after_text: bool) -> bool:
        reply = Reply(tokenizer, (blank_line,), [], 100, after_text)
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            reply.add(token)
        return reply.done

    assert [ends("\n\n12", False), ends("12\n\n", False)] == [True, True]
    assert [ends("\n\n12", True), ends("12\n\n", True)] == [False, True]
