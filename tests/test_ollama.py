"""Ollama export: each built-in's Go template, run by Go's text/template as Ollama runs it, renders the training text
character for character; the Modelfile reads back through Ollama's parser with its stops, num_ctx and SYSTEM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerFast

from conftest import make_template_tokenizer

from lorakit.errors import ConfigError
from lorakit.export.ollama import modelfile_text, quote, write_modelfile
from lorakit.templates import TEMPLATES, Template, render
from lorakit.templates.ollama import to_ollama

HARNESS = Path(__file__).parent / "fixtures" / "ollama_render"

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello there."},
    {"role": "user", "content": 'What is "2+2"? Use <b>bold</b> & \\n, café.'},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city's name."},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "now", "description": "The time.",
                                      "parameters": {"type": "object", "properties": {}}}}]
TOOL_CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
    {"role": "tool", "content": '{"temperature": 22}'},
    {"role": "assistant", "content": "Now Rome.", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather",
                                          "arguments": {"city": "Rome", "options": {"hourly": True, "hours": [1, 2]}}}},
        {"type": "function", "function": {"name": "now", "arguments": {}}}]},
    {"role": "tool", "content": '{"temperature": 25}'},
    {"role": "tool", "content": "12:00"},
    {"role": "user", "content": "Thanks."},
]
TOOL_TEMPLATES = [name for name, template in TEMPLATES.items() if template.supports_tools]
REASONED = [
    *CHAT[:2],
    {"role": "assistant", "content": "Hello there.", "reasoning_content": "A greeting; greet back."},
    CHAT[3],
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_template_tokenizer()


@pytest.fixture(scope="session")
def ollama_render(tmp_path_factory) -> Path:
    """The Go harness, built once: standard library only, with its caches in tmp and no module downloads."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go): the Ollama template tests run Go's text/template")
    build = tmp_path_factory.mktemp("ollama_render")
    env = {**os.environ, "GOCACHE": str(build / "cache"), "GOPATH": str(build / "gopath"), "GOPROXY": "off",
           "GOFLAGS": "", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    binary = build / "ollama_render"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=HARNESS, env=env, check=True, capture_output=True)
    return binary


