"""lorakit: LoRA fine-tuning of open language models, from a dataset file to a working adapter, offline."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns on import that it cannot fetch an optional CPU kernel from the hub; its built-in fallback
# works, and the user can do nothing about it offline, so the warning is noise on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
