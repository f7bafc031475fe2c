"""Training stage: `train()` fits LoRA adapters (or freeze/full fine-tuning); `run_training(config)` does the road.

run.py picks the stage; trainer.py holds stages sft and pt and what stages share; pretrain.py measures stage pt's
held-out perplexity; preference.py holds stages dpo, kto, orpo and simpo (TRL); packing.py removes padding (examples
concatenated, attention kept per example); loss.py computes the loss without materialising the full logits;
memory.py estimates memory before a run; lora_layers.py makes PEFT's LoRA layers cheaper on CPU; distributed.py is
what changes when torchrun or accelerate launch starts several processes.
"""

from lorakit.train.run import run_training, train
from lorakit.train.trainer import PreparedData, ProgressCallback, plot_loss, prepare_data

__all__ = ["PreparedData", "ProgressCallback", "plot_loss", "prepare_data", "run_training", "train"]
