"""Progress reporting: every stage's events reach a caller's function, the terminal shows them, errors end a bar."""

from __future__ import annotations

import pytest

from lorakit.progress import ProgressEvent, TerminalProgress, TrainProgress, reporter, track, tracked


def test_tracked_reports_start_each_item_and_a_finished_event():
    events: list[ProgressEvent] = []

    items = list(tracked(["a", "b", "c"], "demo", events.append, unit="sample"))

    assert items == ["a", "b", "c"]
    assert [(event.completed, event.finished) for event in events] == [(0, False), (1, False), (2, False),
                                                                       (3, False), (3, True)]
    assert {(event.stage, event.total, event.unit) for event in events} == {("demo", 3, "sample")}
    assert events[0].remaining_seconds is None and events[-1].remaining_seconds == 0.0
    assert all(event.elapsed_seconds >= 0 for event in events)


def test_track_counts_work_done_before_and_finishes_on_an_error():
    events: list[ProgressEvent] = []

    with pytest.raises(RuntimeError, match="boom"), track("resumed", 10, events.append, completed=4) as advance:
        advance(2)
        raise RuntimeError("boom")

    assert [event.completed for event in events] == [4, 6, 6]
    assert events[-1].finished


def test_reporter_resolves_the_progress_argument():
    def mine(event: ProgressEvent) -> None:
        pass

    assert reporter(False) is None
    assert isinstance(reporter(True), TerminalProgress)
    assert reporter(mine) is mine
    with track("quiet", 3, False) as advance:
        advance(3)  # nothing to report to, nothing raised


def test_terminal_prints_training_log_lines_and_the_final_bar_on_stderr(capsys):
    terminal = TerminalProgress()
    terminal(TrainProgress("train", 0, 3, "step"))
    terminal(TrainProgress("train", 1, 3, "step", 1.0, 2.0, tokens_per_second=10.0))
    terminal(TrainProgress("train", 1, 3, "step", 1.0, 2.0, loss=1.5, learning_rate=1e-3, tokens_per_second=10.0))
    terminal(TrainProgress("train", 3, 3, "step", 3.0, 0.0, finished=True))

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "step 1/3  loss 1.5000  lr 1.00e-03  10 tok/s" in captured.err
    assert captured.err.count("step 1/3") == 1  # a plain step advances the bar and prints no line
    assert "3/3" in captured.err  # not a terminal: the final bar is printed once

