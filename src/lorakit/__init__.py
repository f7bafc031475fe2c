"""lorakit: LoRA fine-tuning of open language models, from a dataset file to a working adapter, offline."""

__version__ = "0.1.0"
