"""Causal-LM loss without the full logits: the LM head and cross-entropy run only on supervised positions, in chunks.

A [tokens x vocab] logits tensor is the largest allocation of LoRA training on small models (SmolLM2: 49,152 columns;
Gemma 3: 262,144). With a frozen LM head (LoRA, freeze), the gradient for each chunk's hidden states is computed in
the forward pass and the chunk's logits are dropped at once: Liger's fused linear cross-entropy algorithm, written in
plain torch because Liger's kernels need Triton and a GPU, and lorakit's first users train on CPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Trainer

from lorakit.data.tokenize import IGNORE_INDEX

CHUNK_TOKENS = 1024


def chunked_lm_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module,
                    softcap: float | None = None, num_items: int | torch.Tensor | None = None,
                    chunk_tokens: int = CHUNK_TOKENS, workspace: LossWorkspace | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over supervised positions (the same value as transformers' loss).

    `hidden` is the final hidden state [batch, seq, dim]; `labels` [batch, seq] uses IGNORE_INDEX for no loss.
    `num_items` (supervised tokens across gradient-accumulation steps) replaces the local count, as in Trainer.
    `workspace` keeps the logits buffers from call to call (training loops pass one for the whole run).
    """
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    states = hidden[:, :-1][keep]
    targets = shifted[keep]
    if isinstance(num_items, torch.Tensor):
        count = num_items.to(hidden.device).clamp(min=1).float()
    else:
        count = torch.tensor(float(max(num_items if num_items is not None else targets.numel(), 1)))
    plain_head = type(lm_head) is torch.nn.Linear and lm_head.bias is None
    if plain_head:
        states = states.to(lm_head.weight.dtype)  # autocast leaves the last norm's output in fp32
    liger = _liger_loss(softcap) if plain_head and states.is_cuda else None
    if liger is not None:
        return liger(lm_head.weight, states, targets) / count
    if uses_fused_loss(lm_head, softcap):
        return _FusedLinearCrossEntropy.apply(states, lm_head.weight, targets, chunk_tokens, workspace) / count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        piece, answer = states[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, piece, answer, lm_head, softcap, use_reentrant=False)
        else:
            total = total + _chunk_loss(piece, answer, lm_head, softcap)
    return total / count


def uses_fused_loss(lm_head: torch.nn.Module | None, softcap: float | None) -> bool:
    """Whether the loss on CPU takes the fused path (frozen plain head, no softcap), else the checkpointed one."""
    return (type(lm_head) is torch.nn.Linear and lm_head.bias is None and not lm_head.weight.requires_grad
            and not softcap)


def _liger_loss(softcap: float | None):
    """Liger's Triton fused linear cross-entropy, when it is installed (CUDA only)."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum", softcap=softcap)


def _chunk_loss(states: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module,
                softcap: float | None) -> torch.Tensor:
    logits = lm_head(states).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


class LossWorkspace:
    """The logits buffers of `_FusedLinearCrossEntropy`, kept for a whole run and reused by every chunk and step.

    A chunk's logits are 100 MB to 1.5 GB; allocated afresh each time, every new largest batch grows the heap and
    faults its pages in again (measured 0.6 s for one SmolLM2 step of 732 supervised tokens). Capacity grows in
    steps of 256 rows as larger chunks arrive; `release()` drops the buffers.
    """

    ROWS_STEP = 256

    def __init__(self) -> None:
        self._logits: torch.Tensor | None = None
        self._float_logits: torch.Tensor | None = None

    def release(self) -> None:
        self._logits = self._float_logits = None

    def views(self, rows: int, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows x vocab] logits in the weight's dtype and in fp32 (the same tensor when the weight is fp32)."""
        logits = self._logits
        if (logits is None or logits.shape[0] < rows or logits.shape[1] != weight.shape[0]
                or logits.dtype != weight.dtype or logits.device != weight.device):
            self._logits = self._float_logits = logits = None  # free the old buffers before allocating new ones
            capacity = -(-rows // self.ROWS_STEP) * self.ROWS_STEP
            self._logits = torch.empty(capacity, weight.shape[0], dtype=weight.dtype, device=weight.device)
            self._float_logits = (self._logits if weight.dtype == torch.float32 else
                                  torch.empty(capacity, weight.shape[0], dtype=torch.float32, device=weight.device))
        logits = self._logits[:rows]
        return (logits, logits) if self._float_logits is self._logits else (logits, self._float_logits[:rows])


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `states @ weight.T`; the hidden-state gradient is made chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, states: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                workspace: LossWorkspace | None) -> torch.Tensor:
        workspace = workspace or LossWorkspace()
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        grad_states = torch.empty_like(states) if states.requires_grad else None
        for start in range(0, targets.numel(), chunk_tokens):
            piece = states[start:start + chunk_tokens]
            answer = targets[start:start + chunk_tokens]
            logits, log_probs = workspace.views(answer.numel(), weight)
            torch.mm(piece, weight.T, out=logits)
            if log_probs is not logits:
                log_probs.copy_(logits)
            torch.log_softmax(log_probs, dim=-1, out=log_probs)  # in place: row by row, read before written
            total += -log_probs.gather(1, answer[:, None]).sum()
            if grad_states is not None:
                # softmax - one-hot in fp32, then one cast copy: p - 1 rounded after the cast would vanish for
                # confident tokens (bf16 spacing near 1 is 2^-8), and torch.exp(fp32, out=bf16) is 3x slower.
                grad_logits = log_probs.exp_()
                grad_logits[torch.arange(answer.numel(), device=answer.device), answer] -= 1.0
                if logits is not log_probs:
                    grad_logits = logits.copy_(grad_logits)
                torch.mm(grad_logits, weight, out=grad_states[start:start + chunk_tokens])
        ctx.save_for_backward(grad_states)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_states,) = ctx.saved_tensors
        return grad_states * grad_output.to(grad_states.dtype), None, None, None, None


class ChunkedLossTrainer(Trainer):
    """The Hugging Face Trainer with `chunked_lm_loss` in place of the model's full-logits loss."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_workspace = LossWorkspace()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        # An empty index keeps transformers from computing any logits at all.
        nothing = torch.empty(0, dtype=torch.long, device=labels.device)
        outputs = model(**inputs, output_hidden_states=True, logits_to_keep=nothing, use_cache=False)
        causal_lm = self.accelerator.unwrap_model(model)
        if hasattr(causal_lm, "get_base_model"):
            causal_lm = causal_lm.get_base_model()
        loss = chunked_lm_loss(outputs.hidden_states[-1], labels, causal_lm.get_output_embeddings(),
                               softcap=getattr(causal_lm.config, "final_logit_softcapping", None),
                               num_items=num_items_in_batch, workspace=self.loss_workspace)
        # Normalised over the whole accumulated batch when Trainer counted it; mirror Trainer's own bookkeeping.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        inputs["labels"] = labels
        return (loss, outputs) if return_outputs else loss
