"""Run folders: what a training run leaves behind, `open_run()` to read one, its status, and its model card.

A run folder (a training config's `output_dir`) holds:

| path | what |
|---|---|
| `adapter/` (LoRA) or `model/` (full, freeze) | weights, the tokenizer with the training chat template, `lorakit.json` |
| `config.yaml` | the resolved TrainConfig (`lorakit train it` repeats the run) |
| `manifest.json`, `metrics.json`, `trainer_state.json`, `loss.png`, `README.md` | what was trained on, how it went |
| `status.json` | running, finished, interrupted or failed, with times |
| `progress.json`, `metrics.jsonl` | while training: the latest step, and every logged train/eval loss (one line each) |
| `job.json`, `<stage>.log` | a run started as a job (`lorakit.jobs`, the web UI): its process and its output |
| `checkpoints/` | Trainer checkpoints |

`lorakit.json` travels inside the weights folder, so a copied adapter still knows its base model and how it was
prompted: the template, the rendering options (`thinking`) and the system prompt used in training. Every stage that
reads a run (chat, predict, serve, eval, sweep, export, the web UI) goes through this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.errors import ConfigError
from lorakit.files import write_json, write_text
from lorakit.templates import TEMPLATES, Template

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lorakit.config import TrainConfig

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
SETTINGS_FILE = "lorakit.json"
STATUS_FILE = "status.json"
PROGRESS_FILE = "progress.json"
METRICS_LOG = "metrics.jsonl"
STATUSES = ("running", "finished", "interrupted", "failed")
_SETTINGS_FORMAT = 1


@dataclass(frozen=True)
class Run:
    """A trained model as lorakit finds it on disk: an adapter folder, a full model folder, or a run folder.

    `weights_dir` is what loads (PEFT's adapter folder or a Hugging Face model folder); `folder` is the run folder
    around it (None for an adapter copied out on its own); `settings` is its lorakit.json (empty for adapters made
    elsewhere).
    """

    weights_dir: Path
    folder: Path | None
    is_adapter: bool
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> TrainConfig | None:
        """The run's resolved TrainConfig (config.yaml), or None where the folder has none."""
        return saved_config(self.folder) if self.folder is not None else None

    @property
    def base_model(self) -> str | None:
        """The model the weights were trained from: lorakit.json, config.yaml, then PEFT's adapter_config.json."""
        if self.settings.get("base_model"):
            return str(self.settings["base_model"])
        config = self.config
        if config is not None:
            return config.model.name
        if self.is_adapter:
            peft = read_json_dict(self.weights_dir / "adapter_config.json")
            if peft.get("base_model_name_or_path"):
                return str(peft["base_model_name_or_path"])
        return None

    def require_base_model(self) -> str:
        """`base_model`, or a ConfigError that asks for `model.name` when the folder does not say."""
        name = self.base_model
        if name is None:
            raise ConfigError(f"Cannot tell which base model adapter {self.weights_dir} belongs to (no lorakit.json or "
                              "config.yaml beside it and no base_model_name_or_path in adapter_config.json). Name "
                              "the base model in model.name.")
        return name

    def template(self, tokenizer: PreTrainedTokenizerBase) -> Template | None:
        """The template the run was trained with, with its rendering options and system prompt, or None if unknown.

        `tokenizer` is the one loaded for inference: a saved template is trusted only while it still carries the
        same Jinja (someone may have replaced the chat template since).
        """
        saved = self.settings.get("template")
        if isinstance(saved, dict) and saved.get("jinja"):
            template = template_from_dict(saved)
        else:
            template = self._template_from_config()
        if template is None or template.jinja != getattr(tokenizer, "chat_template", None):
            return None
        return template

    def _template_from_config(self) -> Template | None:
        """Runs saved before lorakit.json: the built-in named in config.yaml, with its thinking and system options."""
        config = self.config
        if config is None or config.data.template not in TEMPLATES:
            return None
        return replace(TEMPLATES[config.data.template], thinking=config.data.thinking, system=config.data.system)


def saved_config(run_dir: Path) -> TrainConfig | None:
    """The resolved TrainConfig a run saved as config.yaml, or None where there is none."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    from lorakit.config import load_config

    try:
        return load_config(path)
    except ConfigError as err:
        raise ConfigError(f"{path} cannot be read as a lorakit config ({err}). It may come from another lorakit "
                          "version; fix the key it names.") from None


def open_run(path: Path) -> Run:
    """The trained model at `path`: a run folder (its `adapter/` or `model/`), an adapter folder or a model folder.

    Raises ConfigError when the path does not exist or holds neither.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{path} does not exist. Point at a lorakit run folder (the training output_dir), the "
                          "`adapter/` folder inside it, or a folder holding adapter_config.json.")
    for weights_dir, is_adapter in ((path, True), (path / ADAPTER_DIR, True), (path, False), (path / MODEL_DIR, False)):
        marker = "adapter_config.json" if is_adapter else "config.json"
        if (weights_dir / marker).is_file():
            folder = weights_dir.parent if weights_dir != path else _run_folder_around(path)
            return Run(weights_dir, folder, is_adapter, read_json_dict(weights_dir / SETTINGS_FILE))
    hint = " It holds checkpoints only: the run did not finish; resume it with resume=true." \
        if (path / CHECKPOINT_DIR).is_dir() else ""
    raise ConfigError(f"{path} is not a LoRA adapter folder (no adapter_config.json), a model folder (no config.json) "
                      f"or a lorakit run folder (no {ADAPTER_DIR}/ or {MODEL_DIR}/).{hint}")


