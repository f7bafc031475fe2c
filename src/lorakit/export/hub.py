"""Hub stage: `upload_to_hub()` puts a run, an adapter, a merged model or GGUF files in a Hugging Face Hub model
repository, with a model card, in one commit.

The source is only read: the card (README.md) is uploaded from memory, so nothing is written beside the weights.
The card and the file list are built before any network call, so a dry run shows exactly what an upload sends.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.bundled import BUNDLED
from lorakit.config.export import GGUF_OUTTYPES, HubConfig
from lorakit.errors import ConfigError, LorakitError
from lorakit.runs import (ADAPTER_DIR, CHECKPOINT_DIR, MODEL_DIR, SETTINGS_FILE, Run, model_card, open_run,
                          read_json_dict, template_from_dict)
from lorakit.templates import Template

if TYPE_CHECKING:
    from lorakit.config import TrainConfig

README = "README.md"
# Small files of a run folder worth having beside the weights; config.yaml and manifest.json name local paths.
RUN_EXTRAS = ("loss.png", "metrics.json")
# Trainer leftovers that may sit in a weights folder: optimizer state, RNG state, arguments holding local paths.
_NEVER_UPLOADED = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin", "trainer_state.json")
ACCEPTED = ("a lorakit run folder (the training output_dir), an adapter folder (adapter_config.json), a model folder "
            "(config.json and *.safetensors, e.g. from `lorakit merge`), a .gguf file, or a folder of .gguf files "
            "(e.g. from `lorakit export ollama`)")
# The Hub's license ids for the licences of lorakit's bundled models.
_HUB_LICENSES = {"Apache-2.0": "apache-2.0", "Gemma Terms of Use": "gemma"}


@dataclass(frozen=True)
class HubFile:
    """One file of an upload: its path in the repository and its size in bytes."""

    path: str
    size: int


@dataclass(frozen=True)
class HubUpload:
    """What `upload_to_hub` sent, or for a dry run would send: the files (README.md included) and the card.

    `url` is the repository's address, None for a dry run.
    """

    repo_id: str
    files: tuple[HubFile, ...]
    card: str
    url: str | None


@dataclass(frozen=True)
class _Plan:
    sources: dict[str, Path | bytes]  # path in the repository -> local file, or the bytes to send instead
    card: str


def upload_to_hub(config: HubConfig) -> HubUpload:
    """Upload `config.source` and a model card to the Hub model repository `config.repo_id` (created if missing).

    Returns the files and the card. A dry run uses no network and no token. Otherwise the token comes from HF_TOKEN
    or the saved `hf auth login` and goes to huggingface_hub only. Raises LorakitError when the Hub cannot be reached
    or refuses the token, ConfigError for a source it cannot upload; the source is never modified.
    """
    plan = _plan(config.source, config.repo_id)
    files = [HubFile(name, _size(source)) for name, source in plan.sources.items()]
    files.append(HubFile(README, len(plan.card.encode("utf-8"))))
    files.sort(key=lambda file: file.path)
    url = None if config.dry_run else _upload(plan, config)
    return HubUpload(config.repo_id, tuple(files), plan.card, url)


def _size(source: Path | bytes) -> int:
    return len(source) if isinstance(source, bytes) else source.stat().st_size


# --- what to upload -----------------------------------------------------------------------------------------------


def _plan(source: Path, repo_id: str) -> _Plan:
    source = source.expanduser()
    if not source.exists():
        raise ConfigError(f"{source} does not exist. Upload {ACCEPTED}.")
    if source.is_file():
        if source.suffix.lower() != ".gguf":
            raise ConfigError(f"{source} is a file but not a .gguf file. Upload {ACCEPTED}.")
        return _gguf_plan([source], {}, repo_id)
    ggufs = sorted(path for path in source.glob("*.gguf") if path.is_file())
    if ggufs and not _holds_hf_weights(source):
        extras = {name: source / name for name in ("Modelfile", SETTINGS_FILE) if (source / name).is_file()}
        return _gguf_plan(ggufs, extras, repo_id)
    try:
        run = open_run(source)
    except ConfigError:
        hint = (" It holds checkpoints only: the run did not finish; resume it with resume=true."
                if (source / CHECKPOINT_DIR).is_dir() else "")
        raise ConfigError(f"{source} holds nothing to upload (no adapter_config.json, config.json, {ADAPTER_DIR}/, "
                          f"{MODEL_DIR}/ or .gguf file). Upload {ACCEPTED}.{hint}") from None
    return _run_plan(run, repo_id)


def _holds_hf_weights(folder: Path) -> bool:
    return any((folder / sub / marker).is_file() for sub in ("", ADAPTER_DIR, MODEL_DIR)
               for marker in ("adapter_config.json", "config.json"))


def _run_plan(run: Run, repo_id: str) -> _Plan:
    sources: dict[str, Path | bytes] = {path.relative_to(run.weights_dir).as_posix(): path
                                        for path in _weights_files(run.weights_dir)}
    weights = ("adapter_model.safetensors", "adapter_model.bin") if run.is_adapter else ("*.safetensors", "*.bin")
    if not any(any(run.weights_dir.glob(pattern)) for pattern in weights):
        kind = "an adapter" if run.is_adapter else "a model"
        raise ConfigError(f"{run.weights_dir} looks like {kind} folder but holds no weights ({' or '.join(weights)}). "
                          f"Point at a folder that save_pretrained or `lorakit merge` wrote completely.")
    if run.folder is not None:
        for name in RUN_EXTRAS:
            if (run.folder / name).is_file():
                sources.setdefault(name, run.folder / name)
    for name, key in (("adapter_config.json", "base_model_name_or_path"), (SETTINGS_FILE, "base_model")):
        if name in sources:
            sources[name] = _without_local_base(run.weights_dir / name, key, _hub_id(run.base_model))
    return _Plan(sources, _run_card(run, repo_id))


def _without_local_base(path: Path, key: str, hub_id: str | None) -> Path | bytes:
    """The JSON file at `path`, or its bytes with a local base model path at `key` replaced by the base's `hub_id`
    (or the folder's bare name where lorakit knows none).

    PEFT records the folder the base model was loaded from (for bundled models, lorakit's cache); on the Hub that
    path would name this machine's folders and break AutoPeftModel, while the Hub id loads anywhere.
    """
    data = read_json_dict(path)
    value = data.get(key)
    if not isinstance(value, str) or not _is_local(value):
        return path
    return (json.dumps({**data, key: hub_id or Path(value).name}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _weights_files(folder: Path) -> list[Path]:
    """Every file under `folder` except the README (replaced by the card), checkpoints, trainer state and temp files."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or relative.as_posix() == README or _left_out(relative):
            continue
        found.append(path)
    return found


def _left_out(relative: Path) -> bool:
    if any(part.startswith((".", "checkpoint-")) or part in (CHECKPOINT_DIR, "__pycache__") or ".tmp" in part
           for part in relative.parts):
        return True  # hidden and temporary files (atomic writes), checkpoints
    name = relative.name
    return name in _NEVER_UPLOADED or name.startswith("rng_state") or name.endswith(".lock")


def _gguf_plan(ggufs: list[Path], extras: dict[str, Path], repo_id: str) -> _Plan:
    settings = read_json_dict(extras[SETTINGS_FILE]) if SETTINGS_FILE in extras else {}
    sources: dict[str, Path | bytes] = {path.name: path for path in ggufs}
    if "Modelfile" in extras:
        sources["Modelfile"] = _modelfile_without_local_paths(extras["Modelfile"])
    if SETTINGS_FILE in extras:
        sources[SETTINGS_FILE] = _without_local_base(extras[SETTINGS_FILE], "base_model",
                                                     _hub_id(settings.get("base_model")))
    return _Plan(sources, _gguf_card(ggufs, settings, repo_id))


def _modelfile_without_local_paths(path: Path) -> Path | bytes:
    """The Modelfile at `path`, or its bytes with FROM/ADAPTER lines that name an absolute path cut to `./NAME`."""
    text = path.read_text(encoding="utf-8")
    fixed = re.sub(r"(?im)^(FROM|ADAPTER)([ \t]+)([/~]\S*)[ \t]*$",
                   lambda match: f"{match[1]}{match[2]}./{Path(match[3]).name}", text)
    return path if fixed == text else fixed.encode("utf-8")


# --- the model card -----------------------------------------------------------------------------------------------


def _run_card(run: Run, repo_id: str) -> str:
    config = run.config
    base_model = config.model.name if config is not None else run.base_model
    method = config.finetuning if config is not None else run.settings.get("finetuning")
    tags = ["lorakit", "lora" if run.is_adapter else method or "fine-tuned"]
    front = _front_matter(_hub_id(base_model), "peft" if run.is_adapter else "transformers", tags,
                          _license(base_model))
    if config is not None and run.folder is not None:
        body = model_card(_public_config(config), read_json_dict(run.folder / "metrics.json"),
                          read_json_dict(run.folder / "manifest.json"), _saved_template(run, config), repo_id=repo_id)
    else:
        body = _plain_card(run, base_model, method, repo_id)
    return front + body


def _front_matter(base_model: str | None, library: str | None, tags: list[str], licence: str | None) -> str:
    """The YAML block the Hub reads for the model page: base model link, library, tags, licence."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(base_model=base_model, library_name=library, license=licence, tags=tags,
                         pipeline_tag="text-generation")
    return f"---\n{data.to_yaml()}\n---\n\n"


def _plain_card(run: Run, base_model: str | None, method: str | None, repo_id: str) -> str:
    """The card of a folder that came without its run (a copied adapter, a merged model)."""
    base_ref = _public_base(base_model)
    what = "LoRA adapter" if run.is_adapter else f"{method} fine-tune" if method else "model"
    lines = [f"# {repo_id}: {what} of {base_ref}", "",
             f"- Base model: `{base_ref}`" if base_model else "- Base model: not recorded with these weights"]
    if method:
        lines.append(f"- Method: {method}")
    lines += ["", "## Load it", ""]
    if run.is_adapter:
        lines += ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, "
                  "AutoTokenizer", "", f'base = AutoModelForCausalLM.from_pretrained("{base_ref}")',
                  f'model = PeftModel.from_pretrained(base, "{repo_id}")', "```"]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```"]
    lines += ["", "Made with lorakit.", ""]
    return "\n".join(lines)


def _gguf_card(ggufs: list[Path], settings: dict[str, Any], repo_id: str) -> str:
    base_model = settings.get("base_model")
    front = _front_matter(_hub_id(base_model), None, ["lorakit", "gguf", "llama.cpp", "ollama"],
                          _license(base_model))
    quants = {path.name: _quant_tag(path) for path in ggufs}
    lines = [f"# {repo_id}: GGUF" + (f" of a fine-tune of {_public_base(base_model)}" if base_model else ""), "",
             "GGUF weights for llama.cpp, LM Studio and Ollama, made with lorakit.", "",
             "| file | quantization |", "|---|---|",
             *[f"| {name} | {quant or '-'} |" for name, quant in quants.items()], "", "## Run it", ""]
    tags = [""] if len(ggufs) == 1 else [f":{quant}" for quant in dict.fromkeys(quants.values()) if quant] or [""]
    lines += ["With llama.cpp:", "", "```sh", *[f"llama-cli -hf {repo_id}{tag}" for tag in tags], "```", "",
              "With Ollama:", "", "```sh", *[f"ollama run hf.co/{repo_id}{tag}" for tag in tags], "```", ""]
    return front + "\n".join(lines)


def _quant_tag(path: Path) -> str | None:
    """The quantisation a GGUF's file name names (model-Q4_K_M.gguf -> Q4_K_M), the tag llama.cpp and Ollama take."""
    for quant in sorted(GGUF_OUTTYPES, key=len, reverse=True):
        if re.search(rf"(^|[-_.]){re.escape(quant)}([-_.]|$)", path.stem, flags=re.IGNORECASE):
            return quant.upper()
    return None


def _public_config(config: TrainConfig) -> TrainConfig:
    """`config` with local paths cut to their names: a card on the Hub names no folder of this machine."""
    paths = tuple(Path(path).name if _is_local(path) else path for path in config.data.paths)
    model = config.model
    if _is_local(model.name):
        model = replace(model, name=_public_base(model.name))
    return replace(config, data=replace(config.data, paths=paths), model=model)


def _saved_template(run: Run, config: TrainConfig) -> Template:
    """The template as lorakit.json saved it; for older runs, the name and options config.yaml gives."""
    saved = run.settings.get("template")
    if isinstance(saved, dict) and saved.get("name"):
        return template_from_dict({"jinja": "", "stop_words": (), **saved})
    return Template(config.data.template, "", (), thinking=config.data.thinking, system=config.data.system)


def _hub_id(name: str | None) -> str | None:
    """`name` as a Hub model id (bundled names become their upstream), or None for a local folder or file."""
    if not name:
        return None
    if name in BUNDLED:
        return BUNDLED[name].upstream
    if _is_local(name) or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name):
        return None
    return name


def _public_base(name: str | None) -> str:
    hub_id = _hub_id(name)
    if hub_id:
        return hub_id
    return f"<the base model: {Path(name).name}>" if name else "<the base model>"


def _license(name: str | None) -> str | None:
    bundled = BUNDLED.get(name or "")
    return _HUB_LICENSES.get(bundled.licence) if bundled else None


def _is_local(name: str) -> bool:
    path = Path(name).expanduser()
    return path.is_absolute() or name.startswith((".", "~")) or path.suffix == ".gguf" or path.exists()


# --- the upload ---------------------------------------------------------------------------------------------------


def _upload(plan: _Plan, config: HubConfig) -> str:
    """Create the repository if needed and add every file in one commit; return the repository's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise _unreachable(config, "HF_HUB_OFFLINE is set")
    token = get_token()
    if not token:
        raise LorakitError("No Hugging Face token found, so nothing was uploaded. Make a token with write access at "
                           "https://huggingface.co/settings/tokens, then run `hf auth login` or set HF_TOKEN.")
    # One commit, not upload_folder + upload_file: the card comes from memory and the files from two folders (the
    # weights and the run around them), and a failed upload leaves the repository as it was.
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=source)
                  for name, source in plan.sources.items()]
    operations.append(CommitOperationAdd(path_in_repo=README, path_or_fileobj=plan.card.encode("utf-8")))
    api = HfApi(token=token)
    try:
        url = api.create_repo(config.repo_id, private=config.private, exist_ok=True)
        api.create_commit(config.repo_id, operations, commit_message=config.commit_message)
    except _unreachable_errors() as err:
        raise _unreachable(config, f"{type(err).__name__}: {err}") from None
    except HfHubHTTPError as err:
        raise _refused(config, err) from None
    return str(url)


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """Connection failures as huggingface_hub's HTTP client raises them (OfflineModeIsEnabled is a ConnectionError)."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for client in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(__import__(client).TransportError)
    return tuple(errors)


def _unreachable(config: HubConfig, why: str) -> LorakitError:
    return LorakitError(f"The Hugging Face Hub cannot be reached ({why}); nothing was uploaded to {config.repo_id}. "
                        "Connect to the internet (and unset HF_HUB_OFFLINE), or use dry_run=true to see what would be "
                        "uploaded.")


def _refused(config: HubConfig, err: Any) -> LorakitError:
    status = getattr(getattr(err, "response", None), "status_code", None)
    owner = config.repo_id.split("/")[0]
    if status == 401:
        return LorakitError("The Hugging Face Hub rejected the token (401): it is invalid or expired; nothing was "
                            "uploaded. Make a new write token at https://huggingface.co/settings/tokens and run "
                            "`hf auth login` or set HF_TOKEN.")
    if status == 403:
        return LorakitError(f"The Hugging Face Hub refused to write to {config.repo_id} (403): the token is "
                            f"read-only or may not create repositories under '{owner}'; nothing was uploaded. Use a "
                            "write token, or a repo_id under your own user name.")
    detail = getattr(err, "server_message", None) or str(err).splitlines()[0]
    return LorakitError(f"The Hugging Face Hub refused the upload to {config.repo_id} ({status}: {detail}); no "
                        "commit was made. Check the repo_id and try again.")


__all__ = ["ACCEPTED", "HubFile", "HubUpload", "upload_to_hub"]
