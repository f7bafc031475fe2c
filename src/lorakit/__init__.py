"""lorakit: LoRA fine-tuning of open language models, from a dataset file to a working adapter, offline."""

import logging
import warnings

__version__ = "0.1.0"

# On CPUs with AVX-512 BF16, importing bitsandbytes (peft imports it) asks the hub for an optional 4-bit CPU kernel
# (through `kernels`, which transformers 5.25 installs). Offline that logs two warnings on every command: the kernel
# is missing, and kernels skipped its publisher check. bitsandbytes' built-in fallback works and the user can do
# nothing about either, so both are noise; other warnings of these modules still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _is_not_offline_trust_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Skipping publisher trust check")


logging.getLogger("kernels._internals.hf_hub").addFilter(_is_not_offline_trust_notice)


def hide_peft_deprecation_notice() -> None:
    """transformers 5.25 deprecates `is_gradient_checkpointing`, which PEFT reads whenever it wraps a model: a
    FutureWarning about PEFT's code, not the user's, in every training and chat command."""
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


hide_peft_deprecation_notice()
