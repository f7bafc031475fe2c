"""The Export tab's requests as data: the export config each kind means for a run, the `lorakit` job that runs it,
how that job stands, and the checks the export left on disk (merge check, GGUF perplexities).

Exports of a run go to `<run>/exports/`, which is also the job's folder (its job.json, its log and export.json, what
was asked). One export of a run runs at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lorakit.config import GGUFConfig, HubConfig, MergeConfig, OllamaConfig, WebUIConfig
from lorakit.errors import ConfigError
from lorakit.files import write_json
from lorakit.jobs import Job, job_in, start_job
from lorakit.runs import open_run, read_json_dict
from lorakit.webui.safety import allowed_folders, confine

KINDS = ("merge", "gguf", "ollama", "hub")
EXPORTS_DIR = "exports"
REQUEST_FILE = "export.json"


@dataclass(frozen=True)
class ExportRequest:
    """One export of a run: its config, the job stage, the folder exported and the command's options."""

    kind: str
    config: MergeConfig | GGUFConfig | OllamaConfig | HubConfig
    stage: str
    options: tuple[str, ...]

    @property
    def source(self) -> Path:
        return self.config.source

    @property
    def output(self) -> Path | None:
        """What the export writes; None for a Hub upload."""
        return getattr(self.config, "output", None)

    @property
    def folder(self) -> Path:
        return self.source / EXPORTS_DIR


def export_request(run: str, kind: str, quantization: str, repo_id: str, config: WebUIConfig,
                   cwd: Path | None = None) -> ExportRequest:
    """The export `kind` of the run folder `run` as `lorakit merge` / `lorakit export ...` would run it.

    Outputs replace earlier ones of the same kind and type (force): the page's Export button asks for them anew.
    ConfigError for a run outside the allowed folders, with nothing trained in it, or a bad type or repo id.
    """
    from lorakit.cli.export import gguf_options, hub_options, ollama_options
    from lorakit.cli.merge import merge_options

    if kind not in KINDS:
        raise ConfigError(f"Unknown export '{kind}'; choose one of {', '.join(KINDS)}.")
    source = confine(run or "", allowed_folders(config, cwd), cwd)
    open_run(source)  # a ConfigError that says what the folder lacks
    exports = source / EXPORTS_DIR
    if kind == "merge":
        merge = MergeConfig(source=source, output=exports / "merged", force=True)
        return ExportRequest(kind, merge, "merge", tuple(merge_options(merge)))
    if kind == "gguf":
        gguf = GGUFConfig(source=source, output=exports / f"model-{quantization}.gguf", outtype=quantization,
                          force=True)
        return ExportRequest(kind, gguf, "export-gguf", tuple(gguf_options(gguf)))
    if kind == "ollama":
        ollama = OllamaConfig(source=source, output=exports / f"ollama-{quantization}", quant=quantization,
                              force=True)
        return ExportRequest(kind, ollama, "export-ollama", tuple(ollama_options(ollama)))
    hub = HubConfig(source=source, repo_id=(repo_id or "").strip())
    return ExportRequest(kind, hub, "export-hub", tuple(hub_options(hub)))


def start_export(request: ExportRequest) -> Job:
    """Start the request's command as a job in `<run>/exports/`; its log holds this attempt only.

    ConfigError while another export of the run still runs."""
    running = job_in(request.folder)
    if running is not None and running.state == "running":
        raise ConfigError(f"An export of {request.source} is still running (process {running.pid}); wait for it "
                          "to end, then export again.")
    request.folder.mkdir(parents=True, exist_ok=True)
    (request.folder / f"{request.stage}.log").unlink(missing_ok=True)
    job = start_job(request.stage, request.source, request.folder, request.options)
    write_json(request.folder / REQUEST_FILE, {"kind": request.kind, "stage": request.stage,
                                               "output": str(request.output) if request.output else None})
    return job


@dataclass(frozen=True)
class ExportStatus:
    """The latest export of a run: its kind, output, state (running, finished, failed, stopped) and log."""

    kind: str
    output: Path | None
    state: str
    log: str

    @property
    def reason(self) -> str | None:
        """Why a failed export failed: the error line the command printed last (`lorakit` prints a user's
        mistake as one line, `ConfigError: ...`), else None."""
        if self.state != "failed":
            return None
        return next((line for line in reversed(self.log.splitlines()) if re.match(r"\w*Error: ", line)), None)


def export_status(run_dir: Path) -> ExportStatus | None:
    """How the latest export of `run_dir` stands, or None before any.

    Finished means the output is there and newer than the job's start (exports move their output into place
    last); a Hub upload, which leaves nothing here, finished when its log says where it uploaded to.
    """
    folder = Path(run_dir) / EXPORTS_DIR
    job, request = job_in(folder), read_json_dict(folder / REQUEST_FILE)
    if job is None or not request:
        return None
    output = Path(request["output"]) if request.get("output") else None
    log = job.log.read_text(encoding="utf-8", errors="replace") if job.log.is_file() else ""
    state = job.state
    if state not in ("running", "stopped"):
        done = "Uploaded to " in log if output is None else _written_since(output, job.started)
        state = "finished" if done else "failed"
    return ExportStatus(str(request.get("kind")), output, state, log)


def _written_since(output: Path, started: str | None) -> bool:
    if not output.exists():
        return False
    if started is None:
        return True
    return output.stat().st_mtime >= datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def verification(status: ExportStatus) -> list[tuple[str, str]]:
    """The checks a finished export left, as (name, value) rows: the merge check's max abs logit diff and KL, and
    the perplexity of the HF model, the f16 GGUF and the quantised GGUF on held-out text with their change.

    Names are i18n keys (verify.*) with the figure's own name after a colon where it varies."""
    if status.state != "finished" or status.output is None:
        return []
    if status.kind == "merge":
        return _merge_rows(read_json_dict(status.output / "merge_check.json"))
    reports = [Path(f"{status.output}.json")] if status.kind == "gguf" else sorted(status.output.glob("*.gguf.json"))
    rows: list[tuple[str, str]] = []
    for report_path in reports:
        report = read_json_dict(report_path)
        rows.append(("verify.file", str(report.get("path", report_path.name[:-len(".json")]))))
        rows.append(("verify.outtype", str(report.get("outtype"))))
        if report.get("template"):
            rows.append(("verify.template", str(report["template"])))
        rows += _merge_rows(report.get("merge_check") or {})
        perplexity = report.get("perplexity") or {}
        reference = perplexity.get("hf")
        for name, value in perplexity.items():
            change = f" ({100 * (value / reference - 1):+.2f}%)" if reference and name != "hf" else ""
            rows.append((f"verify.perplexity:{name}", f"{value:.4f}{change}"))
    return rows


def _merge_rows(check: dict) -> list[tuple[str, str]]:
    if check.get("max_abs_diff") is None:
        return []
    return [("verify.max_abs_diff", f"{check['max_abs_diff']:.3g}"),
            ("verify.kl_divergence", f"{check['kl_divergence']:.3g}")]
