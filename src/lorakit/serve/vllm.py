"""Serving with engine 'vllm': the same model names through vLLM's OpenAI server, for a CUDA GPU.

`vllm_command()` builds the `vllm serve` command line (base model under its lorakit name, each adapter as a LoRA
module); `run_vllm()` checks that vLLM and CUDA are there and replaces this process with vLLM's server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from lorakit.config import ServeConfig
from lorakit.errors import ConfigError

# vLLM allocates LoRA slots of these ranks; --max-lora-rank must be one of them.
_VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_command(config: ServeConfig, executable: str = "vllm") -> list[str]:
    """The `vllm serve ...` argv serving `config.model` under its lorakit name and each adapter under its own."""
    from lorakit.model import resolve_model_path

    command = [executable, "serve", resolve_model_path(config.model.name),
               "--served-model-name", config.model.name, "--host", config.host, "--port", str(config.port),
               "--max-num-seqs", str(config.max_batch_size)]
    if config.model.dtype != "auto":
        command += ["--dtype", config.model.dtype]
    if config.model.trust_remote_code:
        command.append("--trust-remote-code")
    if config.adapters:
        command += ["--enable-lora", "--max-loras", str(len(config.adapters)),
                    "--max-lora-rank", str(_slot_rank(max(_rank(spec.path) for spec in config.adapters))),
                    "--lora-modules", *(f"{spec.name}={_adapter_dir(spec.path)}" for spec in config.adapters)]
    return command


def _adapter_dir(path) -> str:
    from lorakit.runs import find_adapter_dir

    return str(find_adapter_dir(path).resolve())


def _rank(path) -> int:
    config = json.loads((Path(_adapter_dir(path)) / "adapter_config.json").read_text())
    return max([int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def _slot_rank(rank: int) -> int:
    for slot in _VLLM_RANKS:
        if rank <= slot:
            return slot
    raise ConfigError(f"An adapter has rank {rank}; vLLM serves LoRA ranks up to {_VLLM_RANKS[-1]}. Set engine "
                      "to transformers, or retrain with a smaller lora.rank.")


def missing_for_vllm() -> list[str]:
    """What engine 'vllm' lacks here: the vllm package, a CUDA GPU, or both (empty when ready)."""
    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package (`pip install vllm`, on a Linux machine with a CUDA GPU)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (none is visible)")
    return missing


def run_vllm(config: ServeConfig) -> None:
    """Replace this process with vLLM's OpenAI server; ConfigError when vLLM or CUDA is missing."""
    missing = missing_for_vllm()
    executable = shutil.which("vllm")
    if not missing and executable is None:
        missing.append("the `vllm` command on PATH (reinstall vllm in this environment)")
    if missing:
        raise ConfigError(f"engine 'vllm' needs {' and '.join(missing)}. Set engine to transformers (the "
                          "default) to serve on this machine.")
    env = dict(os.environ)
    if config.api_key:
        env["VLLM_API_KEY"] = config.api_key  # not on the command line, where `ps` would show it
    command = vllm_command(config, executable)
    os.execvpe(command[0], command, env)
