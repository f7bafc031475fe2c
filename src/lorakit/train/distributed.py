"""Several processes (`torchrun`, `accelerate launch`): `join_processes()`, and what the processes agree on.

lorakit launches nothing and builds no process group of its own. The launcher sets WORLD_SIZE, RANK and LOCAL_RANK;
accelerate's PartialState, the one the Trainer uses, joins the processes (gloo on the CPU, NCCL on CUDA); the Trainer
wraps the model in DDP (or FSDP or DeepSpeed, from an accelerate config file), gives each process its share of every
batch, so an optimizer step sees batch_size x processes x gradient_accumulation examples, and all-reduces the
gradients. Only the main process (rank 0) writes the run folder; the others wait for it at the end. Started as one
plain process, all of this is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch.distributed as dist

from lorakit.model import resolve_device

if TYPE_CHECKING:
    from accelerate import PartialState

    from lorakit.config import TrainConfig


def join_processes(config: TrainConfig) -> PartialState:
    """The processes of this run (one, unless a launcher started several), joined for `config.model.device`.

    On a CUDA device each process also takes its own GPU (LOCAL_RANK) as the current one, so the model loads there.
    """
    from accelerate import PartialState

    return PartialState(cpu=resolve_device(config.model.device).type == "cpu")


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Whether this process writes the run folder: rank 0 of several, or the only one."""
    return not _is_distributed() or dist.get_rank() == 0


def local_process_count() -> int:
    """How many of the run's processes share this machine (and its RAM)."""
    if not _is_distributed():
        return 1
    from accelerate.utils import get_cpu_distributed_information

    return max(1, get_cpu_distributed_information().local_world_size)


def smallest_on_every_process(value: int) -> int:
    """The smallest `value` any process holds: a micro-batch that fits on every rank."""
    return min(_gathered(value)) if _is_distributed() else value


def true_on_any_process(flag: bool) -> bool:
    """True on every process as soon as one holds True (a stop signal), so all leave the loop at the same step."""
    return any(_gathered(flag)) if _is_distributed() else flag


@contextlib.contextmanager
def ending_together() -> Iterator[None]:
    """Leave the block only once every process has finished it (the main process writing the run folder).

    No wait after an error: the processes that are still fine fail on their next collective instead.
    """
    yield
    if _is_distributed():
        dist.barrier()


def _gathered(value: object) -> list:
    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values