def find_adapter_dir(path: Path) -> Path:
    """The adapter folder at `path` (a run folder means its `adapter/`); ConfigError for anything else."""
    run = open_run(path)
    if not run.is_adapter:
        raise ConfigError(f"{path} is not a LoRA adapter folder: it holds a full model ({run.weights_dir}). Load it "
                          "as the model itself (model.name) instead of as an adapter.")
    return run.weights_dir


def adapter_base_model(adapter_dir: Path) -> str:
    """The base model an adapter was trained on (see `Run.base_model`); ConfigError when nothing says."""
    return open_run(adapter_dir).require_base_model()


def _run_folder_around(weights_dir: Path) -> Path | None:
    parent = weights_dir.parent
    return parent if weights_dir.name in (ADAPTER_DIR, MODEL_DIR) and (parent / "config.yaml").is_file() else None


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object saved in a run (metrics, manifest, settings…): {} where the file is absent or not an object;
    ConfigError naming the file where it is not valid JSON."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}). Restore it from the run, or delete it.") from None
    return data if isinstance(data, dict) else {}


def template_to_dict(template: Template) -> dict[str, Any]:
    return {**asdict(template), "stop_words": list(template.stop_words)}


def template_from_dict(saved: dict[str, Any]) -> Template:
    known = Template.__dataclass_fields__
    values = {key: value for key, value in saved.items() if key in known}
    return Template(**{**values, "stop_words": tuple(values.get("stop_words") or ())})


def write_settings(weights_dir: Path, base_model: str, finetuning: str, template: Template) -> None:
    """Save lorakit.json in the weights folder: base model, method and the template with its rendering options."""
    write_json(weights_dir / SETTINGS_FILE, {"format": _SETTINGS_FORMAT, "base_model": base_model,
                                             "finetuning": finetuning, "template": template_to_dict(template)})


