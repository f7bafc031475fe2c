"""Turn raw records of any common format into one canonical conversation, validating as it goes.

Formats: alpaca, sharegpt, openai (messages), qa (question/answer), prompt_completion, preference (prompt/chosen/
rejected, plain or conversational), text. alpaca and sharegpt records may carry chosen/rejected (LLaMA-Factory's
`ranking: true`); prompt_completion records (TRL's unpaired layout) and records whose `label` column is mapped
(LLaMA-Factory's `kto_tag`) carry a desirable/undesirable label for KTO. Every error names the record's origin (file
and line) and the field, and says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorakit.errors import DataError

# Canonical field -> the names it is found under when the user maps nothing.
FIELDS: dict[str, dict[str, str]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system",
               "history": "history"},
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "tools": "tools"},
    "qa": {"question": "question", "answer": "answer", "system": "system"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion", "system": "system"},
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "system": "system"},
    "text": {"text": "text"},
}
# Optional fields of a preference (ranking) record, kept for DPO; SFT learns the chosen answer.
RANKING_FIELDS = ("chosen", "rejected")
# The optional field of an unpaired (KTO) record: is its answer desirable? SFT learns the answer either way.
LABEL_FIELD = "label"
_LABEL_WORDS = {"true": True, "false": False}

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "function_call": "function_call", "observation": "tool", "tool": "tool", "function": "tool"}
OPENAI_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Conversation:
    """One training example in lorakit's canonical form.

    `messages` use Hugging Face chat roles (system/user/assistant/tool; an assistant turn may carry `tool_calls`).
    Plain-text examples (continued pretraining) have `text` and no messages. `untrained` holds the indices of
    assistant messages whose loss weight is zero. `desirable` is a KTO label: whether the last answer is a good one
    (None: the record has none).
    """

    origin: str
    messages: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] | None = None
    text: str | None = None
    rejected: str | None = None
    untrained: frozenset[int] = field(default_factory=frozenset)
    desirable: bool | None = None


@dataclass(frozen=True)
class Tags:
    """How a sharegpt-style file spells roles: LLaMA-Factory's `tags` in dataset_info.json."""

    role: str = "from"
    content: str = "value"
    user: str | None = None
    assistant: str | None = None
    system: str | None = None
    observation: str | None = None
    function: str | None = None

    def role_map(self) -> dict[str, str]:
        roles = dict(SHAREGPT_ROLES)
        for canonical, name in (("user", self.user), ("assistant", self.assistant), ("system", self.system),
                                ("tool", self.observation), ("function_call", self.function)):
            if name:
                roles[name] = canonical
        return roles


def detect_format(fields: Mapping[str, Any], columns: Mapping[str, str]) -> str:
    """Guess a record's format from its keys (after the user's column mapping)."""
    names = set(fields)

    def has(fmt: str, canonical: str) -> bool:
        return columns.get(canonical, FIELDS[fmt][canonical]) in names

    if has("sharegpt", "messages"):
        return "sharegpt"
    if has("openai", "messages"):
        messages = fields[columns.get("messages", "messages")]
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) and "from" in messages[0]:
            return "sharegpt"
        return "openai"
    if has("alpaca", "instruction") or has("alpaca", "output"):
        return "alpaca"
    if has("qa", "question"):
        return "qa"
    if has("preference", "prompt") and (has("preference", "chosen") or has("preference", "rejected")):
        return "preference"
    if has("prompt_completion", "prompt"):
        return "prompt_completion"
    if has("text", "text") and len(names) == 1 or has("text", "text") and not names & {"output", "answer"}:
        return "text"
    raise DataError(f"cannot tell the format from the fields {sorted(names)}. lorakit reads alpaca "
                    "(instruction/input/output), sharegpt (conversations with from/value), openai (messages with "
                    "role/content), qa (question/answer), prompt_completion and text records. Set data.format, "
                    "or map your columns with data.columns (e.g. data.columns.output=answer).")


def to_conversation(origin: str, fields: Mapping[str, Any], fmt: str, columns: Mapping[str, str],
                    tags: Tags = Tags(), replace: Mapping[str, str] | None = None) -> Conversation:
    """Convert and validate one raw record; raise DataError naming `origin` and the field on any problem."""
    reader = _Fields(origin, fmt, fields, columns, replace or {})
    if fmt == "alpaca":
        return _from_alpaca(reader)
    if fmt == "sharegpt":
        return _from_sharegpt(reader, tags)
    if fmt == "openai":
        return _from_openai(reader)
    if fmt == "qa":
        return _pair(reader, "question", "answer")
    if fmt == "prompt_completion":
        return _pair(reader, "prompt", "completion")
    if fmt == "preference":
        return _from_preference(reader)
    if fmt == "text":
        return Conversation(origin, text=reader.text("text"))
    raise DataError(f"{origin}: unknown format '{fmt}'.")


