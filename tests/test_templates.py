"""Chat templates: each built-in pinned to its family's format, spans of trained text, tools, thinking, resolving."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from conftest import make_template_tokenizer

from lorakit.errors import ConfigError, DataError, LorakitError
from lorakit.templates import TEMPLATES, Template, install_template, render, render_supervised, resolve_template

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]

# Written by hand from each family's published format, with this file's tokenizer: bos_token "<s>", eos_token "</s>".
# (llama3 and gemma open with bos_token as their official templates do: "<|begin_of_text|>" and "<bos>" there.)
EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
              "<|im_start|>assistant\nHello there.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
              "<|im_start|>assistant\nIt is 4.<|im_end|>\n",
    "qwen": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello there.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\nIt is 4.<|im_end|>\n",
    "qwen3": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
             "<|im_start|>assistant\nHello there.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
             "<|im_start|>assistant\nIt is 4.<|im_end|>\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello there. </s>"
              "<s>[INST] What is 2+2? [/INST] It is 4. </s>",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello there.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 4.<|eot_id|>",
    "mistral": "<s>[INST] Be brief.\n\nHi![/INST] Hello there.</s>[INST] What is 2+2?[/INST] It is 4.</s>",
    "gemma": "<s><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello there.<end_of_turn>\n"
             "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\nIt is 4.<end_of_turn>\n",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello there.<|end|>\n"
            "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\nIt is 4.<|end|>\n",
    "vicuna": "Be brief. USER: Hi! ASSISTANT: Hello there.</s>USER: What is 2+2? ASSISTANT: It is 4.</s>",
    "alpaca": "Be brief.\n\n### Instruction:\nHi!\n\n### Response:\nHello there.</s>\n\n"
              "### Instruction:\nWhat is 2+2?\n\n### Response:\nIt is 4.</s>\n\n",
    "default": "System: Be brief.\nHuman: Hi!\nAssistant: Hello there.</s>\n"
               "Human: What is 2+2?\nAssistant: It is 4.</s>\n",
}

# What the model learns to write for a reply: the text after the generation prompt, through the end-of-turn marker.
REPLY = {
    "chatml": "{}<|im_end|>", "qwen": "{}<|im_end|>", "qwen3": "{}<|im_end|>", "llama2": " {} </s>",
    "llama3": "{}<|eot_id|>", "mistral": " {}</s>", "gemma": "{}<end_of_turn>", "phi3": "{}<|end|>",
    "vicuna": " {}</s>", "alpaca": "{}</s>", "default": " {}</s>",
}

# How the text ends when the model is asked for a reply to CHAT[:2].
PROMPT_END = {
    "chatml": "Hi!<|im_end|>\n<|im_start|>assistant\n",
    "qwen": "Hi!<|im_end|>\n<|im_start|>assistant\n",
    "qwen3": "Hi!<|im_end|>\n<|im_start|>assistant\n",
    "llama2": "Hi! [/INST]",
    "llama3": "Hi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "Hi![/INST]",
    "gemma": "Hi!<end_of_turn>\n<start_of_turn>model\n",
    "phi3": "Hi!<|end|>\n<|assistant|>\n",
    "vicuna": "USER: Hi! ASSISTANT:",
    "alpaca": "### Instruction:\nHi!\n\n### Response:\n",
    "default": "Human: Hi!\nAssistant:",
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": '{"temperature": 22}'},
    {"role": "assistant", "content": "It is 22 degrees."},
]
TOOL_TEMPLATES = ("chatml", "qwen", "qwen3", "llama3", "mistral")
TOOLS_JSON = ('{"type": "function", "function": {"name": "get_weather", "description": "Get the weather for a city.", '
              '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}')
TOOLS_JSON_INDENTED = """{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {
                    "type": "string"
                }
            },
            "required": [
                "city"
            ]
        }
    }
}"""
HERMES_TOOLS_SYSTEM = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" + TOOLS_JSON +
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call><|im_end|>\n")
EXPECTED_TOOLS = {
    "qwen": "<|im_start|>system\nBe brief." + HERMES_TOOLS_SYSTEM +
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
            "</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n{\"temperature\": 22}\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\nIt is 22 degrees.<|im_end|>\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
              "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON "
              "for a function call with its proper arguments that best answers the given prompt.\n\n"
              "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its "
              "value}.Do not use variables.\n\n" + TOOLS_JSON_INDENTED + "\n\nWeather in Paris?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n"
              "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
              "<|start_header_id|>ipython<|end_header_id|>\n\n{\"temperature\": 22}<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 22 degrees.<|eot_id|>",
    "mistral": "<s>[AVAILABLE_TOOLS] [" + TOOLS_JSON + "][/AVAILABLE_TOOLS][INST] Be brief.\n\nWeather in Paris?[/INST]"
               "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]</s>"
               "[TOOL_RESULTS] {\"content\": {\"temperature\": 22}}[/TOOL_RESULTS] It is 22 degrees.</s>",
}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_template_tokenizer()


def test_every_builtin_is_pinned():
    assert set(TEMPLATES) == set(EXPECTED) == set(REPLY) == set(PROMPT_END)
    assert {name for name, template in TEMPLATES.items() if template.supports_tools} == set(TOOL_TEMPLATES)


@pytest.mark.parametrize("name", EXPECTED)
def test_render_matches_the_official_format(tokenizer, name):
    assert render(TEMPLATES[name], tokenizer, CHAT) == EXPECTED[name]


@pytest.mark.parametrize("name", TEMPLATES)
def test_spans_hold_each_reply_and_its_end_marker_only(tokenizer, name):
    text, spans = render_supervised(TEMPLATES[name], tokenizer, CHAT)

    replies = [message["content"] for message in CHAT if message["role"] == "assistant"]
    assert text == render(TEMPLATES[name], tokenizer, CHAT)
    assert [text[start:end] for start, end in spans] == [REPLY[name].format(reply) for reply in replies]
    outside = text[:spans[0][0]] + text[spans[0][1]:spans[1][0]] + text[spans[1][1]:]
    assert not any(reply in outside for reply in replies)


@pytest.mark.parametrize("name", TEMPLATES)
def test_generation_prompt_ends_where_the_reply_starts(tokenizer, name):
    prompt = render(TEMPLATES[name], tokenizer, CHAT[:2], add_generation_prompt=True)
    assert prompt.endswith(PROMPT_END[name])


@pytest.mark.parametrize("name", [name for name, template in TEMPLATES.items() if template.default_system])
def test_default_system_is_rendered_without_a_system_message(tokenizer, name):
    assert TEMPLATES[name].default_system in render(TEMPLATES[name], tokenizer, CHAT[1:3])


def test_qwen_inserts_its_default_system_prompt(tokenizer):
    expected = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")
    assert render(TEMPLATES["qwen"], tokenizer, CHAT[1:2], add_generation_prompt=True) == expected
    assert render(TEMPLATES["chatml"], tokenizer, CHAT[1:2]) == "<|im_start|>user\nHi!<|im_end|>\n"


def test_qwen3_thinking_off_adds_an_empty_think_block_to_prompt_and_replies(tokenizer):
    qwen3 = TEMPLATES["qwen3"]

    prompt = render(qwen3, tokenizer, CHAT[:2], add_generation_prompt=True, thinking=False)
    text, spans = render_supervised(qwen3, tokenizer, CHAT, thinking=False)

    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\nHello there.<|im_end|>\n" in text
    assert [text[start:end] for start, end in spans] == ["Hello there.<|im_end|>", "It is 4.<|im_end|>"]


def test_qwen3_thinking_on_leaves_reasoning_to_the_model(tokenizer):
    qwen3 = TEMPLATES["qwen3"]
    reasoned = CHAT[:4] + [{"role": "assistant", "content": "<think>\n2 and 2 make 4.\n</think>\n\nIt is 4."}]

    prompt = render(qwen3, tokenizer, CHAT[:2], add_generation_prompt=True, thinking=True)
    text, spans = render_supervised(qwen3, tokenizer, reasoned, thinking=True)

    assert prompt.endswith("<|im_start|>assistant\n")
    assert render(qwen3, tokenizer, CHAT, thinking=True) == render(qwen3, tokenizer, CHAT) == EXPECTED["qwen3"]
    assert text[spans[1][0]:spans[1][1]] == "<think>\n2 and 2 make 4.\n</think>\n\nIt is 4.<|im_end|>"


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
def test_tool_calls_and_results_render_and_train_on_calls(tokenizer, name):
    text, spans = render_supervised(TEMPLATES[name], tokenizer, TOOL_CHAT, tools=TOOLS)

    if name in EXPECTED_TOOLS:
        assert text == EXPECTED_TOOLS[name]
    call, answer = (text[start:end] for start, end in spans)
    assert '"get_weather"' in call and '"Paris"' in call
    assert answer == REPLY[name].format("It is 22 degrees.")
    assert "get_weather" in text[:spans[0][0]]  # the tool list is in the prompt


def test_chatml_tools_without_system_message_has_no_default(tokenizer):
    text = render(TEMPLATES["chatml"], tokenizer, TOOL_CHAT[1:2], tools=TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools\n\n")


def test_tools_with_a_template_without_tool_support_name_the_ones_with_it(tokenizer):
    with pytest.raises(DataError, match="Template 'gemma' cannot show tools.*chatml, qwen, qwen3, llama3, mistral"):
        render(TEMPLATES["gemma"], tokenizer, TOOL_CHAT, tools=TOOLS)


def test_tool_messages_in_gemma_raise_a_data_error(tokenizer):
    with pytest.raises(DataError, match="Template 'gemma' cannot render this conversation: .*no tool calls"):
        render(TEMPLATES["gemma"], tokenizer, TOOL_CHAT)


@pytest.mark.parametrize("name", ["llama2", "mistral", "gemma"])
def test_non_alternating_turns_raise_where_the_format_needs_alternation(tokenizer, name):
    twice = [{"role": "user", "content": "Hi!"}, {"role": "user", "content": "Anyone?"}]
    with pytest.raises(DataError, match="alternate"):
        render(TEMPLATES[name], tokenizer, twice)


def test_auto_uses_the_tokenizers_own_template():
    own = "{% for message in messages %}{{ message['content'] + eos_token }}{% endfor %}"
    tokenizer = make_template_tokenizer()
    tokenizer.chat_template = own

    template = resolve_template("auto", tokenizer)

    assert template == Template(name="tokenizer", jinja=own, stop_words=("</s>",), supports_tools=False)
    assert resolve_template(None, tokenizer) == template


def test_auto_without_a_tokenizer_template_falls_back_to_default(tokenizer):
    with pytest.warns(UserWarning, match="Set `template`"):
        assert resolve_template("auto", tokenizer) is TEMPLATES["default"]


def test_unknown_template_name_suggests_the_closest(tokenizer):
    with pytest.raises(ConfigError, match="Unknown template 'chatlm'. Did you mean 'chatml'?.*`template`"):
        resolve_template("chatlm", tokenizer)


def test_install_template_makes_the_saved_tokenizer_render_the_same(tmp_path):
    tokenizer = make_template_tokenizer()

    install_template(tokenizer, TEMPLATES["llama3"])

    tokenizer.save_pretrained(tmp_path)
    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path)

    assert tokenizer.chat_template == TEMPLATES["llama3"].jinja
    assert reloaded.apply_chat_template(CHAT, tokenize=False) == EXPECTED["llama3"]


# Like Phi-3's own template: eos_token after the last turn only, so a reply's text changes once a turn follows.
TRAILING_EOS = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
# A generation prompt ending in a space that the reply's own text does not have.
LOOSE_PROMPT = ("{% for message in messages %}{{ message['role'] + ':' + message['content'] + '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


@pytest.mark.parametrize(("jinja", "problem"), [(TRAILING_EOS, "changes once later messages follow"),
                                                (LOOSE_PROMPT, "generation prompt is not how the text")])
def test_a_template_without_the_prefix_property_is_refused(tokenizer, jinja, problem):
    template = Template(name="tokenizer", jinja=jinja, stop_words=("</s>",))
    expected = f"Template 'tokenizer' cannot mark the assistant reply at message 2: .*{problem}"
    with pytest.raises(LorakitError, match=expected):
        render_supervised(template, tokenizer, CHAT)


def test_a_conversation_opening_with_the_assistant_has_nothing_to_answer(tokenizer):
    with pytest.raises(DataError, match="starts with an assistant message"):
        render_supervised(TEMPLATES["chatml"], tokenizer, CHAT[2:])