def check_same_base(adapter_dir: Path, model: PreTrainedModel, base_name: str) -> None:
    """ConfigError when the adapter at `adapter_dir` was trained on another base model than `model`.

    Shapes are the reliable signal: the same names with other sizes mean another base model."""
    import torch
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    modules = dict(model.named_modules())
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module = modules.get(key.split(".lora_")[0].removeprefix("base_model.model."))
            if module is None or not _fits(module, key, handle.get_slice(key).get_shape(), torch):
                trained_on = open_run(adapter_dir).base_model or "another model"
                raise ConfigError(f"Adapter {adapter_dir} was trained on {trained_on}, not on {base_name}: its "
                                  f"weight {key} does not fit this model. Load it with the base model it was "
                                  "trained on (see the adapter's README.md).")


def _fits(module: torch.nn.Module, key: str, shape: list[int], torch: Any) -> bool:
    if not isinstance(module, torch.nn.Linear):
        return True
    expected = module.in_features if ".lora_A." in key else module.out_features
    return expected == (shape[1] if ".lora_A." in key else shape[0])


# --- status -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands: `state` is one of STATUSES; `detail` says why it failed or stopped."""

    state: str
    started: str | None = None
    ended: str | None = None
    detail: str | None = None


@contextlib.contextmanager
def track_status(run_dir: Path) -> Iterator[None]:
    """Record in status.json that a run is running, then whether it finished, was interrupted or failed.

    Ctrl-C (KeyboardInterrupt) counts as interrupted; any other exception as failed, with its message. A process
    killed outright leaves "running" behind, which `run_status` reads as interrupted once that process is gone.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    started = _now()
    write_json(run_dir / STATUS_FILE, {"state": "running", "started": started, "pid": os.getpid(),
                                       "host": socket.gethostname()})
    state, detail = "failed", None
    try:
        yield
        state = "interrupted" if read_json_dict(run_dir / "metrics.json").get("stopped") else "finished"
        detail = "stopped on request before the last step" if state == "interrupted" else None
    except KeyboardInterrupt:
        state, detail = "interrupted", "interrupted (Ctrl-C)"
        raise
    except BaseException as err:
        detail = f"{type(err).__name__}: {err}"
        raise
    finally:
        write_json(run_dir / STATUS_FILE, {"state": state, "started": started, "ended": _now(), "detail": detail})


def run_status(run_dir: Path) -> RunStatus:
    """The status of the run at `run_dir`, also for runs written before status.json existed."""
    saved = read_json_dict(run_dir / STATUS_FILE)
    if saved.get("state") == "running" and not _still_running(saved):
        return RunStatus("interrupted", saved.get("started"), None, "the training process ended without a word "
                         "(killed, or the machine stopped)")
    if saved.get("state") in STATUSES:
        return RunStatus(saved["state"], saved.get("started"), saved.get("ended"), saved.get("detail"))
    finished = (run_dir / "metrics.json").is_file() and any(
        (run_dir / sub / marker).is_file() for sub, marker in ((ADAPTER_DIR, "adapter_config.json"),
                                                                (MODEL_DIR, "config.json")))
    if finished:
        return RunStatus("finished")
    return RunStatus("interrupted" if (run_dir / CHECKPOINT_DIR).is_dir() else "failed")


def _still_running(saved: dict[str, Any]) -> bool:
    if saved.get("host") != socket.gethostname() or not isinstance(saved.get("pid"), int):
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(saved["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --- live progress ------------------------------------------------------------------------------------------------


class RunProgressFiles:
    """Receives a training run's `TrainProgress` events and keeps them on disk for readers in other processes.

    progress.json holds the latest event (rewritten at most every `interval` seconds, and on every logged or last
    step); metrics.jsonl gets one line per logged train/eval loss. `begin(step)` starts a session: lines past
    `step` (from a run stopped after its last checkpoint) are dropped, so a resumed run's curve has each step once.
    """

    def __init__(self, run_dir: Path, interval: float = 0.5) -> None:
        self.run_dir = run_dir
        self.interval = interval
        self._written = 0.0

    def begin(self, step: int) -> None:
        path = self.run_dir / METRICS_LOG
        kept = [entry for entry in read_metrics_log(self.run_dir) if entry.get("step", 0) <= step]
        write_text(path, "".join(json.dumps(entry) + "\n" for entry in kept))
        self._written = 0.0

    def __call__(self, event: Any) -> None:
        logged = {key: getattr(event, key) for key in ("loss", "eval_loss", "learning_rate")
                  if getattr(event, key, None) is not None}
        if logged:
            with (self.run_dir / METRICS_LOG).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": event.completed, **logged, "time": round(time.time(), 3)}) + "\n")
        now = time.monotonic()
        if logged or event.finished or now - self._written >= self.interval:
            self._written = now
            write_json(self.run_dir / PROGRESS_FILE, {**asdict(event), "time": round(time.time(), 3)})


def read_progress(run_dir: Path) -> dict[str, Any]:
    """The latest progress a training run wrote (step, total, elapsed and remaining seconds, tokens/s); {} if none."""
    try:
        return read_json_dict(Path(run_dir) / PROGRESS_FILE)
    except ConfigError:
        return {}  # a reader racing the writer on a filesystem without atomic rename sees the next one


def read_metrics_log(run_dir: Path) -> list[dict[str, Any]]:
    """Every logged train/eval loss of a run, in order: {"step", "loss" or "eval_loss", "learning_rate", "time"}.

    A line cut short (the writer was killed mid-line) is skipped."""
    path = Path(run_dir) / METRICS_LOG
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


# --- listing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """One line of `lorakit runs`."""

    path: Path
    status: RunStatus
    base_model: str | None
    method: str | None
    data: str | None
    steps: int | None
    train_loss: float | None
    eval_loss: float | None
    date: str | None
    modified: float


def is_run_folder(path: Path) -> bool:
    """Whether `path` is a training run's folder; an evaluation's report folder (status.json, config.yaml and
    report.json of `lorakit eval`) is not."""
    return path.is_dir() and not (path / "report.json").is_file() and any(
        (path / name).exists() for name in ("config.yaml", STATUS_FILE, ADAPTER_DIR, MODEL_DIR, CHECKPOINT_DIR))


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder directly under `root` (and `root` itself if it is one), newest first."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder. Point at the folder holding your runs (default: outputs).")
    candidates = [root] if is_run_folder(root) else []
    candidates += sorted(child for child in root.iterdir() if is_run_folder(child))
    summaries = [summarize_run(path) for path in candidates]
    return sorted(summaries, key=lambda summary: summary.modified, reverse=True)


def summarize_run(run_dir: Path) -> RunSummary:
    """What `lorakit runs` shows of one run; fields a damaged run lacks are None."""
    status = run_status(run_dir)
    metrics = read_json_dict(run_dir / "metrics.json")
    state = read_json_dict(run_dir / "trainer_state.json") or _last_checkpoint_state(run_dir)
    config = _read_config_dict(run_dir)
    model, data = config.get("model") or {}, config.get("data") or {}
    method = config.get("finetuning")
    if method == "lora" and config.get("lora"):
        method = f"lora r{config['lora'].get('rank')}"
    train_loss = metrics.get("train_loss", _last_logged(state, "loss"))
    return RunSummary(
        path=run_dir, status=status, base_model=model.get("name"), method=method,
        data=", ".join(data.get("paths") or []) or None,
        steps=state.get("global_step") if state else _last_checkpoint_step(run_dir),
        train_loss=train_loss, eval_loss=metrics.get("eval_loss", _last_logged(state, "eval_loss")),
        date=status.started or read_json_dict(run_dir / "manifest.json").get("created"),
        modified=max((p.stat().st_mtime for p in (run_dir, run_dir / STATUS_FILE, run_dir / "config.yaml")
                      if p.exists()), default=0.0))


def _read_config_dict(run_dir: Path) -> dict[str, Any]:
    """config.yaml as plain data: a listing shows what it can even of a config another version wrote."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _last_logged(state: dict[str, Any], key: str) -> float | None:
    values = [entry[key] for entry in state.get("log_history", []) if key in entry]
    return values[-1] if values else None