class _Fields:
    """Typed access to a record's fields through the user's column mapping, with errors that name the field."""

    def __init__(self, origin: str, fmt: str, fields: Mapping[str, Any], columns: Mapping[str, str],
                 replace: Mapping[str, str]) -> None:
        self.origin, self.fmt, self.fields, self.replace = origin, fmt, fields, replace
        self.names = {name: columns.get(name, default) for name, default in FIELDS[fmt].items()}
        self.names.update({name: columns.get(name, name) for name in (*RANKING_FIELDS, LABEL_FIELD)})
        # A record's own `label` is read only where it is KTO's for sure: TRL's layout, or a column mapped to it.
        self.reads_label = fmt == "prompt_completion" or LABEL_FIELD in columns

    def name(self, canonical: str) -> str:
        return self.names[canonical]

    def fail(self, problem: str, fix: str = "") -> DataError:
        return DataError(f"{self.origin}: {problem}.{' ' + fix if fix else ''}")

    def missing(self, canonical: str) -> DataError:
        required = [self.names[c] for c in _REQUIRED[self.fmt]]
        found = ", ".join(f"'{k}'" for k in self.fields) or "no fields"
        return self.fail(f"missing field '{self.name(canonical)}'",
                         f"A {self.fmt} record needs {' and '.join(repr(r) for r in required)}; this one has "
                         f"{found}. Rename the field in the file, or map it with "
                         f"`data.columns.{canonical}=<your column>`")

    def raw(self, canonical: str) -> Any:
        return self.fields.get(self.name(canonical))

    def text(self, canonical: str, required: bool = True) -> str:
        value = self.raw(canonical)
        if value is None:
            if required:
                raise self.missing(canonical)
            return ""
        if not isinstance(value, str):
            raise self.fail(f"field '{self.name(canonical)}' must be a string, found {type(value).__name__}")
        if required and not value.strip():
            raise self.fail(f"field '{self.name(canonical)}' is empty",
                            "Fill it in, or set data.skip_bad=true to skip such records")
        return self.fill(value)

    def fill(self, value: str) -> str:
        for placeholder, replacement in self.replace.items():
            value = value.replace(placeholder, replacement)
        return value


_REQUIRED = {"alpaca": ("instruction", "output"), "sharegpt": ("messages",), "openai": ("messages",),
             "qa": ("question", "answer"), "prompt_completion": ("prompt", "completion"),
             "preference": ("prompt", "chosen", "rejected"), "text": ("text",)}


def _system(reader: _Fields) -> list[dict[str, Any]]:
    system = reader.text("system", required=False) if "system" in reader.names else ""
    return [{"role": "system", "content": system}] if system.strip() else []


def _from_alpaca(reader: _Fields) -> Conversation:
    messages = _system(reader)
    history = reader.raw("history") or []
    if not isinstance(history, list) or any(not (isinstance(turn, (list, tuple)) and len(turn) == 2
                                                 and all(isinstance(t, str) for t in turn)) for turn in history):
        raise reader.fail(f"field '{reader.name('history')}' must be a list of [question, answer] string pairs")
    for question, answer in history:
        messages += [{"role": "user", "content": reader.fill(question)},
                     {"role": "assistant", "content": reader.fill(answer)}]
    instruction = reader.text("instruction")
    extra = reader.text("input", required=False)
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    messages.append({"role": "user", "content": prompt})
    chosen, rejected = _ranking(reader)
    if chosen is None:
        chosen = reader.text("output")
    messages.append({"role": "assistant", "content": chosen})
    return Conversation(reader.origin, tuple(messages), rejected=rejected, desirable=_desirable(reader))


def _pair(reader: _Fields, prompt_field: str, answer_field: str) -> Conversation:
    if reader.fmt == "prompt_completion" and isinstance(reader.raw(prompt_field), list):
        # TRL's conversational layout: the prompt a list of messages, the completion one assistant message.
        messages = [*_prompt_messages(reader), {"role": "assistant", "content": _answer(reader, answer_field)}]
        _check_order(reader, messages)
        return Conversation(reader.origin, tuple(messages), desirable=_desirable(reader))
    messages = _system(reader) + [{"role": "user", "content": reader.text(prompt_field)},
                                  {"role": "assistant", "content": reader.text(answer_field)}]
    return Conversation(reader.origin, tuple(messages), desirable=_desirable(reader))


def _desirable(reader: _Fields) -> bool | None:
    """A KTO record's label as a bool (true/false, 1/0, or those words in a CSV cell), None where it has none."""
    value = reader.raw(LABEL_FIELD) if reader.reads_label else None
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    raise reader.fail(f"field '{reader.name(LABEL_FIELD)}' must be true or false (whether the answer is desirable, "
                      f"for KTO), found {value!r}", "Fix the record, or set data.skip_bad=true to skip such records")


