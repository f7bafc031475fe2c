"""Jobs: a `lorakit train` process started detached, watched from disk, stopped (whole process group) and resumed."""

import json
import os
import time

import pytest
import yaml

from lorakit.config import TrainConfig, load_config
from lorakit.errors import ConfigError
from lorakit.jobs import command_for, group_alive, job_in, list_jobs, resume_job, start_job, stop_job, wait_for_job
from lorakit.runs import read_metrics_log, read_progress, run_status

RECORDS = [{"instruction": f"say {w}", "output": f"{w}."} for w in ("hi", "yes", "no", "cat", "dog", "sun")]


def write_config(tmp_path, tiny_model_dir, **values) -> tuple:
    data = tmp_path / "train.json"
    data.write_text(json.dumps(RECORDS))
    run_dir = tmp_path / "outputs" / "run"
    config = {"model": {"name": str(tiny_model_dir), "dtype": "float32"},
              "data": {"paths": [str(data)], "template": "chatml"}, "lora": {"rank": 2},
              "output_dir": str(run_dir), "logging_steps": 1, "batch_size": 2, **values}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, run_dir


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # two `lorakit train` processes (~45 s on 2 cores)
def test_job_is_stopped_whole_then_resumed_to_the_end(tmp_path, tiny_model_dir):
    config_path, run_dir = write_config(tmp_path, tiny_model_dir, max_steps=100_000)
    job = start_job("train", config_path, run_dir)
    assert job.state == "running"
    first = wait_until(lambda: read_progress(run_dir).get("completed", 0) >= 2 and read_progress(run_dir), 180,
                       f"training steps (log: {(run_dir / 'train.log').read_text() if (run_dir / 'train.log').exists() else ''})")
    later = wait_until(lambda: read_progress(run_dir).get("completed", 0) > first["completed"] and read_progress(run_dir),
                       60, "the step counter to advance")
    assert later["total"] == 100_000
    with pytest.raises(ConfigError, match="still running"):
        start_job("train", config_path, run_dir)
    assert [j.folder for j in list_jobs(run_dir.parent)] == [run_dir]

    result = stop_job(run_dir)

    assert result.exited and not result.killed  # SIGTERM was enough: training saved a checkpoint and ended
    assert not group_alive(job.pid)
    assert job_in(run_dir).state == "stopped"
    assert run_status(run_dir).state == "interrupted"
    stopped_at = json.loads((run_dir / "metrics.json").read_text())
    assert stopped_at["stopped"] is True
    # By number: with epoch checkpoints kept beside it, "checkpoint-9" sorts after the stop's "checkpoint-10" as text.
    steps_saved = [int(path.name.split("-")[1]) for path in (run_dir / "checkpoints").glob("checkpoint-*")]
    assert steps_saved, "a stopped run keeps its last checkpoint"
    step = max(steps_saved)
    assert step >= later["completed"]
    losses = read_metrics_log(run_dir)
    assert losses and all("loss" in entry for entry in losses)

    resumed = resume_job(run_dir, [f"max_steps={step + 2}"])
    finished = wait_for_job(run_dir, 180)

    assert resumed.command[-1] == "resume=true"
    assert finished.state == "finished", (run_dir / "train.log").read_text()[-2000:]
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == step + 2
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    steps = [entry["step"] for entry in read_metrics_log(run_dir) if "loss" in entry]
    assert steps == sorted(set(steps)) and steps[-1] == step + 2  # each step once, through the resumed end


def test_job_command_repeats_the_config(tmp_path, tiny_model_dir):
    config_path, run_dir = write_config(tmp_path, tiny_model_dir, max_steps=3)
    command = command_for("train", config_path, ["lora.rank=4"])
    assert command[-3:] == ["train", str(config_path), "lora.rank=4"]
    assert load_config(config_path, command[-1:], TrainConfig).lora.rank == 4


def test_unknown_stage_and_missing_job_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="Unknown job stage 'bake'"):
        command_for("bake", tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="no job.json"):
        stop_job(tmp_path)
    with pytest.raises(ConfigError, match="no config.yaml"):
        resume_job(tmp_path)
    assert job_in(tmp_path) is None and list_jobs(tmp_path / "absent") == []


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path, monkeypatch):
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                      "time.sleep(600)\n")
    monkeypatch.setattr("lorakit.jobs.command_for", lambda stage, path, overrides=(): [os.sys.executable, str(path)])
    run_dir = tmp_path / "run"
    job = start_job("train", script, run_dir)
    wait_until(lambda: "ready" in (run_dir / "train.log").read_text(), 30, "the process to start")

    result = stop_job(run_dir, grace_seconds=0.5)

    assert result.exited and result.killed
    assert not group_alive(job.pid)
    assert job_in(run_dir).state == "stopped"
