"""Progress reporting for every stage: each stage sends `ProgressEvent`s to one function, `OnProgress`.

A stage takes `progress: ProgressTarget`: True draws a bar on the terminal (`TerminalProgress`), False reports
nothing, and a function (a web UI's) receives every event instead. Loops report through `track()` or `tracked()`;
training sends `TrainProgress`, which adds the loss, learning rate and throughput.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ProgressEvent:
    """Where a stage stands: `completed` of `total` units (`unit`: "batch", "sample", "step").

    `elapsed_seconds` counts from the stage's start; `remaining_seconds` extrapolates the pace so far (None until
    one unit is done). The last event of a stage has `finished` set, also when the stage ended with an error.
    """

    stage: str
    completed: int
    total: int
    unit: str = "batch"
    elapsed_seconds: float = 0.0
    remaining_seconds: float | None = None
    finished: bool = False

    def describe(self) -> str:
        """The numbers worth a printed line, or "" for a plain advance."""
        return ""


@dataclass(frozen=True)
class TrainProgress(ProgressEvent):
    """A training event: `completed` optimizer steps of `total`, the stage is "train" and the unit "step".

    `loss` (mean training loss since the previous log), `learning_rate` and `eval_loss` are set on the events of
    logging steps (`logging_steps`, and evaluations) and None between them. `tokens_per_second` counts the input
    tokens (padding excluded) of this session. The finished event has `stopped` set when a stop signal ended the run.
    """

    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    stopped: bool = False

    def describe(self) -> str:
        if self.loss is None and self.eval_loss is None and self.learning_rate is None:
            return ""
        parts = [f"loss {self.loss:.4f}" if self.loss is not None else "",
                 f"eval {self.eval_loss:.4f}" if self.eval_loss is not None else "",
                 f"lr {self.learning_rate:.2e}" if self.learning_rate is not None else "",
                 f"{self.tokens_per_second:,.0f} tok/s" if self.tokens_per_second is not None else ""]
        return "  ".join(part for part in parts if part)


OnProgress = Callable[[ProgressEvent], None]
"""Receives a stage's events, in the stage's own thread: it should return quickly and not raise."""

ProgressTarget = bool | OnProgress
"""What a stage's `progress` parameter takes: True (terminal bar), False (nothing) or an `OnProgress`."""


def reporter(progress: ProgressTarget) -> OnProgress | None:
    """The function that receives events for `progress`: a new `TerminalProgress` for True, None for False."""
    if progress is True:
        return TerminalProgress()
    if progress is False:
        return None
    return progress


def remaining_seconds(elapsed: float, done: int, left: int) -> float | None:
    """Seconds still needed at the pace of `done` units in `elapsed` seconds; None before the first unit."""
    if done <= 0:
        return None
    return max(left, 0) * elapsed / done


@contextlib.contextmanager
def track(stage: str, total: int, progress: ProgressTarget, unit: str = "batch",
          completed: int = 0) -> Iterator[Callable[[int], None]]:
    """Report `stage` working through `total` units, `completed` of them done before; yield `advance(count)`.

    Sends a first event on entry, one per `advance()` and a finished one on exit (also on an error).
    """
    report = reporter(progress)
    if report is None:
        yield lambda count: None
        return
    started = time.monotonic()
    done = completed

    def event(finished: bool = False) -> ProgressEvent:
        elapsed = time.monotonic() - started
        return ProgressEvent(stage, done, total, unit, elapsed, remaining_seconds(elapsed, done - completed,
                                                                                  total - done), finished)

    def advance(count: int) -> None:
        nonlocal done
        done += count
        report(event())

    report(event())
    try:
        yield advance
    finally:
        report(event(finished=True))


def tracked(items: Sequence[T], stage: str, progress: ProgressTarget, unit: str = "batch") -> Iterator[T]:
    """Yield `items`, reporting one unit done as each item's loop body ends (`track()` for a plain for loop)."""
    with track(stage, len(items), progress, unit) as advance:
        for item in items:
            yield item
            advance(1)


class TerminalProgress:
    """Shows events on stderr: a rich bar per running stage, and a printed line per event that `describe()`s numbers.

    Not on a terminal (a file, a pipe), rich draws no live bar; a stage's final bar is printed once when it finishes.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True, highlight=False)
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage not in self._tasks:
            self._start(event)
        task = self._tasks[event.stage]
        line = event.describe()
        self._bar.update(task, completed=event.completed, total=event.total, **({"stats": line} if line else {}))
        if line:
            self._console.print(f"{event.unit} {event.completed}/{event.total}  {line}", markup=False)
        if event.finished:
            del self._tasks[event.stage]
            if not self._tasks:
                self._bar.stop()
                self._bar = None

    def _start(self, event: ProgressEvent) -> None:
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        if self._bar is None:
            self._bar = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=self._console)
            self._bar.start()
        self._tasks[event.stage] = self._bar.add_task(escape(event.stage), total=event.total,
                                                      completed=event.completed, stats="")