def _answer(reader: _Fields, canonical: str) -> str:
    """An answer given as a string, one assistant message, or a list holding one (TRL's conversational layouts)."""
    value = reader.raw(canonical)
    if value is None:
        raise reader.missing(canonical)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("value", value.get("content"))
    if not isinstance(value, str) or not value.strip():
        raise reader.fail(f"field '{reader.name(canonical)}' must be a non-empty answer (a string, or a turn with "
                          "'value'/'content')")
    return reader.fill(value)


def _from_preference(reader: _Fields) -> Conversation:
    """A prompt/chosen/rejected record: the prompt is a string or a list of role/content messages (TRL's layouts)."""
    messages = _prompt_messages(reader)
    if reader.raw("chosen") is None and reader.raw("rejected") is None:
        raise reader.missing("chosen")
    return _finish(reader, messages, tools=None)


def _prompt_messages(reader: _Fields) -> list[dict[str, Any]]:
    """A `prompt` field as messages: a string is one user turn (after the system prompt), a list is role/content
    messages."""
    prompt = reader.raw("prompt")
    if not isinstance(prompt, list):
        return [*_system(reader), {"role": "user", "content": reader.text("prompt")}]
    messages = []
    for index, turn in enumerate(prompt, start=1):
        where = f"{reader.name('prompt')}[{index}]"
        if not isinstance(turn, dict) or turn.get("role") not in OPENAI_ROLES:
            raise reader.fail(f"message {where} must be an object with 'role' ({', '.join(OPENAI_ROLES)}) and "
                              "'content'")
        messages.append(_turn(reader, turn["role"], turn.get("content"), where))
    if not messages:
        raise reader.fail(f"field '{reader.name('prompt')}' is an empty list of messages")
    return messages


def _ranking(reader: _Fields) -> tuple[str | None, str | None]:
    """The chosen and rejected answers of a preference record, or (None, None) for an ordinary one."""
    chosen, rejected = reader.raw("chosen"), reader.raw("rejected")
    if chosen is None and rejected is None:
        return None, None
    answers = []
    for canonical, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise reader.fail(f"missing field '{reader.name(canonical)}'", "A preference record needs both "
                              f"'{reader.name('chosen')}' and '{reader.name('rejected')}' answers")
        if isinstance(value, list) and len(value) == 1:  # TRL's conversational layout: [{"role": "assistant", ...}]
            value = value[0]
        if isinstance(value, dict):
            value = value.get("value", value.get("content"))
        if not isinstance(value, str) or not value.strip():
            raise reader.fail(f"field '{reader.name(canonical)}' must be a non-empty answer (a string, or a turn "
                              "with 'value'/'content') in a preference record")
        answers.append(reader.fill(value))
    if answers[0].strip() == answers[1].strip():
        raise reader.fail(f"'{reader.name('chosen')}' and '{reader.name('rejected')}' are the same answer, so there "
                          "is no preference to learn", "Fix or remove the record, or set data.skip_bad=true")
    return answers[0], answers[1]


def _from_sharegpt(reader: _Fields, tags: Tags) -> Conversation:
    turns = reader.raw("messages")
    if turns is None:
        raise reader.missing("messages")
    if not isinstance(turns, list) or not turns:
        raise reader.fail(f"field '{reader.name('messages')}' must be a non-empty list of turns")
    roles = tags.role_map()
    messages = _system(reader)
    for index, turn in enumerate(turns, start=1):
        where = f"{reader.name('messages')}[{index}]"
        if not isinstance(turn, dict) or tags.role not in turn or tags.content not in turn:
            raise reader.fail(f"turn {where} must be an object with '{tags.role}' and '{tags.content}'")
        name = turn[tags.role]
        if name not in roles:
            raise reader.fail(f"turn {where} has unknown role '{name}'",
                              f"Known roles: {', '.join(sorted(roles))}. Map yours with LLaMA-Factory `tags` in "
                              "dataset_info.json")
        messages.append(_turn(reader, roles[name], turn[tags.content], where))
    return _finish(reader, messages, tools=_tools(reader))


