"""Jobs: a `lorakit <stage> config.yaml` process started in the background, detached from whoever started it.

`start_job()` runs the CLI without a shell in its own session (so its own process group), its output going to
`<stage>.log` in the run folder and its process recorded in `job.json` there. Everything about a job is on disk, so
`list_jobs()` finds running and past jobs again after the web UI (or any caller) restarts, and closing a browser
tab changes nothing. `stop_job()` sends SIGTERM to the whole group (training then saves a checkpoint and ends; see
`stop_on_sigterm`), waits, then SIGKILLs what is left, and says whether every process exited. `resume_job()`
continues a stopped training run from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.errors import ConfigError
from lorakit.files import write_json
from lorakit.runs import read_json_dict, run_status

if TYPE_CHECKING:
    from lorakit.config import TrainConfig

JOB_FILE = "job.json"
# The `lorakit` command of each job stage. `train` and `eval` take a config file; an export stage takes the folder it
# exports and its options (lorakit.cli.export and lorakit.cli.merge make them from a config).
STAGES = {"train": ("train",), "eval": ("eval",), "merge": ("merge",), "export-gguf": ("export", "gguf"),
          "export-ollama": ("export", "ollama"), "export-hub": ("export", "hub")}
# Popen objects of the jobs this process started: polling them reaps an exited child, which would otherwise stay a
# zombie and still count as a member of its process group.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class Job:
    """A job as its run folder records it. `state` is "running", "stopped" (stopped on request), or the run's own
    status once the process is gone ("finished", "interrupted", "failed")."""

    folder: Path
    stage: str
    pid: int
    command: tuple[str, ...]
    started: str | None
    state: str

    @property
    def log(self) -> Path:
        return self.folder / f"{self.stage}.log"


@dataclass(frozen=True)
class StopResult:
    """What `stop_job` saw: whether every process of the job exited, and whether SIGKILL was needed."""

    exited: bool
    killed: bool
    seconds: float


def command_for(stage: str, config_path: Path, overrides: Sequence[str] = ()) -> list[str]:
    """The argv of `lorakit <stage> CONFIG key=value ...` with this Python, so the job uses the same install.

    For an export stage `config_path` is the folder exported and `overrides` the command's options."""
    if stage not in STAGES:
        raise ConfigError(f"Unknown job stage '{stage}'; jobs run one of: {', '.join(STAGES)}.")
    return [sys.executable, "-m", "lorakit.cli", *STAGES[stage], str(config_path), *overrides]


