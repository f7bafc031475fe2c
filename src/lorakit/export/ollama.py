"""Ollama export: `write_modelfile()` puts a Modelfile and a README beside a GGUF, so `ollama create` serves the model
with the chat template, stop strings, context length and system prompt it was trained with.

The TEMPLATE is `lorakit.templates.ollama.to_ollama()`: Go's text/template rendering the same text as training; its
module docstring says when recent Ollama renders with the GGUF's embedded Jinja instead, and why both agree.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.config import GGUFConfig, OllamaConfig
from lorakit.errors import ConfigError
from lorakit.files import atomic_dir, write_text
from lorakit.progress import ProgressTarget
from lorakit.templates import Template
from lorakit.templates.ollama import to_ollama

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_SAMPLING: dict[str, float] = {"temperature": 0.7, "top_p": 0.9}
# Ollama's sampling options (api.Options) a Modelfile PARAMETER may set; stop and num_ctx are written from the run.
SAMPLING_PARAMETERS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "repeat_penalty",
                       "presence_penalty", "frequency_penalty", "seed", "num_predict")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?(:[\w][\w.\-]*)?")


@dataclass(frozen=True)
class OllamaExport:
    """The folder `export_ollama` wrote: its GGUF files, Modelfile and the Ollama model name its README uses."""

    folder: Path
    model_gguf: Path
    adapter_gguf: Path | None
    modelfile: Path
    name: str
    context_length: int


def export_ollama(config: OllamaConfig, progress: ProgressTarget = True) -> OllamaExport:
    """A run -> `config.output`: its GGUF (quantised to `config.quant`), a Modelfile and a README.

    With `adapter_only`, the base model's GGUF and the adapter's LoRA GGUF (Modelfile `FROM` + `ADAPTER`). The folder
    appears whole or not at all; an existing one is replaced only with `force`.
    """
    from lorakit.export.gguf import export_gguf
    from lorakit.model import resolve_model_path
    from lorakit.runs import open_run

    if config.output.exists() and not config.force:
        raise ConfigError(f"{config.output} already exists. Choose another output, or set force=true to replace it.")
    run = open_run(config.source)
    template, tokenizer = _trained_template(run)
    name = config.name or _model_name(config.output)
    with atomic_dir(config.output) as folder:
        if config.adapter_only:
            base = config.base or run.require_base_model()
            model = export_gguf(GGUFConfig(source=Path(resolve_model_path(base)), outtype=config.quant,
                                           output=folder / f"base.{config.quant}.gguf"), progress)
            adapter = export_gguf(GGUFConfig(source=config.source, output=folder / "adapter.gguf", outtype="f16",
                                             adapter_only=True, base=config.base), progress)
        else:
            model = export_gguf(GGUFConfig(source=config.source, output=folder / f"{name}.{config.quant}.gguf",
                                           outtype=config.quant, base=config.base), progress)
            adapter = None
        context_length = model.context_length or 4096
        write_modelfile(folder, model.path.name, template, tokenizer, context_length,
                        adapter_gguf=adapter.path.name if adapter else None, system=config.system, name=name)
    return OllamaExport(folder=config.output, model_gguf=config.output / model.path.name,
                        adapter_gguf=config.output / adapter.path.name if adapter else None,
                        modelfile=config.output / "Modelfile", name=name, context_length=context_length)


def _trained_template(run) -> tuple[Template, PreTrainedTokenizerBase]:
    from transformers import AutoTokenizer

    from lorakit.templates.ollama import as_builtin

    tokenizer = AutoTokenizer.from_pretrained(str(run.weights_dir))
    template = run.template(tokenizer)
    template = template and (as_builtin(template, tokenizer) or template)
    if template is None:
        raise ConfigError(f"{run.weights_dir} does not say which lorakit template it was trained with (no "
                          "lorakit.json), so no Ollama TEMPLATE can be written for it. Export a lorakit run, or "
                          "write the Modelfile by hand from the GGUF (`lorakit export gguf`).")
    return template, tokenizer


def modelfile_text(gguf_name: str, template: Template, tokenizer: PreTrainedTokenizerBase, context_length: int, *,
                   adapter_gguf: str | None = None, system: str | None = None,
                   sampling: dict[str, float] | None = None) -> str:
    """The Modelfile for `gguf_name` (a GGUF beside it, or with `adapter_gguf` the base: a GGUF or an Ollama model).

    `system` defaults to the run's trained system prompt (`template.system`); `sampling` maps Ollama parameter names
    to values, defaulting to DEFAULT_SAMPLING. Raises ConfigError for a value a Modelfile cannot hold.
    """
    if context_length <= 0:
        raise ConfigError(f"The model's context length must be a positive number of tokens, got {context_length}.")
    if adapter_gguf is None and not gguf_name.endswith(".gguf"):
        raise ConfigError(f"The Modelfile needs the model's GGUF file to start FROM, got '{gguf_name}'.")
    lines = [f"FROM {_local(gguf_name)}"]
    if adapter_gguf is not None:
        lines.append(f"ADAPTER {_local(adapter_gguf)}")
    lines.append(f"TEMPLATE {quote(to_ollama(template, tokenizer), 'template')}")
    system = template.system if system is None else system
    if system is not None:
        lines.append(f"SYSTEM {quote(system, 'system')}")
    lines.extend(f"PARAMETER stop {quote(stop, 'stop')}" for stop in _stop_strings(template, tokenizer))
    lines.append(f"PARAMETER num_ctx {context_length}")
    for key, value in _check_sampling(DEFAULT_SAMPLING if sampling is None else sampling).items():
        lines.append(f"PARAMETER {key} {value}")
    return "\n".join(lines) + "\n"


def write_modelfile(output_dir: Path, gguf_name: str, template: Template, tokenizer: PreTrainedTokenizerBase,
                    context_length: int, *, adapter_gguf: str | None = None, system: str | None = None,
                    sampling: dict[str, float] | None = None, name: str | None = None) -> Path:
    """Write `Modelfile` and `README.md` (the `ollama create` and `ollama run` commands) into `output_dir`.

    `output_dir` must exist and hold the GGUF files the Modelfile names. `name` is the Ollama model name the README
    uses (default: the folder's name). Returns the Modelfile's path; both files are written atomically.
    """
    if not output_dir.is_dir():
        raise ConfigError(f"The Ollama export folder {output_dir} does not exist; convert the GGUF into it first.")
    for file in (gguf_name, adapter_gguf):
        if file is not None and file.endswith(".gguf") and not (output_dir / file).is_file():
            raise ConfigError(f"{output_dir / file} does not exist: the Modelfile would point at a missing GGUF.")
    name = _model_name(output_dir) if name is None else name
    if not _MODEL_NAME.fullmatch(name):
        raise ConfigError(f"'{name}' is not a valid Ollama model name: use letters, digits, '.', '-' and '_', "
                          "optionally NAMESPACE/NAME and :TAG. Set `name` in the config.")
    text = modelfile_text(gguf_name, template, tokenizer, context_length, adapter_gguf=adapter_gguf, system=system,
                          sampling=sampling)
    modelfile = output_dir / "Modelfile"
    write_text(modelfile, text)
    write_text(output_dir / "README.md", _readme(name, template))
    return modelfile


def quote(value: str, key: str) -> str:
    """`value` quoted so Ollama's Modelfile parser reads it back unchanged: in triple quotes if it spans lines.

    The Modelfile syntax has no escapes, so raises ConfigError (naming `key`) for a value neither form can hold: a
    line ending in three double quotes, or an unprintable character, which the parser drops.
    """
    forms = (f'"""{value}"""', f'"{value}"') if "\n" in value else (f'"{value}"', f'"""{value}"""')
    for quoted in forms:
        if _modelfile_value(quoted) == value:
            return quoted
    raise ConfigError(f"The Modelfile cannot hold this `{key}` value: Ollama's Modelfile syntax has no escapes, so a "
                      "line may not end in three double quotes and control characters other than tab and newline are "
                      f"dropped. Change the value: {value!r}")


def _modelfile_value(quoted: str) -> str | None:
    """What Ollama reads from `quoted` written after a command, or None if its value ends elsewhere.

    Mirrors parser/parser.go (ParseFile, unquote): a value ends at the first line break where the text so far,
    trimmed, is unquoted or a whole quoted string; other unprintable characters are dropped.
    """
    buffer = []
    for index, char in enumerate(quoted + "\n"):
        if char in "\r\n \t":
            value = _unquote("".join(buffer).strip())
            if value is not None and char in "\r\n":
                return value if index == len(quoted) else None
            buffer.append(char)
        elif char.isprintable():
            buffer.append(char)
    return None


def _unquote(text: str) -> str | None:
    if text.startswith('"""'):
        return text[3:-3] if len(text) >= 6 and text.endswith('"""') else None
    if text.startswith('"'):
        return text[1:-1] if len(text) >= 2 and text.endswith('"') else None
    return text


def _local(file: str) -> str:
    """A file beside the Modelfile as Ollama resolves it: relative to the Modelfile, so `./name.gguf`, never `.`."""
    if not file.endswith(".gguf") or Path(file).is_absolute() or file.startswith("./"):
        return file
    return f"./{file}"


def _stop_strings(template: Template, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The template's end-of-turn strings, and the eos token where the template ends turns with it."""
    stops = list(template.stop_words)
    if "eos_token" in template.jinja and tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def _check_sampling(sampling: dict[str, float]) -> dict[str, float]:
    for key, value in sampling.items():
        if key not in SAMPLING_PARAMETERS:
            close = difflib.get_close_matches(key, SAMPLING_PARAMETERS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known ones: {', '.join(SAMPLING_PARAMETERS)}."
            raise ConfigError(f"Unknown Ollama sampling parameter '{key}'.{hint}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Ollama sampling parameter '{key}' must be a number, got {value!r}.")
    return sampling


def _model_name(output_dir: Path) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", output_dir.resolve().name.lower()).strip("-._") or "lorakit-model"


def _readme(name: str, template: Template) -> str:
    return f"""# {name}

A GGUF with its Ollama Modelfile, written by lorakit. The Modelfile's TEMPLATE renders prompts exactly as the model
saw them in training (template `{template.name}`), with its stop strings, context length and system prompt.

```bash
ollama create {name} -f Modelfile
ollama run {name}
```

Run the commands in this folder: the Modelfile names its GGUF files relative to itself. Recent Ollama versions may
render prompts with the chat template embedded in the GGUF instead of the Modelfile's TEMPLATE; both are the training
template. To use the Modelfile's TEMPLATE in every case, start the server with `OLLAMA_GO_TEMPLATE=1 ollama serve`.
"""