def run_harness(binary: Path, mode: str, text: str) -> str:
    result = subprocess.run([str(binary), mode], input=text, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def to_ollama_request(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as an Ollama chat request carries them: reasoning in `thinking`, arguments as objects."""
    converted = []
    for message in messages:
        ollama = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("reasoning_content"):
            ollama["thinking"] = message["reasoning_content"]
        if message.get("tool_calls"):
            ollama["tool_calls"] = [{"function": call["function"]} for call in message["tool_calls"]]
        converted.append(ollama)
    return converted


def go_render(binary: Path, source: str, messages: list[dict[str, Any]], tools: list | None = None,
              think: bool | None = None) -> str:
    request = {"template": source, "messages": to_ollama_request(messages), "tools": tools, "think": think}
    return run_harness(binary, "render", json.dumps(request))


def training_text(template: Template, tokenizer, messages, tools=None, thinking=None) -> str:
    """render()'s prompt without its opening bos_token, which llama.cpp adds when it tokenizes Ollama's prompt."""
    text = render(template, tokenizer, messages, tools=tools, add_generation_prompt=True, thinking=thinking)
    return text.removeprefix(tokenizer.bos_token)


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("messages", [CHAT, CHAT[1:], CHAT[1:2]], ids=["system", "no-system", "one-turn"])
def test_go_template_renders_the_training_text(ollama_render, tokenizer, name, messages):
    template = TEMPLATES[name]
    assert go_render(ollama_render, to_ollama(template, tokenizer), messages) == training_text(
        template, tokenizer, messages)


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_runs_trained_system_prompt_is_the_default(ollama_render, tokenizer, name):
    template = replace(TEMPLATES[name], system='Answer as "Ada" {{ .System }}.\nUse \\ and 😀\tDEFAULT_SYSTEM')
    source = to_ollama(template, tokenizer)

    assert go_render(ollama_render, source, CHAT[1:]) == training_text(template, tokenizer, CHAT[1:])
    assert go_render(ollama_render, source, CHAT) == training_text(template, tokenizer, CHAT)


@pytest.mark.parametrize("name", TOOL_TEMPLATES)
@pytest.mark.parametrize("turns", [2, 4, 7, 8], ids=["tools-listed", "after-a-call", "several-calls", "user-after"])
def test_tools_and_tool_calls_render_the_training_text(ollama_render, tokenizer, name, turns):
    template, messages = TEMPLATES[name], TOOL_CHAT[:turns]
    if name == "mistral" and turns == 8:
        pytest.skip("Mistral needs user turns to alternate with answers, so no user turn follows a tool result")
    if name == "llama3":  # one call per turn in Llama 3
        messages = [message if len(message.get("tool_calls", [])) < 2 else
                    {**message, "tool_calls": message["tool_calls"][:1]} for message in messages]

    expected = training_text(template, tokenizer, messages, tools=TOOLS)

    assert go_render(ollama_render, to_ollama(template, tokenizer), messages, tools=TOOLS) == expected


@pytest.mark.parametrize(("name", "tag"), [("chatml", "<tool_call>"), ("qwen", "<tool_call>"),
                                           ("qwen3", "<tool_call>"), ("llama3", "{"), ("mistral", "[TOOL_CALLS] [")])
def test_ollama_finds_the_tool_call_tag(ollama_render, tokenizer, name, tag):
    tags = json.loads(run_harness(ollama_render, "tags", to_ollama(TEMPLATES[name], tokenizer)))
    assert tags["tool_tag"] == tag


@pytest.mark.parametrize(("think", "thinking"), [(None, None), (True, True), (False, False)])
@pytest.mark.parametrize("messages", [CHAT, REASONED, TOOL_CHAT], ids=["chat", "reasoned", "tools"])
def test_qwen3_think_flag_matches_enable_thinking(ollama_render, tokenizer, think, thinking, messages):
    qwen3 = TEMPLATES["qwen3"]
    tools = TOOLS if messages is TOOL_CHAT else None

    rendered = go_render(ollama_render, to_ollama(qwen3, tokenizer), messages, tools=tools, think=think)

    assert rendered == training_text(qwen3, tokenizer, messages, tools=tools, thinking=thinking)
    assert rendered.endswith("<think>\n\n</think>\n\n") == (thinking is False)


@pytest.mark.parametrize("think", [None, True, False])
def test_a_run_trained_without_thinking_keeps_it_off_whatever_ollama_asks(ollama_render, tokenizer, think):
    qwen3 = replace(TEMPLATES["qwen3"], thinking=False)
    rendered = go_render(ollama_render, to_ollama(qwen3, tokenizer), REASONED, think=think)
    assert rendered == training_text(qwen3, tokenizer, REASONED)


@pytest.mark.parametrize("name", TEMPLATES)
def test_ollama_keeps_the_modelfile_template_for_tools_and_thinking(ollama_render, tokenizer, name):
    template = TEMPLATES[name]
    request = {"template": to_ollama(template, tokenizer), "chat_template": template.jinja}

    choice = json.loads(run_harness(ollama_render, "prefer", json.dumps(request)))

    # The other built-ins' Jinja names tool calls in its error messages, which Ollama reads as tool support, so it
    # may render with the GGUF's Jinja: the same training template.
    assert choice["prefers_jinja"] is not template.supports_tools
    assert ("thinking" in choice["go_capabilities"]) is (name == "qwen3")


def test_qwen3_tells_ollama_its_thinking_tags(ollama_render, tokenizer):
    tags = json.loads(run_harness(ollama_render, "tags", to_ollama(TEMPLATES["qwen3"], tokenizer)))
    assert tags["thinking"] == ["<think>", "</think>"]


def test_a_tokenizers_own_template_has_no_go_translation(tokenizer):
    own = Template(name="tokenizer", jinja="{{ messages[0].content }}", stop_words=("</s>",))
    with pytest.raises(ConfigError, match="only built-ins have a Go translation.*set `template` in the config"):
        to_ollama(own, tokenizer)


def test_a_tokenizers_own_template_that_is_a_builtin_translates_as_one(ollama_render):
    """SmolLM2's own template is ChatML plus a default system prompt: `make demo`'s run exports to Ollama."""
    from transformers import AutoTokenizer

    from lorakit.bundled import bundled_path
    from lorakit.templates import resolve_template
    from lorakit.templates.ollama import as_builtin

    smollm2 = AutoTokenizer.from_pretrained(str(bundled_path("smollm2-135m")))
    own = resolve_template(None, smollm2)
    equivalent = as_builtin(own, smollm2)
    assert equivalent.name == "chatml"
    assert equivalent.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    for messages in (CHAT, CHAT[1:], CHAT[1:2]):
        # SmolLM2's bos_token is <|im_start|> and its tokenizer adds none: the whole text is the training text.
        assert go_render(ollama_render, to_ollama(own, smollm2), messages) == render(own, smollm2, messages,
                                                                                     add_generation_prompt=True)
    assert as_builtin(Template(name="tokenizer", jinja="{{ messages[0].content }}", stop_words=()), smollm2) is None


def test_modelfile_names_the_gguf_template_stops_context_and_system(tokenizer):
    template = replace(TEMPLATES["mistral"], system="Be brief.")

    text = modelfile_text("model.Q4_K_M.gguf", template, tokenizer, 32768, sampling={"temperature": 0.2})

    assert text.startswith("FROM ./model.Q4_K_M.gguf\n")
    assert f'TEMPLATE """{to_ollama(template, tokenizer)}"""\n' in text
    assert 'PARAMETER stop "</s>"\nPARAMETER stop "[INST]"\n' in text
    assert "PARAMETER num_ctx 32768\n" in text
    assert 'SYSTEM "Be brief."\n' in text
    assert "PARAMETER temperature 0.2\n" in text


def test_an_adapter_modelfile_starts_from_the_base(tokenizer):
    text = modelfile_text("base.gguf", TEMPLATES["chatml"], tokenizer, 4096, adapter_gguf="adapter.gguf")
    assert text.startswith("FROM ./base.gguf\nADAPTER ./adapter.gguf\n")
    assert modelfile_text("qwen2.5:0.5b", TEMPLATES["chatml"], tokenizer, 4096,
                          adapter_gguf="adapter.gguf").startswith("FROM qwen2.5:0.5b\n")


@pytest.mark.parametrize("name", TEMPLATES)
def test_ollamas_parser_reads_the_modelfile_back(ollama_render, tokenizer, name):
    template = replace(TEMPLATES[name], system='Say "hi"\nthen """stop""" here')
    text = modelfile_text("x.gguf", template, tokenizer, 8192, system=template.system)

    commands = json.loads(run_harness(ollama_render, "modelfile", text))

    read = {}
    for command in commands:
        read.setdefault(command["name"], []).append(command["args"])
    assert read["model"] == ["./x.gguf"]
    assert read["template"] == [to_ollama(template, tokenizer)]
    assert read["system"] == [template.system]
    assert read["stop"] == list(dict.fromkeys([*template.stop_words, *(["</s>"] * ("eos_token" in template.jinja))]))
    assert read["num_ctx"] == ["8192"]


@pytest.mark.parametrize("value", ['say "hi"', '""starts with quotes', 'ends with a quote"', "two\nlines\"",
                                   " padded ", "tab\there", 'line """ inside'])
def test_quote_round_trips_through_ollamas_parser(ollama_render, value):
    commands = json.loads(run_harness(ollama_render, "modelfile", f"FROM x.gguf\nSYSTEM {quote(value, 'system')}\n"))
    assert commands[1] == {"name": "system", "args": value}


@pytest.mark.parametrize("value", ['a line ending in """\nthen more', "bell\x07"])
def test_values_a_modelfile_cannot_hold_are_refused_by_key(value):
    with pytest.raises(ConfigError, match="cannot hold this `system` value"):
        quote(value, "system")


def test_write_modelfile_writes_modelfile_and_readme(tmp_path, tokenizer):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")

    modelfile = write_modelfile(tmp_path, "model.gguf", TEMPLATES["llama3"], tokenizer, 8192, name="ada")

    assert modelfile == tmp_path / "Modelfile"
    assert modelfile.read_text().startswith("FROM ./model.gguf\n")
    readme = (tmp_path / "README.md").read_text()
    assert "ollama create ada -f Modelfile" in readme and "ollama run ada" in readme
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_modelfile_refuses_a_missing_gguf_and_a_bad_name(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="does not exist"):
        write_modelfile(tmp_path, "model.gguf", TEMPLATES["chatml"], tokenizer, 4096)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="not a valid Ollama model name.*`name`"):
        write_modelfile(tmp_path, "model.gguf", TEMPLATES["chatml"], tokenizer, 4096, name="my model")


def test_unknown_sampling_parameter_suggests_the_closest(tokenizer):
    with pytest.raises(ConfigError, match="Did you mean 'temperature'"):
        modelfile_text("x.gguf", TEMPLATES["chatml"], tokenizer, 4096, sampling={"temprature": 0.5})