def _from_openai(reader: _Fields) -> Conversation:
    turns = reader.raw("messages")
    if turns is None:
        raise reader.missing("messages")
    if not isinstance(turns, list) or not turns:
        raise reader.fail(f"field '{reader.name('messages')}' must be a non-empty list of messages")
    messages, untrained = [], set()
    for index, turn in enumerate(turns, start=1):
        where = f"{reader.name('messages')}[{index}]"
        if not isinstance(turn, dict) or "role" not in turn:
            raise reader.fail(f"message {where} must be an object with 'role' and 'content'")
        role = turn["role"]
        if role not in OPENAI_ROLES:
            raise reader.fail(f"message {where} has unknown role '{role}'", f"Known roles: {', '.join(OPENAI_ROLES)}")
        if role == "assistant" and turn.get("tool_calls"):
            messages.append({"role": "assistant", "content": _content(reader, turn.get("content") or "", where,
                                                                        required=False),
                             "tool_calls": [_tool_call(reader, call, where) for call in turn["tool_calls"]]})
        else:
            messages.append(_turn(reader, role, turn.get("content"), where))
        if role == "assistant" and turn.get("loss_weight", 1.0) == 0:
            untrained.add(len(messages) - 1)
    return _finish(reader, messages, tools=_tools(reader), untrained=frozenset(untrained))


def _content(reader: _Fields, content: Any, where: str, required: bool = True) -> str:
    """A message's text; content given as a list of typed parts ({"type": "text", "text"|"value": ...}) is joined."""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type", "text") != "text":
                raise reader.fail(f"{where} has a non-text content part; lorakit trains on text only")
            parts.append(part.get("text", part.get("value", "")))
        content = "".join(parts)
    if content is None or not isinstance(content, str):
        raise reader.fail(f"{where} has no text content (found {type(content).__name__})")
    if required and not content.strip():
        raise reader.fail(f"{where} is empty", "Fill it in, or set data.skip_bad=true to skip such records")
    return reader.fill(content)


def _turn(reader: _Fields, role: str, content: Any, where: str) -> dict[str, Any]:
    text = _content(reader, content, where)
    if role == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": _parse_calls(reader, text, where)}
    return {"role": role, "content": text}


def _parse_calls(reader: _Fields, text: str, where: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise reader.fail(f"{where} is a function_call whose value is not JSON",
                          'It must look like {"name": "...", "arguments": {...}}') from None
    calls = value if isinstance(value, list) else [value]
    return [_tool_call(reader, call, where) for call in calls]


def _tool_call(reader: _Fields, call: Any, where: str) -> dict[str, Any]:
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise reader.fail(f"{where} has a tool call without a 'name'",
                          'A call looks like {"name": "...", "arguments": {...}}')
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise reader.fail(f"{where}: the arguments of tool call '{function['name']}' are not JSON") from None
    return {"type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _tools(reader: _Fields) -> tuple[dict[str, Any], ...] | None:
    value = reader.raw("tools") if "tools" in reader.names else None
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise reader.fail(f"field '{reader.name('tools')}' is not valid JSON",
                              "It must be a JSON list of function schemas") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise reader.fail(f"field '{reader.name('tools')}' must be a list of function schemas")
    return tuple(tool if "function" in tool else {"type": "function", "function": tool} for tool in value)


def _finish(reader: _Fields, messages: list[dict[str, Any]], tools: tuple[dict[str, Any], ...] | None,
            untrained: frozenset[int] = frozenset()) -> Conversation:
    chosen, rejected = _ranking(reader)
    if chosen is not None:
        messages = [*messages, {"role": "assistant", "content": chosen}]
    _check_order(reader, messages)
    return Conversation(reader.origin, tuple(messages), tools=tools, rejected=rejected, untrained=untrained,
                        desirable=_desirable(reader))


def _check_order(reader: _Fields, messages: list[dict[str, Any]]) -> None:
    """User and assistant alternate; tool results follow an assistant turn; the last turn is the assistant's."""
    previous = None
    for index, message in enumerate(messages, start=1):
        role = message["role"]
        if role == "system":
            if index != 1:
                raise reader.fail(f"turn {index} is a system message; only the first turn may be one")
        elif role == "user" and previous == "user":
            raise reader.fail(f"turns {index - 1} and {index} are both from the user",
                              "User and assistant turns must alternate; merge the two turns or add the reply")
        elif role == "assistant" and previous in (None, "system"):
            raise reader.fail(f"turn {index} is an assistant turn before any user turn",
                              "A conversation starts with the user (after an optional system message)")
        elif role == "assistant" and previous == "assistant":
            raise reader.fail(f"turns {index - 1} and {index} are both from the assistant",
                              "User and assistant turns must alternate")
        elif role == "tool" and previous not in ("assistant", "tool"):
            # LLaMA-Factory's rule: an observation takes the user's place after any assistant turn.
            raise reader.fail(f"turn {index} is a tool result (observation) that follows no assistant "
                              "turn or function_call")
        previous = role
    if previous != "assistant":
        raise reader.fail(f"the last turn is from '{previous}', so there is no answer to learn",
                          "End each conversation with an assistant turn, or remove the trailing turn")