def _last_checkpoint_state(run_dir: Path) -> dict[str, Any]:
    """An interrupted run has no trainer_state.json of its own: its newest checkpoint's says how far it got."""
    step = _last_checkpoint_step(run_dir)
    return {} if step is None else read_json_dict(run_dir / CHECKPOINT_DIR / f"checkpoint-{step}" / "trainer_state.json")


def _last_checkpoint_step(run_dir: Path) -> int | None:
    steps = [int(p.name.rsplit("-", 1)[1]) for p in (run_dir / CHECKPOINT_DIR).glob("checkpoint-*")
             if p.name.rsplit("-", 1)[1].isdigit()]
    return max(steps, default=None)


def run_details(run_dir: Path) -> dict[str, Any]:
    """`lorakit runs show`: the status, manifest and metrics of one run, as data."""
    run_dir = Path(run_dir).expanduser()
    if not is_run_folder(run_dir):
        raise ConfigError(f"{run_dir} is not a lorakit run folder (no config.yaml, {STATUS_FILE}, {ADAPTER_DIR}/ or "
                          f"{MODEL_DIR}/). List the runs with `lorakit runs`.")
    return {"run": str(run_dir), "status": asdict(run_status(run_dir)),
            "metrics": read_json_dict(run_dir / "metrics.json"), "manifest": read_json_dict(run_dir / "manifest.json")}