def start_job(stage: str, config_path: Path, run_dir: Path, overrides: Sequence[str] = ()) -> Job:
    """Start `lorakit <stage> config_path overrides...` for the run folder `run_dir` and return at once.

    Refuses (ConfigError) while a job of that folder still runs. The process gets its own session, no stdin, and
    its stdout and stderr in `run_dir/<stage>.log` (appended to, so a resumed run's log follows the first).
    """
    run_dir = Path(run_dir)
    running = job_in(run_dir)
    if running is not None and running.state == "running":
        raise ConfigError(f"A {running.stage} job (process {running.pid}) is still running in {run_dir}. Stop it "
                          "first, or choose another output_dir.")
    command = command_for(stage, config_path, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (run_dir / f"{stage}.log").open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    _CHILDREN[process.pid] = process
    record = {"stage": stage, "pid": process.pid, "pgid": process.pid, "host": socket.gethostname(),
              "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stop_requested": False}
    write_json(run_dir / JOB_FILE, record)
    return _job_from(run_dir, record)


def start_training(config: TrainConfig) -> Job:
    """Save `config` as `output_dir/config.yaml` and start `lorakit train` on it as a job.

    ConfigError where `output_dir` already holds a run: resume that one, or choose another output_dir."""
    from lorakit.config import save_config
    from lorakit.runs import is_run_folder

    run_dir = Path(config.output_dir)
    if is_run_folder(run_dir):
        raise ConfigError(f"{run_dir} already holds a run. Choose another output_dir, or resume that run.")
    save_config(config, run_dir / "config.yaml")
    return start_job("train", run_dir / "config.yaml", run_dir)


def resume_job(run_dir: Path, overrides: Sequence[str] = ()) -> Job:
    """Continue the training run in `run_dir` from its last checkpoint: `lorakit train run_dir/config.yaml
    resume=true`. ConfigError where the folder has no config.yaml or no checkpoint to resume from."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml, so it is not a training run that can be resumed.")
    if not any((run_dir / "checkpoints").glob("checkpoint-*")):
        raise ConfigError(f"{run_dir}/checkpoints holds no checkpoint to resume from; start the run again instead.")
    return start_job("train", config_path, run_dir, [*overrides, "resume=true"])


def job_in(run_dir: Path) -> Job | None:
    """The job recorded in `run_dir` (the latest one started there), or None."""
    record = read_json_dict(Path(run_dir) / JOB_FILE)
    return _job_from(Path(run_dir), record) if record.get("pid") else None


def list_jobs(root: Path) -> list[Job]:
    """Every job recorded in the run folders directly under `root`, running ones first, then newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    jobs = [job for child in root.iterdir() if (child / JOB_FILE).is_file() and (job := job_in(child))]
    jobs.sort(key=lambda job: job.started or "", reverse=True)
    return sorted(jobs, key=lambda job: job.state != "running")


def stop_job(run_dir: Path, grace_seconds: float = 30.0) -> StopResult:
    """Stop the job of `run_dir`: SIGTERM to its process group, up to `grace_seconds` to exit, then SIGKILL.

    A training job answers SIGTERM by saving a checkpoint and writing its outputs from that step, so it can be
    resumed. Returns whether every process of the group is gone.
    """
    record = read_json_dict(Path(run_dir) / JOB_FILE)
    if not record.get("pgid"):
        raise ConfigError(f"{run_dir} has no {JOB_FILE}: no job was started there.")
    record["stop_requested"] = True
    write_json(Path(run_dir) / JOB_FILE, record)
    pgid, started, killed = int(record["pgid"]), time.monotonic(), False
    if _mine(record):
        _signal_group(pgid, signal.SIGTERM)
        if not _wait_gone(pgid, grace_seconds):
            _signal_group(pgid, signal.SIGKILL)
            killed = True
            _wait_gone(pgid, 10.0)
    return StopResult(not group_alive(pgid) if _mine(record) else False, killed, time.monotonic() - started)


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group `pgid` still exists on this machine."""
    child = _CHILDREN.get(pgid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pgid, None)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_job(run_dir: Path, timeout: float) -> Job:
    """Wait until the job of `run_dir` is no longer running (or `timeout` seconds pass) and return it."""
    deadline = time.monotonic() + timeout
    while True:
        job = job_in(run_dir)
        if job is None or job.state != "running" or time.monotonic() > deadline:
            if job is None:
                raise ConfigError(f"{run_dir} has no {JOB_FILE}: no job was started there.")
            return job
        time.sleep(0.2)


@contextlib.contextmanager
def stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """While inside, SIGTERM sets `stop` instead of killing the process: training ends after its current step with
    a checkpoint saved. Only in the main thread (Python delivers signals there); elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _job_from(run_dir: Path, record: dict[str, Any]) -> Job:
    pgid = int(record.get("pgid") or record["pid"])
    if _mine(record) and group_alive(pgid):
        state = "running"
    elif record.get("stop_requested"):
        state = "stopped"
    elif not _mine(record):
        state = "running" if run_status(run_dir).state == "running" else run_status(run_dir).state
    else:
        state = run_status(run_dir).state
        state = "failed" if state == "running" else state
    return Job(run_dir, str(record.get("stage", "train")), int(record["pid"]), tuple(record.get("command") or ()),
               record.get("started"), state)


def _mine(record: dict[str, Any]) -> bool:
    """Whether the job ran on this machine: another host's process ids mean nothing here."""
    return record.get("host") == socket.gethostname()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _wait_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


__all__ = ["JOB_FILE", "Job", "StopResult", "command_for", "group_alive", "job_in", "list_jobs", "resume_job",
           "start_job", "start_training", "stop_job", "stop_on_sigterm", "wait_for_job"]
