"""Ollama's side of every built-in template: `to_ollama()` writes the Go text/template a Modelfile's TEMPLATE holds.

Each Go template renders what `render(..., add_generation_prompt=True)` renders for the same conversation, from the
data Ollama gives a template (github.com/ollama/ollama, template/template.go: `.Messages` with `.Role .Content
.Thinking .ToolCalls`, `.Tools`, `.Think`, `.IsThinkSet`, and the funcs `json`, `currentDate`...), with three
differences that Ollama's runtime makes up for: the opening bos_token is left out (llama.cpp adds it when it
tokenizes, as the GGUF's `add_bos_token` says); a conversation always ends with the generation prompt; and
`message.content | trim` cannot trim (Go templates have no string functions), so contents are written as they are.

Where Ollama's data cannot say what Jinja can, the text matches when the data is ordinary:
- Ollama merges consecutive messages of one role (tool results aside) into one, joined by a blank line
  (template.go, `collate`); lorakit renders them as separate turns.
- Tool-call arguments arrive as a Go map, so their keys print sorted, where `tojson` keeps the data's order; tool
  definitions print in the OpenAI order (type, function: name, description, parameters: type, properties, required)
  with property names sorted. Nested schema parts (`properties` inside a property, `anyOf`, several types) print as
  compact JSON. Strings print as Go quotes them (`%q`), which is JSON for printable text.
- A reply's reasoning travels in `.Thinking` (Ollama splits it off the model's output at the template's <think> tags,
  thinking/template.go `InferTags`); a `<think>` block left in `.Content` is written as it is. Ollama sets `think`
  true when a request to a thinking model leaves it unset (server/routes.go), so a run trained with thinking off
  keeps it off whatever the request says, and one that left it open thinks unless the request says `think: false`.

Recent Ollama (llama-server runner, ollama/ollama#16031, May 2026) may render with the GGUF's embedded Jinja
(`tokenizer.chat_template`, the template saved with the run's tokenizer) instead of the Modelfile TEMPLATE: it does so
when that Jinja shows more capabilities (tools, thinking) than the Go template, or the same tools but with a tool
round trip the Go template lacks (server/images.go `shouldPreferChatTemplate`), unless OLLAMA_GO_TEMPLATE is set
(server/routes.go `shouldUseGoTemplate`). The templates here carry `.Tools`, `.ToolCalls`, an `eq .Role "tool"` turn
and, for qwen3, `.Thinking` between <think> tags, so for the tool and thinking templates Ollama keeps the Modelfile
TEMPLATE; for the others (whose Jinja mentions tool calls only in its error messages) it picks the Jinja, which is
the same training template, so both paths give the same text. `OLLAMA_GO_TEMPLATE=1` makes it use the TEMPLATE always.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from lorakit.errors import ConfigError, LorakitError
from lorakit.templates import TEMPLATES, Template, render

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Python's `tojson` on Ollama's data: strings quoted, maps with ", " and ": " (keys sorted, as Go ranges over maps),
# lists with ", ", anything else through Ollama's `json`. Nested JSON in tool-call arguments arrives as these types.
_JSON_DEFINES = r"""
{{- define "json" }}
{{- $type := printf "%T" . }}
{{- if eq $type "string" }}{{ printf "%q" . }}
{{- else if eq $type "map[string]interface {}" }}{{ template "object" . }}
{{- else if eq $type "[]interface {}" }}{{ "[" }}{{ $sep := "" }}{{ range . }}{{ $sep }}{{ template "json" . }}
    {{- $sep = ", " }}{{ end }}{{ "]" }}
{{- else }}{{ json . }}
{{- end }}
{{- end }}
{{- define "object" }}{{ "{" }}{{ $sep := "" }}{{ range $key, $value := . }}{{ $sep }}{{ printf "%q" $key }}
    {{- ": " }}{{ template "json" $value }}{{ $sep = ", " }}{{ end }}{{ "}" }}
{{- end }}
{{- define "property" }}{{ "{" }}{{ $sep := "" }}
{{- if .AnyOf }}{{ $sep }}{{ "\"anyOf\": " }}{{ json .AnyOf }}{{ $sep = ", " }}{{ end }}
{{- if .Type }}{{ $sep }}{{ "\"type\": " }}{{ json .Type }}{{ $sep = ", " }}{{ end }}
{{- if .Description }}{{ $sep }}{{ "\"description\": " }}{{ printf "%q" .Description }}{{ $sep = ", " }}{{ end }}
{{- if .Enum }}{{ $sep }}{{ "\"enum\": " }}{{ template "json" .Enum }}{{ $sep = ", " }}{{ end }}
{{- if .Items }}{{ $sep }}{{ "\"items\": " }}{{ template "json" .Items }}{{ $sep = ", " }}{{ end }}
{{- if .Properties }}{{ $sep }}{{ "\"properties\": " }}{{ json .Properties }}{{ $sep = ", " }}{{ end }}
{{- if .Required }}{{ $sep }}{{ "\"required\": " }}{{ json .Required }}{{ end }}
{{- "}" }}
{{- end }}
{{- define "function" }}{{ "{\"name\": " }}{{ printf "%q" .Name }}
{{- if .Description }}{{ ", \"description\": " }}{{ printf "%q" .Description }}{{ end }}
{{- ", \"parameters\": {\"type\": " }}{{ printf "%q" .Parameters.Type }}{{ ", \"properties\": {" }}
{{- $sep := "" }}{{ range $name, $property := .Parameters.Properties }}{{ $sep }}{{ printf "%q" $name }}{{ ": " }}
    {{- template "property" $property }}{{ $sep = ", " }}{{ end }}{{ "}" }}
{{- if .Parameters.Required }}{{ ", \"required\": [" }}{{ $sep := "" }}{{ range .Parameters.Required }}{{ $sep }}
    {{- printf "%q" . }}{{ $sep = ", " }}{{ end }}{{ "]" }}{{ end }}
{{- "}}" }}
{{- end }}
{{- define "tool" }}{{ "{\"type\": " }}{{ printf "%q" .Type }}{{ ", \"function\": " }}
    {{- template "function" .Function }}{{ "}" }}
{{- end }}"""

# The system prompt in force: the first message when it is a system message, else the run's trained system prompt or
# the template's default (both baked in). `$start` is the index of the first message after it.
_SYSTEM = r"""
{{- $system := DEFAULT_SYSTEM }}
{{- $hasSystem := HAS_DEFAULT_SYSTEM }}
{{- $start := 0 }}
{{- if and .Messages (eq (index .Messages 0).Role "system") }}{{ $system = (index .Messages 0).Content }}
    {{- $hasSystem = true }}{{ $start = 1 }}{{ end }}"""

_HERMES_TOOLS_PROMPT = r"""
{{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n" }}
{{- "You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{{- range .Tools }}{{ "\n" }}{{ template "tool" . }}{{ end }}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within " }}
{{- "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": " }}
{{- "<args-json-object>}\n</tool_call><|im_end|>\n" }}"""

# One Hermes tool call. Ollama reads the tag its replies open with from the first text inside `if .ToolCalls`
# (tools/template.go, parseTag), so <tool_call> is template text, not a quoted string.
_HERMES_CALLS = r"""
{{- if .ToolCalls }}{{ range $j, $call := .ToolCalls }}<tool_call>{{ "\n{\"name\": \"" }}{{ .Function.Name }}
    {{- "\", \"arguments\": " }}{{ template "object" .Function.Arguments }}{{ "}\n</tool_call>" }}
    {{- if lt $j (len (slice $m.ToolCalls 1)) }}{{ "\n" }}{{ end }}{{ end }}{{ end }}"""

# Consecutive tool results share one user turn, closed when another role follows or the conversation ends.
_HERMES_TOOL_RESULT = r"""
{{- else if eq .Role "tool" }}
{{- if ne $previous "tool" }}{{ "<|im_start|>user" }}{{ end }}
{{- "\n<tool_response>\n" }}{{ .Content }}{{ "\n</tool_response>" }}"""

# The system turn (with the tool prompt when there are tools), then each turn up to the assistant's.
_HERMES_OPENING = r"""
{{- if .Tools }}{{ "<|im_start|>system\n" }}{{ if $hasSystem }}{{ $system }}{{ "\n\n" }}
    {{- end }}""" + _HERMES_TOOLS_PROMPT + r"""
{{- else if $hasSystem }}{{ "<|im_start|>system\n" }}{{ $system }}{{ "<|im_end|>\n" }}
{{- end }}
{{- $previous := "" }}
{{- range $i, $m := .Messages }}
{{- if and (eq $previous "tool") (ne .Role "tool") }}{{ "<|im_end|>\n" }}{{ end }}
{{- if lt $i $start }}
{{- else if or (eq .Role "system") (eq .Role "user") }}{{ "<|im_start|>" }}{{ .Role }}{{ "\n" }}{{ .Content }}
    {{- "<|im_end|>\n" }}"""

_HERMES = _SYSTEM + _HERMES_OPENING + r"""
{{- else if eq .Role "assistant" }}{{ "<|im_start|>assistant" }}
{{- if or .Content (eq (len .ToolCalls) 0) }}{{ "\n" }}{{ .Content }}{{ end }}
{{- if gt (len .ToolCalls) 0 }}{{ "\n" }}{{ end }}""" + _HERMES_CALLS + r"""
{{- "<|im_end|>\n" }}""" + _HERMES_TOOL_RESULT + r"""
{{- end }}
{{- $previous = .Role }}
{{- end }}
{{- if eq $previous "tool" }}{{ "<|im_end|>\n" }}{{ end }}
{{- "<|im_start|>assistant\n" }}"""

# Qwen3: as _HERMES, with the empty think block while thinking is off, and a reply's reasoning (`.Thinking`) between
# <think> tags otherwise. THINKING_OFF is the run's setting, or Ollama's `think` flag when the run left it open.
_QWEN3 = _SYSTEM + r"""
{{- $off := THINKING_OFF }}""" + _HERMES_OPENING + r"""
{{- else if eq .Role "assistant" }}{{ "<|im_start|>assistant\n" }}
{{- if $off }}{{ "<think>\n\n</think>\n\n" }}
{{- else if .Thinking }}<think>{{ "\n" }}{{ .Thinking }}{{ "\n" }}</think>{{ end }}
{{- if $off }}{{ else if .Thinking }}{{ "\n\n" }}{{ end }}
{{- .Content }}
{{- if and .Content (gt (len .ToolCalls) 0) }}{{ "\n" }}{{ end }}""" + _HERMES_CALLS + r"""
{{- "<|im_end|>\n" }}""" + _HERMES_TOOL_RESULT + r"""
{{- end }}
{{- $previous = .Role }}
{{- end }}
{{- if eq $previous "tool" }}{{ "<|im_end|>\n" }}{{ end }}
{{- "<|im_start|>assistant\n" }}
{{- if $off }}{{ "<think>\n\n</think>\n\n" }}{{ end }}"""

# Llama 3's tool list in the first user turn, `tojson(indent=4)`: the fixed levels of a tool written out.
_LLAMA3_TOOL = r"""
{{- "{\n    \"type\": " }}{{ printf "%q" .Type }}{{ ",\n    \"function\": {\n        \"name\": " }}
    {{- printf "%q" .Function.Name }}
{{- if .Function.Description }}{{ ",\n        \"description\": " }}{{ printf "%q" .Function.Description }}{{ end }}
{{- ",\n        \"parameters\": {\n            \"type\": " }}{{ printf "%q" .Function.Parameters.Type }}
    {{- ",\n            \"properties\": " }}
{{- if .Function.Parameters.Properties }}{{ "{" }}{{ $sep := "\n" }}
{{- range $name, $property := .Function.Parameters.Properties }}{{ $sep }}{{ "                " }}
    {{- printf "%q" $name }}{{ ": {" }}{{ $inner := "\n" }}
{{- if .Type }}{{ $inner }}{{ "                    \"type\": " }}{{ json .Type }}{{ $inner = ",\n" }}{{ end }}
{{- if .Description }}{{ $inner }}{{ "                    \"description\": " }}{{ printf "%q" .Description }}
    {{- $inner = ",\n" }}{{ end }}
{{- if .Enum }}{{ $inner }}{{ "                    \"enum\": [" }}{{ $item := "\n" }}{{ range .Enum }}{{ $item }}
    {{- "                        " }}{{ template "json" . }}{{ $item = ",\n" }}{{ end }}
    {{- "\n                    ]" }}{{ $inner = ",\n" }}{{ end }}
{{- if .Items }}{{ $inner }}{{ "                    \"items\": " }}{{ template "json" .Items }}
    {{- $inner = ",\n" }}{{ end }}
{{- "\n                }" }}{{ $sep = ",\n" }}{{ end }}{{ "\n            }" }}
{{- else }}{{ "{}" }}{{ end }}
{{- if .Function.Parameters.Required }}{{ ",\n            \"required\": [" }}{{ $sep := "\n" }}
    {{- range .Function.Parameters.Required }}{{ $sep }}{{ "                " }}{{ printf "%q" . }}
    {{- $sep = ",\n" }}{{ end }}{{ "\n            ]" }}{{ end }}
{{- "\n        }\n    }\n}" }}"""

# Llama 3 chat, and Llama 3.1's tool format: "Environment: ipython", the tool list in the first user turn, a call as
# {"name", "parameters"} JSON, results in `ipython` turns. Calls have no tag: Ollama reads JSON objects as calls.
_LLAMA3 = _SYSTEM + r"""
{{- if .Tools }}
    {{- "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n" }}
    {{- "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" }}
    {{- $system }}{{ "<|eot_id|>" }}
{{- else if $hasSystem }}{{ "<|start_header_id|>system<|end_header_id|>\n\n" }}{{ $system }}{{ "<|eot_id|>" }}
{{- end }}
{{- range $i, $m := .Messages }}
{{- if lt $i $start }}
{{- else if and $.Tools (eq $i $start) }}
    {{- "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON " }}
    {{- "for a function call with its proper arguments that best answers the given prompt.\n\n" }}
    {{- "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its " }}
    {{- "value}.Do not use variables.\n\n" }}
{{- range $.Tools }}""" + _LLAMA3_TOOL + r"""{{ "\n\n" }}{{ end }}
{{- .Content }}{{ "<|eot_id|>" }}
{{- else if eq .Role "assistant" }}
{{- if .ToolCalls }}{{ range .ToolCalls }}{{ "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"" }}
    {{- .Function.Name }}{{ "\", \"parameters\": " }}{{ template "object" .Function.Arguments }}{{ "}<|eot_id|>" }}
    {{- end }}
{{- else }}{{ "<|start_header_id|>assistant<|end_header_id|>\n\n" }}{{ .Content }}{{ "<|eot_id|>" }}
{{- end }}
{{- else if eq .Role "tool" }}{{ "<|start_header_id|>ipython<|end_header_id|>\n\n" }}{{ .Content }}{{ "<|eot_id|>" }}
{{- else }}{{ "<|start_header_id|>" }}{{ .Role }}{{ "<|end_header_id|>\n\n" }}{{ .Content }}{{ "<|eot_id|>" }}
{{- end }}
{{- end }}
{{- "<|start_header_id|>assistant<|end_header_id|>\n\n" }}"""

# Mistral v3: tools before the first user turn, the system prompt inside it, [TOOL_CALLS] as Ollama's own mistral
# template writes it (so its parser finds the tag), results in [TOOL_RESULTS].
_MISTRAL = _SYSTEM + r"""
{{- range $i, $m := .Messages }}
{{- if lt $i $start }}
{{- else if eq .Role "user" }}
{{- if and $.Tools (eq $i $start) }}{{ "[AVAILABLE_TOOLS] [" }}{{ $sep := "" }}{{ range $.Tools }}{{ $sep }}
    {{- "{\"type\": \"function\", \"function\": " }}{{ template "function" .Function }}{{ "}" }}{{ $sep = ", " }}
    {{- end }}{{ "][/AVAILABLE_TOOLS]" }}{{ end }}
{{- if and $hasSystem (eq $i $start) }}{{ "[INST] " }}{{ $system }}{{ "\n\n" }}{{ .Content }}{{ "[/INST]" }}
{{- else }}{{ "[INST] " }}{{ .Content }}{{ "[/INST]" }}
{{- end }}
{{- else if eq .Role "assistant" }}
{{- if .ToolCalls }}[TOOL_CALLS] [{{ $sep := "" }}{{ range .ToolCalls }}{{ $sep }}{{ "{\"name\": " }}
    {{- printf "%q" .Function.Name }}{{ ", \"arguments\": " }}{{ template "object" .Function.Arguments }}
    {{- if .ID }}{{ ", \"id\": \"" }}{{ .ID }}{{ "\"" }}{{ end }}{{ "}" }}{{ $sep = ", " }}{{ end }}{{ "]" }}
    {{- EOS_TOKEN }}
{{- else }}{{ " " }}{{ .Content }}{{ EOS_TOKEN }}
{{- end }}
{{- else if eq .Role "tool" }}{{ "[TOOL_RESULTS] {\"content\": " }}{{ .Content }}{{ if .ToolCallID }}
    {{- ", \"call_id\": \"" }}{{ .ToolCallID }}{{ "\"" }}{{ end }}{{ "}[/TOOL_RESULTS]" }}
{{- end }}
{{- end }}"""

_GEMMA = _SYSTEM + r"""
{{- range $i, $m := .Messages }}
{{- if lt $i $start }}
{{- else if eq .Role "assistant" }}{{ "<start_of_turn>model\n" }}{{ .Content }}{{ "<end_of_turn>\n" }}
{{- else if eq .Role "user" }}{{ "<start_of_turn>user\n" }}{{ if and $hasSystem (eq $i $start) }}{{ $system }}
    {{- "\n\n" }}{{ end }}{{ .Content }}{{ "<end_of_turn>\n" }}
{{- end }}
{{- end }}
{{- "<start_of_turn>model\n" }}"""

_PHI3 = _SYSTEM + r"""
{{- if $hasSystem }}{{ "<|system|>\n" }}{{ $system }}{{ "<|end|>\n" }}{{ end }}
{{- range $i, $m := .Messages }}
{{- if ge $i $start }}{{ "<|" }}{{ .Role }}{{ "|>\n" }}{{ .Content }}{{ "<|end|>\n" }}{{ end }}
{{- end }}
{{- "<|assistant|>\n" }}"""

# Llama 2: every user turn opens with bos_token but the first, which the runtime adds; no generation prompt past
# [/INST], as in Meta's template.
_LLAMA2 = _SYSTEM + r"""
{{- range $i, $m := .Messages }}
{{- if lt $i $start }}
{{- else if eq .Role "user" }}{{ if gt $i $start }}{{ BOS_TOKEN }}{{ end }}{{ "[INST] " }}
{{- if and $hasSystem (eq $i $start) }}{{ "<<SYS>>\n" }}{{ $system }}{{ "\n<</SYS>>\n\n" }}{{ end }}
    {{- .Content }}{{ " [/INST]" }}
{{- else if eq .Role "assistant" }}{{ " " }}{{ .Content }}{{ " " }}{{ EOS_TOKEN }}
{{- end }}
{{- end }}"""

_VICUNA = _SYSTEM + r"""
{{- $system }}{{ " " }}
{{- range $i, $m := .Messages }}
{{- if lt $i $start }}
{{- else if eq .Role "user" }}{{ "USER: " }}{{ .Content }}{{ " " }}
{{- else if eq .Role "assistant" }}{{ "ASSISTANT: " }}{{ .Content }}{{ EOS_TOKEN }}
{{- end }}
{{- end }}
{{- "ASSISTANT:" }}"""

_ALPACA = _SYSTEM + r"""
{{- $system }}{{ "\n\n" }}
{{- range $i, $m := .Messages }}
{{- if lt $i $start }}
{{- else if eq .Role "user" }}{{ "### Instruction:\n" }}{{ .Content }}{{ "\n\n" }}
{{- else if eq .Role "assistant" }}{{ "### Response:\n" }}{{ .Content }}{{ EOS_TOKEN }}{{ "\n\n" }}
{{- end }}
{{- end }}
{{- "### Response:\n" }}"""

_DEFAULT = _SYSTEM + r"""
{{- if $hasSystem }}{{ "System: " }}{{ $system }}{{ "\n" }}{{ end }}
{{- range $i, $m := .Messages }}
{{- if lt $i $start }}
{{- else if eq .Role "system" }}{{ "System: " }}{{ .Content }}{{ "\n" }}
{{- else if eq .Role "user" }}{{ "Human: " }}{{ .Content }}{{ "\n" }}
{{- else if eq .Role "assistant" }}{{ "Assistant: " }}{{ .Content }}{{ EOS_TOKEN }}{{ "\n" }}
{{- end }}
{{- end }}
{{- "Assistant:" }}"""

_GO_TEMPLATES = {"chatml": _HERMES, "qwen": _HERMES, "qwen3": _QWEN3, "llama3": _LLAMA3, "mistral": _MISTRAL,
                 "gemma": _GEMMA, "phi3": _PHI3, "llama2": _LLAMA2, "vicuna": _VICUNA, "alpaca": _ALPACA,
                 "default": _DEFAULT}


# Conversations on which a tokenizer's own template must render exactly as a built-in to be translated as one.
_PROBES = (
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}],
)
_MARK = "\u2063SYSTEM\u2063"  # an invisible separator: found only where a system prompt is written


def as_builtin(template: Template, tokenizer: PreTrainedTokenizerBase) -> Template | None:
    """The built-in that renders exactly as `template` (a tokenizer's own Jinja), with its default system prompt.

    SmolLM2's template, for one, is ChatML that adds "You are a helpful AI assistant named SmolLM..." when a
    conversation has no system message: that is `chatml` with that `system`. Returns `template` itself for a built-in
    and None when no built-in renders the probe conversations character for character.
    """
    if TEMPLATES.get(template.name) is not None and TEMPLATES[template.name].jinja == template.jinja:
        return template
    for builtin in TEMPLATES.values():
        candidate = replace(builtin, system=template.system, thinking=template.thinking)
        try:
            if candidate.system is None:
                candidate = replace(candidate, system=_implied_system(template, candidate, tokenizer))
            if all(_renders(candidate, tokenizer, probe) == _renders(template, tokenizer, probe) for probe in _PROBES):
                return candidate
        except LorakitError:
            continue
    return None


def _renders(template: Template, tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[str, str]:
    return (render(template, tokenizer, messages), render(template, tokenizer, messages, add_generation_prompt=True))


def _implied_system(template: Template, builtin: Template, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The system prompt `template` writes when a conversation has none, read off where `builtin` writes one."""
    probe = _PROBES[0]
    before, _, after = render(builtin, tokenizer, [{"role": "system", "content": _MARK}, *probe]).partition(_MARK)
    own = render(template, tokenizer, probe)
    if not after or len(own) <= len(before) + len(after) or not (own.startswith(before) and own.endswith(after)):
        return None
    return own[len(before):len(own) - len(after)]


def to_ollama(template: Template, tokenizer: PreTrainedTokenizerBase) -> str:
    """The Go template for a Modelfile's TEMPLATE that renders prompts as `render()` does for `template`.

    The run's options are baked in: its `system` prompt (else the template's default) where a conversation has no
    system message, and its `thinking` setting; a run that left thinking open follows Ollama's `think` flag.
    `tokenizer` gives the bos and eos token strings. Raises ConfigError for a template that is not a built-in (a
    tokenizer's own Jinja has no Go translation) and for an eos_token the template needs but the tokenizer lacks.
    """
    template = as_builtin(template, tokenizer) or template
    builtin = TEMPLATES.get(template.name)
    if builtin is None or builtin.jinja != template.jinja:
        raise ConfigError(f"Template '{template.name}' is not one of lorakit's built-ins (it is a tokenizer's own Jinja, "
                          "or a built-in changed since the run), and only built-ins have a Go translation for Ollama. "
                          f"Train with a built-in (set `template` in the config to one of: {', '.join(TEMPLATES)}), or "
                          "write the Modelfile's TEMPLATE by hand.")
    if "eos_token" in template.jinja and tokenizer.eos_token is None:
        raise ConfigError(f"Template '{template.name}' ends assistant turns with the tokenizer's eos_token, but this "
                          "tokenizer has none. Set `template` in the config to one with its own end-of-turn marker "
                          "(chatml, llama3, gemma, phi3).")
    source = _GO_TEMPLATES[template.name]
    if template.supports_tools:
        source = _JSON_DEFINES + source
    system = template.system if template.system is not None else template.default_system
    replacements = {
        "HAS_DEFAULT_SYSTEM": "true" if system is not None else "false",
        "DEFAULT_SYSTEM": go_string(system or ""),
        "THINKING_OFF": "true" if template.thinking is False else "and .IsThinkSet (not .Think)",
        "BOS_TOKEN": go_string(tokenizer.bos_token or ""),
        "EOS_TOKEN": go_string(tokenizer.eos_token or ""),
    }
    # One pass, so a system prompt that happens to hold a placeholder's name is left alone.
    return re.sub("|".join(replacements), lambda match: replacements[match.group()], source).lstrip("\n")


def go_string(text: str) -> str:
    """`text` as a Go string literal: printable characters as they are, the rest escaped."""
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for char in text:
        if char in named:
            out.append(named[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'