# --- model card ---------------------------------------------------------------------------------------------------


def model_card(config: TrainConfig, metrics: dict[str, Any], manifest: dict[str, Any], template: Template,
               repo_id: str | None = None, merge_section: list[str] | None = None) -> str:
    """The README.md of a run and its weights folder (and of a Hub upload, with `repo_id`).

    Its "how to load" section names no local path: the base model by its hub id where lorakit knows it, and the
    weights as `repo_id` or "this folder". With `merge_section` (lines saying what was merged onto what), the card
    is a merged model's: that section comes before "Load it", which loads the folder without PEFT.
    """
    from lorakit.bundled import BUNDLED

    merged = merge_section is not None
    adapter = config.finetuning == "lora" and not merged
    bundled = BUNDLED.get(config.model.name)
    base_ref = base_reference(config.model.name)
    data = manifest.get("data", {})
    final = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    lines = [
        f"# {repo_id or config.output_dir.name}: {'merged ' if merged else ''}{config.finetuning} fine-tune of "
        f"{base_ref}",
        "",
        f"- Base model: `{base_ref}`" + (f" (lorakit's bundled `{config.model.name}`, whose weights are dequantised "
                                         f"from a {bundled.quantization} GGUF)" if bundled else ""),
        f"- Data: {', '.join(config.data.paths)} — {data.get('train_examples')} training examples, "
        f"{data.get('supervised_tokens')} supervised tokens"
        + (f", {data['validation_examples']} validation examples" if data.get("validation_examples") else ""),
        f"- Prompt format: template `{template.name}`, max_seq_len {config.data.max_seq_len}"
        + (f", thinking {'on' if template.thinking else 'off'}" if template.thinking is not None else "")
        + (f", system prompt {json.dumps(template.system, ensure_ascii=False)}" if template.system else ""),
        f"- Method: {_method(config)}",
        f"- Quantization: {config.model.quantization}",
        f"- Optimisation: lr {config.learning_rate} ({config.lr_scheduler}), batch {config.batch_size} x "
        f"{config.gradient_accumulation} accumulation, "
        + (f"{config.max_steps} steps" if config.max_steps else f"{config.epochs} epochs") + f", seed {config.seed}",
        "",
        "## Final metrics",
        "",
        *[f"- {key}: {value}" for key, value in final.items()],
        "",
        *(merge_section or []),
        "## Load it",
        "",
        _how_to_load(adapter, base_ref, f'"{repo_id}"' if repo_id else '"<this folder>"'),
        "The tokenizer saved here carries the chat template used in training: prompt with "
        "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`"
        + (f" and `enable_thinking={template.thinking}`" if template.thinking is not None else "")
        + (" and put the system prompt above first when a conversation has none" if template.system else "") + ".",
        "",
        f"Trained with lorakit {manifest.get('lorakit_version')}, transformers "
        f"{manifest.get('packages', {}).get('transformers')}, peft {manifest.get('packages', {}).get('peft')}, "
        f"torch {manifest.get('packages', {}).get('torch')}.",
        "",
    ]
    return "\n".join(lines)


