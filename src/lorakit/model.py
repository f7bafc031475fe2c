"""Model stage: find a model by name (bundled, local folder, .gguf file or hub id), load it, attach LoRA.

`load_model()` and `load_tokenizer()` take a ModelConfig; `prepare_for_training()` makes the chosen parameters
trainable (LoRA adapters through PEFT, or freeze/full fine-tuning).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lorakit.bundled import BUNDLED, bundled_path, converted_gguf_path
from lorakit.config import LoraConfig, ModelConfig, TrainConfig
from lorakit.errors import ConfigError

NON_REENTRANT = {"use_reentrant": False}  # reentrant checkpointing breaks DDP with frozen inputs (LoRA)


def resolve_model_path(name: str) -> str:
    """A path (or hub id) that `from_pretrained` can open; bundled names and .gguf files are converted once."""
    if name in BUNDLED:
        return str(bundled_path(name))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file {path} does not exist.")
        return str(converted_gguf_path(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"Model folder {path} has no config.json; it is not a Hugging Face model folder. "
                              f"Point model.name at a folder from save_pretrained, a .gguf file, or one of: "
                              f"{', '.join(BUNDLED)}.")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ConfigError(f"Model '{name}' is not a bundled model ({', '.join(BUNDLED)}), an existing folder or "
                          "a .gguf file, nor a hub id of the form owner/name.")
    return name


def _hub_error(name: str, err: Exception) -> ConfigError:
    return ConfigError(f"Could not load '{name}' from the Hugging Face Hub ({type(err).__name__}). Offline? "
                       f"Download it where you have internet (`hf download {name} --local-dir DIR`) and set "
                       f"model.name=DIR, or use a bundled model: {', '.join(BUNDLED)}.")


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; an explicit device that is absent is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is 'cuda' but no CUDA GPU is visible; set model.device=auto or cpu.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("model.device is 'mps' but Apple MPS is not available; set model.device=auto or cpu.")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX) and torch may use them."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and not _isa_capped_below_bf16(os.environ)


# Instruction sets torch's CPU kernels (ATEN_CPU_CAPABILITY) and oneDNN's matmuls (ONEDNN_MAX_CPU_ISA) can be held to
# that have no bf16 arithmetic: there bf16 would be emulated, far slower than float32.
_CAPS_WITHOUT_BF16 = {"ATEN_CPU_CAPABILITY": {"default", "avx2"},
                      "ONEDNN_MAX_CPU_ISA": {"sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni"}}


def _isa_capped_below_bf16(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name, "").strip().lower() in capped for name, capped in _CAPS_WITHOUT_BF16.items())


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 where the hardware computes it natively, else float32."""
    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return torch.float32


def load_tokenizer(config: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (the EOS token when it has none)."""
    path = resolve_model_path(config.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    except OSError as err:
        raise _hub_error(config.name, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: ModelConfig) -> PreTrainedModel:
    """Load the model on the configured device and dtype; `quantization` 4bit/8bit loads it through bitsandbytes."""
    path = resolve_model_path(config.name)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    kwargs = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if config.quantization != "none":
        kwargs["quantization_config"] = bitsandbytes_config(config.quantization, dtype)
        kwargs["device_map"] = {"": _device_index(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise _hub_error(config.name, err) from None
    if config.quantization == "none":
        model.to(device)
    return model


def _device_index(device: torch.device) -> int | str:
    """Where a quantized model loads: "cuda" is the current GPU, which under torchrun / accelerate launch each
    process has set to its own (LOCAL_RANK)."""
    if device.type != "cuda":
        return device.type
    return device.index if device.index is not None else torch.cuda.current_device()


def bitsandbytes_config(quantization: str, dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ConfigError(f"model.quantization={quantization} needs bitsandbytes: `pip install bitsandbytes` "
                          "(or `pip install lorakit[quant]`).") from None
    if quantization == "4bit":
        # FSDP shards parameters of one dtype: packed 4-bit weights then live in the compute dtype, not uint8.
        storage = dtype if _launched_with_fsdp() else torch.uint8
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=storage)
    return BitsAndBytesConfig(load_in_8bit=True)


def _launched_with_fsdp() -> bool:
    """Whether `accelerate launch` started this process with an FSDP config (configs/accelerate/fsdp.yaml)."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def prepare_for_training(model: PreTrainedModel, config: TrainConfig) -> PreTrainedModel:
    """Make the parameters chosen by `config.finetuning` trainable; LoRA returns a PEFT model."""
    if config.finetuning == "lora":
        return attach_lora(model, config.lora, quantized=config.model.quantization != "none",
                           gradient_checkpointing=config.gradient_checkpointing)
    if config.model.quantization != "none":
        raise ConfigError(f"finetuning={config.finetuning} cannot train a {config.model.quantization}-quantized "
                          "model; use finetuning=lora (QLoRA) or model.quantization=none.")
    if config.finetuning == "full":
        model.float()  # optimizer updates need fp32 master weights
        model.requires_grad_(True)
        return model
    _freeze_all_but_last_layers(model, config.freeze_trainable_layers)
    return model


def _freeze_all_but_last_layers(model: PreTrainedModel, count: int) -> None:
    layers = _decoder_layers(model)
    if not 0 < count <= len(layers):
        raise ConfigError(f"freeze_trainable_layers must be between 1 and {len(layers)} (the model's layers), "
                          f"got {count}.")
    model.requires_grad_(False)
    for layer in layers[-count:]:
        layer.float()
        layer.requires_grad_(True)


def _decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == model.config.num_hidden_layers:
            return module
    raise ConfigError(f"Cannot find the decoder layers of {type(model).__name__} for freeze fine-tuning.")


def to_peft_config(config: LoraConfig):
    """lorakit's LoraConfig as PEFT's."""
    from peft import LoraConfig as PeftLoraConfig

    targets = "all-linear" if config.targets == ("all-linear",) else list(config.targets)
    return PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=targets, use_rslora=config.rslora, use_dora=config.dora,
                          task_type="CAUSAL_LM")


def attach_lora(model: PreTrainedModel, config: LoraConfig, quantized: bool = False,
                gradient_checkpointing: bool = False):
    """Wrap `model` in trainable LoRA adapters; the base weights stay frozen and unchanged."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=NON_REENTRANT)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=NON_REENTRANT)
        model.enable_input_require_grads()
    try:
        return get_peft_model(model, to_peft_config(config))
    except ValueError as err:
        names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                        if isinstance(module, torch.nn.Linear)})
        raise ConfigError(f"lora.targets={list(config.targets)} does not fit {type(model).__name__}: {err} "
                          f"Its linear modules are: {', '.join(names)}; or use all-linear.") from None
