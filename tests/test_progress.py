"""Progress reporting: every stage's events reach a caller's function, the terminal shows them, errors end a bar."""

from __future__ import annotations

import pytest

from lorakit.config import DataConfig
from lorakit.data.formats import Conversation
from lorakit.eval.generation import evaluate_generation
from lorakit.eval.perplexity import evaluate_perplexity
from lorakit.infer import GenerationConfig
from lorakit.progress import ProgressEvent, TerminalProgress, TrainProgress, reporter, track, tracked
from lorakit.templates import resolve_template

CONVERSATIONS = [
    Conversation("t:1", ({"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello there."})),
    Conversation("t:2", ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"})),
    Conversation("t:3", ({"role": "user", "content": "name?"}, {"role": "assistant", "content": "lumi"})),
]


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


def test_evaluation_stages_report_to_a_callback(tiny_model, tiny_tokenizer, tmp_path):
    chatml = resolve_template("chatml", tiny_tokenizer)
    events: list[ProgressEvent] = []

    evaluate_perplexity(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, DataConfig(), batch_size=2,
                        progress=events.append)
    evaluate_generation(tiny_model, tiny_tokenizer, chatml, CONVERSATIONS, tmp_path / "predictions.jsonl",
                        GenerationConfig(max_new_tokens=3, batch_size=2), progress=events.append)

    for stage in ("perplexity", "generate"):
        mine = [event for event in events if event.stage == stage]
        assert [event.completed for event in mine] == [0, 2, 3, 3], stage
        assert mine[-1].finished and mine[-1].total == 3 and mine[-1].unit == "sample"