def base_reference(name: str) -> str:
    """How a card names a base model: its hub id where lorakit bundles it, never a path on this machine."""
    from lorakit.bundled import BUNDLED

    if name in BUNDLED:
        return BUNDLED[name].upstream
    if Path(name).expanduser().exists():
        return f"<the base model: {Path(name).name}>"
    return name


def _method(config: TrainConfig) -> str:
    preference = config.preference
    if config.stage in ("dpo", "kto"):
        start = (f"the adapter {config.adapter}, which is also the reference" if config.adapter
                 else f"a new adapter ({_adapter_method(config)}), the base model the reference")
        if config.stage == "kto":
            return (f"KTO, beta {preference.beta}, desirable weight {preference.desirable_weight}, undesirable "
                    f"weight {preference.undesirable_weight}; from {start}")
        return (f"DPO, beta {preference.beta}, loss {' + '.join(preference.losses)}"
                + (f" + {preference.sft_weight} x SFT" if preference.sft_weight else "") + f"; from {start}")
    if config.stage == "pt":
        return (f"continued pretraining (documents as {config.data.packing} of {config.data.max_seq_len} tokens), "
                f"{_adapter_method(config)}")
    start = f"the adapter {config.adapter}" if config.adapter else f"a new adapter ({_adapter_method(config)})"
    if config.stage == "orpo":
        return f"ORPO (no reference model), lambda (beta) {preference.beta}; from {start}"
    if config.stage == "simpo":
        return (f"SimPO (no reference model), beta {preference.beta}, gamma {preference.simpo_gamma}"
                + (f" + {preference.sft_weight} x SFT" if preference.sft_weight else "") + f"; from {start}")
    return _adapter_method(config)


def _adapter_method(config: TrainConfig) -> str:
    if config.finetuning != "lora":
        return config.finetuning
    lora = config.lora
    return (f"lora, rank {lora.rank}, alpha {lora.alpha}, dropout {lora.dropout}, targets {', '.join(lora.targets)}"
            + (", rsLoRA" if lora.rslora else "") + (", DoRA" if lora.dora else "")
            + (f", LoRA+ ratio {lora.loraplus_ratio}" if lora.loraplus_ratio else ""))


def _how_to_load(adapter: bool, base_ref: str, weights_ref: str) -> str:
    if adapter:
        return ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"base = AutoModelForCausalLM.from_pretrained(\"{base_ref}\")\n"
                f"model = PeftModel.from_pretrained(base, {weights_ref})\n"
                f"tokenizer = AutoTokenizer.from_pretrained({weights_ref})\n```\n")
    return ("```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained({weights_ref})\n"
            f"tokenizer = AutoTokenizer.from_pretrained({weights_ref})\n```\n")


__all__ = ["ADAPTER_DIR", "CHECKPOINT_DIR", "METRICS_LOG", "MODEL_DIR", "PROGRESS_FILE", "Run", "RunProgressFiles",
           "RunStatus", "RunSummary", "SETTINGS_FILE", "STATUSES", "adapter_base_model", "base_reference",
           "check_same_base", "find_adapter_dir", "list_runs", "model_card", "open_run", "read_json_dict",
           "read_metrics_log", "read_progress", "run_details", "run_status", "saved_config", "summarize_run",
           "track_status", "write_settings"]
