"""Chat templates for every stage: `render()` turns messages into the text a model is trained on or prompted with.

Each built-in template is a Hugging Face chat template (Jinja), so the exact text used in training is what
`install_template()` saves with the tokenizer, what inference renders and what export converts. `render_supervised()`
also returns where each assistant reply sits in that text, so the data stage can train on replies only.

Where a built-in departs from its family's official template, the constant's comment says how and why. The main
reason is the prefix property that `render_supervised()` needs: the text of a conversation must not change when
later messages are appended to it.
"""

from __future__ import annotations

import difflib
import json
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jinja2

from lorakit.errors import ConfigError, DataError, LorakitError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Template:
    """A named chat template: its Jinja source and the strings that end an assistant turn."""

    name: str
    jinja: str  # Hugging Face chat-template source
    # Literal strings that end an assistant turn (generation stop, Ollama `stop`). Templates that end turns with the
    # tokenizer's `eos_token` list the family's usual one or the next turn's opener; always stop at eos as well.
    stop_words: tuple[str, ...]
    supports_tools: bool = False
    default_system: str | None = None  # rendered by `jinja` when a conversation has no system message
    # Rendering options a run was trained with, applied by `render()` wherever the model is prompted (see runs.py):
    # `system` goes first when a conversation has no system message; `thinking` is the template's enable_thinking.
    system: str | None = None
    thinking: bool | None = None


_QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                  "Write a response that appropriately completes the request.")

# The tool prompt Qwen2.5 and Qwen3 put in the system turn (Hermes function-calling format).
_HERMES_TOOLS_PROMPT = r"""
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" }}
    {{- "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" + tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n" }}
"""

# Tool results: consecutive ones share one user turn, each wrapped in <tool_response>.
_HERMES_TOOL_RESPONSE = r"""
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- raise_exception("Unknown role '" + message.role + "': use system, user, assistant or tool.") }}
    {%- endif %}
{%- endfor %}
"""

# ChatML with Qwen2.5's tool format (Hermes). `default_system` is set by a line put in front (see
# `_with_default_system`); plain ChatML has none. String `arguments` are written as given, as Qwen3 does.
_HERMES_JINJA = r"""
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
{%- elif default_system is defined %}
    {%- set system_message = default_system %}
{%- else %}
    {%- set system_message = none %}
{%- endif %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if system_message is not none %}
        {{- system_message + '\n\n' }}
    {%- endif %}
""" + _HERMES_TOOLS_PROMPT + r"""
{%- elif system_message is not none %}
    {{- '<|im_start|>system\n' + system_message + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {#- Rendered above. #}
    {%- elif message.role in ['system', 'user'] %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' and not message.tool_calls %}
        {{- '<|im_start|>assistant\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- set call = tool_call.function if tool_call.function is defined else tool_call %}
            {{- '\n<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}
            {{- call.arguments if call.arguments is string else call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
""" + _HERMES_TOOL_RESPONSE + r"""
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Qwen3: its tool format and `enable_thinking` switch, but prefix-stable. Qwen3's own template drops reasoning from
# turns before the last user query and adds an empty think block only to the last turn, so a turn's text changes
# as the conversation grows. Here every assistant turn renders the same way wherever it sits: with thinking off,
# an empty think block (reasoning in the data is dropped, as the generation prompt has none); otherwise its
# reasoning (`reasoning_content`, or a <think> block in the content) when it has some, else nothing.
_QWEN3_JINJA = r"""
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
""" + _HERMES_TOOLS_PROMPT + r"""
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set thinking_off = enable_thinking is defined and enable_thinking is false %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {#- Rendered above. #}
    {%- elif message.role in ['system', 'user'] %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content if message.content is string else '' %}
        {%- set reasoning = none %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\n' }}
        {%- if thinking_off %}
            {{- '<think>\n\n</think>\n\n' }}
        {%- elif reasoning is not none %}
            {{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' }}
        {%- endif %}
        {{- content }}
        {%- for tool_call in message.tool_calls or [] %}
            {%- if content or not loop.first %}
                {{- '\n' }}
            {%- endif %}
            {%- set call = tool_call.function if tool_call.function is defined else tool_call %}
            {{- '<tool_call>\n{"name": "' + call.name + '", "arguments": ' }}
            {{- call.arguments if call.arguments is string else call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
""" + _HERMES_TOOL_RESPONSE + r"""
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if thinking_off %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""

# Llama 3 (Meta's template for 3.0) for chat; with tools, Llama 3.1's template with its defaults: the system turn
# gains "Environment: ipython" and the fixed date preamble, the tool list goes into the first user turn, a call is
# {"name", "parameters"} JSON and a result is an `ipython` turn. Llama 3.1 writes string tool results through
# `tojson` (quoted); here they are written as they are. A call turn's content is dropped, as in Llama 3.1.
_LLAMA3_JINJA = r"""
{{- bos_token }}
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = none %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if tools %}
    {{- '<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n' }}
    {{- 'Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n' }}
    {{- (system_message or '') + '<|eot_id|>' }}
    {%- if not loop_messages or loop_messages[0].role != 'user' %}
        {{- raise_exception("With tools, the llama3 template puts them in the first user message, "
                            "so the conversation needs a user message right after the system message.") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' }}
    {{- 'Given the following functions, please respond with a JSON for a function call '
        'with its proper arguments that best answers the given prompt.\n\n' }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- 'Do not use variables.\n\n' }}
    {%- for tool in tools %}
        {{- tool | tojson(indent=4) + '\n\n' }}
    {%- endfor %}
    {{- loop_messages[0].content | trim + '<|eot_id|>' }}
    {%- set loop_messages = loop_messages[1:] %}
{%- elif system_message is not none %}
    {{- '<|start_header_id|>system<|end_header_id|>\n\n' + system_message + '<|eot_id|>' }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role == 'assistant' and message.tool_calls %}
        {%- if message.tool_calls | length != 1 %}
            {{- raise_exception("The llama3 template allows one tool call per assistant message; "
                                "split the calls into separate assistant turns.") }}
        {%- endif %}
        {%- set call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + call.name + '", "parameters": ' }}
        {{- call.arguments if call.arguments is string else call.arguments | tojson }}
        {{- '}<|eot_id|>' }}
    {%- elif message.role in ['system', 'user', 'assistant'] %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' + message.content | trim + '<|eot_id|>' }}
    {%- elif message.role in ['tool', 'ipython'] %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' }}
        {{- message.content if message.content is string else message.content | tojson }}
        {{- '<|eot_id|>' }}
    {%- else %}
        {{- raise_exception("Unknown role '" + message.role + "': use system, user, assistant or tool.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Mistral's v3 template (Mistral-7B-Instruct-v0.3), made prefix-stable: Mistral puts the system message and
# [AVAILABLE_TOOLS] before the *last* user message, which moves them as a conversation grows; here they go with the
# first. Tool call ids (`id`, `tool_call_id`) are written when present instead of required, since lorakit's
# messages do not carry them. As in Mistral's template, a tool result's content is written as it is (not quoted) and
# a tool-call turn's content is dropped.
_MISTRAL_JINJA = r"""
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = none %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(index=0) %}
{%- for message in loop_messages %}
    {%- if not (message.role == 'tool' or message.tool_calls) %}
        {%- if (message.role == 'user') != (ns.index % 2 == 0) %}
            {{- raise_exception("The mistral template needs user and assistant messages to alternate, starting "
                                "with user, after an optional system message (tool calls and results aside).") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message.role == 'user' %}
        {%- if tools and loop.first %}
            {{- '[AVAILABLE_TOOLS] [' }}
            {%- for tool in tools %}
                {{- '{"type": "function", "function": ' + tool.function | tojson + '}' }}
                {{- ', ' if not loop.last else ']' }}
            {%- endfor %}
            {{- '[/AVAILABLE_TOOLS]' }}
        {%- endif %}
        {%- if loop.first and system_message is not none %}
            {{- '[INST] ' + system_message + '\n\n' + message.content + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message.content + '[/INST]' }}
        {%- endif %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '[TOOL_CALLS] [' }}
        {%- for tool_call in message.tool_calls %}
            {%- set call = tool_call.function | tojson %}
            {%- if tool_call.id is defined %}
                {{- call[:-1] + ', "id": "' + tool_call.id + '"}' }}
            {%- else %}
                {{- call }}
            {%- endif %}
            {{- ', ' if not loop.last else ']' + eos_token }}
        {%- endfor %}
    {%- elif message.role == 'assistant' %}
        {{- ' ' + message.content | trim + eos_token }}
    {%- elif message.role == 'tool' %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content | string }}
        {%- if message.tool_call_id is defined %}
            {{- ', "call_id": "' + message.tool_call_id + '"' }}
        {%- endif %}
        {{- '}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("The mistral template takes user, assistant and tool messages after an optional "
                            "first system message; found '" + message.role + "'.") }}
    {%- endif %}
{%- endfor %}
"""

# Gemma 3's template: no system role, so the system text opens the first user turn.
_GEMMA_JINJA = r"""
{{- bos_token }}
{%- if messages[0].role == 'system' %}
    {%- set first_user_prefix = messages[0].content + '\n\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role not in ['user', 'assistant'] or message.tool_calls %}
        {{- raise_exception("The gemma template has no tool calls or '" + message.role + "' messages, only a first "
                            "system message then user and assistant turns; pick a template that supports tools "
                            "(chatml, qwen, qwen3, llama3, mistral) for tool use.") }}
    {%- endif %}
    {%- if (message.role == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception("The gemma template needs user and assistant messages to alternate, starting with user, "
                            "after an optional system message.") }}
    {%- endif %}
    {{- '<start_of_turn>' + ('model' if message.role == 'assistant' else 'user') + '\n' }}
    {{- (first_user_prefix if loop.first else '') + message.content | trim + '<end_of_turn>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\n' }}
{%- endif %}
"""

# Phi-3/3.5's template without the eos_token it appends after a conversation's last turn: that token marks the end of
# the whole text, not of a turn (<|end|> does), and it would change the text once a turn follows.
_PHI3_JINJA = r"""
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] or message.tool_calls %}
        {{- raise_exception("The phi3 template has no tool calls or '" + message.role + "' messages; pick a "
                            "template that supports tools (chatml, qwen, qwen3, llama3, mistral) for tool use.") }}
    {%- endif %}
    {{- '<|' + message.role + '|>\n' + message.content + '<|end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\n' }}
{%- endif %}
"""

# Meta's Llama 2 chat template: the system prompt sits in <<SYS>> inside the first [INST].
_LLAMA2_JINJA = r"""
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = none %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message.role not in ['user', 'assistant'] or message.tool_calls %}
        {{- raise_exception("The llama2 template has no tool calls or '" + message.role + "' messages, only a first "
                            "system message then user and assistant turns.") }}
    {%- endif %}
    {%- if (message.role == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception("The llama2 template needs user and assistant messages to alternate, starting with "
                            "user, after an optional system message.") }}
    {%- endif %}
    {%- if loop.first and system_message is not none %}
        {%- set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message.content %}
    {%- else %}
        {%- set content = message.content %}
    {%- endif %}
    {%- if message.role == 'user' %}
        {{- bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
    {%- else %}
        {{- ' ' + content.strip() + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}
"""

# FastChat's vicuna_v1.1: "{system} USER: {user} ASSISTANT: {reply}</s>USER: ...". The generation prompt ends at
# "ASSISTANT:", so the reply's leading space is the model's to write, as in FastChat.
_VICUNA_JINJA = r"""
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = default_system %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- system_message + ' ' }}
{%- for message in loop_messages %}
    {%- if message.role == 'user' %}
        {{- 'USER: ' + message.content + ' ' }}
    {%- elif message.role == 'assistant' and not message.tool_calls %}
        {{- 'ASSISTANT: ' + message.content + eos_token }}
    {%- else %}
        {{- raise_exception("The vicuna template has no tool calls or '" + message.role + "' messages, only a "
                            "first system message then user and assistant turns.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- 'ASSISTANT:' }}
{%- endif %}
"""

# Stanford Alpaca's prompt, one "### Instruction:" / "### Response:" pair per turn, eos_token after each response.
_ALPACA_JINJA = r"""
{%- if messages[0].role == 'system' %}
    {%- set system_message = messages[0].content %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = default_system %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- system_message + '\n\n' }}
{%- for message in loop_messages %}
    {%- if message.role == 'user' %}
        {{- '### Instruction:\n' + message.content + '\n\n' }}
    {%- elif message.role == 'assistant' and not message.tool_calls %}
        {{- '### Response:\n' + message.content + eos_token + '\n\n' }}
    {%- else %}
        {{- raise_exception("The alpaca template has no tool calls or '" + message.role + "' messages, only a "
                            "first system message then user and assistant turns.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Response:\n' }}
{%- endif %}
"""

# lorakit's own fallback for tokenizers without a chat template: readable, and eos_token teaches the model to stop.
_DEFAULT_JINJA = r"""
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {{- 'System: ' + message.content + '\n' }}
    {%- elif message.role == 'user' %}
        {{- 'Human: ' + message.content + '\n' }}
    {%- elif message.role == 'assistant' and not message.tool_calls %}
        {{- 'Assistant: ' + message.content + eos_token + '\n' }}
    {%- else %}
        {{- raise_exception("The default template has no tool calls or '" + message.role + "' messages; pick a "
                            "template that supports tools (chatml, qwen, qwen3, llama3, mistral) for tool use.") }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- 'Assistant:' }}
{%- endif %}
"""


def _with_default_system(default_system: str, jinja: str) -> str:
    """Prefix `jinja` with a line setting `default_system`, so `Template.default_system` is what it renders."""
    return "{%- set default_system = " + json.dumps(default_system) + " %}\n" + jinja


TEMPLATES: dict[str, Template] = {template.name: template for template in (
    Template("chatml", _HERMES_JINJA, ("<|im_end|>",), supports_tools=True),
    Template("qwen", _with_default_system(_QWEN_SYSTEM, _HERMES_JINJA), ("<|im_end|>",), supports_tools=True,
             default_system=_QWEN_SYSTEM),
    Template("qwen3", _QWEN3_JINJA, ("<|im_end|>",), supports_tools=True),
    Template("llama2", _LLAMA2_JINJA, ("</s>", "[INST]")),
    Template("llama3", _LLAMA3_JINJA, ("<|eot_id|>",), supports_tools=True),
    Template("mistral", _MISTRAL_JINJA, ("</s>", "[INST]"), supports_tools=True),
    Template("gemma", _GEMMA_JINJA, ("<end_of_turn>",)),
    Template("phi3", _PHI3_JINJA, ("<|end|>",)),
    Template("vicuna", _with_default_system(_VICUNA_SYSTEM, _VICUNA_JINJA), ("</s>", "USER:"),
             default_system=_VICUNA_SYSTEM),
    Template("alpaca", _with_default_system(_ALPACA_SYSTEM, _ALPACA_JINJA), ("### Instruction:",),
             default_system=_ALPACA_SYSTEM),
    Template("default", _DEFAULT_JINJA, ("Human:",)),
)}


def resolve_template(name: str | None, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The template called `name`; for None or "auto", the tokenizer's own chat template, else "default".

    Raises ConfigError for an unknown name, suggesting the closest built-in.
    """
    if name is None or name == "auto":
        jinja = _tokenizer_jinja(tokenizer)
        if jinja is None:
            warnings.warn("The tokenizer has no chat template, so lorakit uses its 'default' template "
                          "('Human: ... Assistant: ...'). Set `template` in the config to choose one and silence "
                          "this warning.", stacklevel=2)
            return TEMPLATES["default"]
        stop_words = (tokenizer.eos_token,) if tokenizer.eos_token else ()
        return Template(name="tokenizer", jinja=jinja, stop_words=stop_words, supports_tools="tools" in jinja)
    if name in TEMPLATES:
        return TEMPLATES[name]
    close = difflib.get_close_matches(name, TEMPLATES, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"Unknown template '{name}'.{hint} Set `template` in the config to one of: "
                      f"{', '.join(TEMPLATES)}, or 'auto' for the tokenizer's own.")


def render(template: Template, tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
           tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = False,
           thinking: bool | None = None) -> str:
    """The text of `messages` in `template`, ending with the assistant's header when `add_generation_prompt`.

    `thinking` sets the template's `enable_thinking` (None: the template's own option, else the template's default);
    the template's `system` goes first when `messages` has no system message. The text may hold the
    tokenizer's bos_token, so tokenize it without adding special tokens. Raises DataError for a conversation the
    template cannot show (tools without tool support, a role it lacks, turns out of order).
    """
    if not messages:
        raise DataError("Cannot render an empty conversation: each example needs at least one message.")
    if tools and not template.supports_tools:
        capable = ", ".join(name for name, known in TEMPLATES.items() if known.supports_tools)
        raise DataError(f"Template '{template.name}' cannot show tools to the model. Templates that support tools: "
                        f"{capable}. Set `template` in the config to one of them, or remove the tools from the data.")
    if "eos_token" in template.jinja and tokenizer.eos_token is None:
        raise ConfigError(f"Template '{template.name}' ends assistant turns with the tokenizer's eos_token, but this "
                          "tokenizer has none. Set `template` in the config to one with its own end-of-turn marker "
                          "(chatml, llama3, gemma, phi3).")
    if template.system is not None and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": template.system}, *messages]
    thinking = template.thinking if thinking is None else thinking
    options: dict[str, Any] = {} if thinking is None else {"enable_thinking": thinking}
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template.jinja, tools=tools or None,
                                             tokenize=False, add_generation_prompt=add_generation_prompt, **options)
    except jinja2.TemplateSyntaxError as error:
        raise ConfigError(f"Template '{template.name}' is not valid Jinja (line {error.lineno}: {error.message}). Fix "
                          "the tokenizer's chat_template, or set `template` in the config to a built-in.") from error
    except jinja2.TemplateError as error:
        raise DataError(f"Template '{template.name}' cannot render this conversation: {error.message}") from error


def render_supervised(template: Template, tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
                      tools: list[dict[str, Any]] | None = None,
                      thinking: bool | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The text of `messages` and the [start, end) character spans of what the model should learn to write.

    A span is one assistant turn: everything after its generation prompt, up to and including its end-of-turn
    marker ("Hello<|im_end|>" in ChatML, " Hello</s>" in Mistral, whose prompt ends at "[/INST]"). Whitespace the
    template puts after the marker (ChatML's newline) is left out: generation stops at the marker and never
    writes it. Raises LorakitError if the template renders earlier turns differently once later ones follow.
    """
    text = render(template, tokenizer, messages, tools=tools, thinking=thinking)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if index == 0:
            raise DataError("The conversation starts with an assistant message, which has no prompt to answer. "
                            "Put a user (or system) message before it, or drop it from the data.")
        prompt = render(template, tokenizer, messages[:index], tools=tools, add_generation_prompt=True,
                        thinking=thinking)
        through = render(template, tokenizer, messages[: index + 1], tools=tools, thinking=thinking)
        end = max(len(through.rstrip()), len(prompt))
        _check_prefixes(template, index, prompt, through[:end], text)
        spans.append((len(prompt), end))
    return text, spans


def _check_prefixes(template: Template, index: int, prompt: str, through: str, text: str) -> None:
    """Raise unless the text through assistant turn `index` extends its `prompt` and starts the whole `text`."""
    if not through.startswith(prompt):
        problem = "its generation prompt is not how the text of that turn begins"
    elif not text.startswith(through):
        problem = "that turn's text changes once later messages follow it"
    else:
        return
    raise LorakitError(f"Template '{template.name}' cannot mark the assistant reply at message {index}: {problem}, "
                       "so lorakit cannot tell which text to train on. Set `template` in the config to a built-in "
                       f"({', '.join(TEMPLATES)}).")


def install_template(tokenizer: PreTrainedTokenizerBase, template: Template) -> None:
    """Make `template` the tokenizer's chat template, so a saved tokenizer carries the one used in training."""
    tokenizer.chat_template = template.jinja


def _tokenizer_jinja(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizer's chat template source, or None; of several named ones, the one called "default"."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if not isinstance(chat_template, dict):
        return chat_template or None
    if "default" not in chat_template:
        raise ConfigError(f"The tokenizer has several chat templates ({', '.join(chat_template)}) and none is called "
                          "'default'. Set `template` in the config to a built-in name.")
    return chat_template["default"]
