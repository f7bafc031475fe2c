"""glibc's heap kept for reuse vs glibc's defaults, A/B in real `lorakit train` processes: page faults, tokens/s.

"kept" starts the training process with MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_=2147483647 (no mmap'd blocks,
no trimming of the heap's top: what the removed `lorakit.train.allocator.keep_freed_memory` set through mallopt while
training); "default" runs with glibc's own settings. Runs alternate (kept, default, kept, default, ...), each its own
process. While a run trains, this script reads the child's minor page faults and CPU time (/proc/<pid>/stat) each
time a step is logged, so the figures cover the steady-state steps only (model loading and the first `--warmup`
steps excluded); tokens/s over the same steps comes from trainer_state.json. Runs use one torch thread by default:
on a shared machine, OpenMP threads spin while a sibling is descheduled, which buries a few-percent difference.

    python bench/allocator.py --steps 6 batch_size=4         # configs/smollm2-lora.yaml, 2 runs each
    python bench/allocator.py --threads 2 --runs 3 data.max_seq_len=512
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"\bstep (\d+)/(\d+)\b")
KEPT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
VARIANTS = ("kept", "default")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma", "asimd", "sve")


def machine() -> str:
    """CPU model, core count and the ISA flags that matter for torch on CPU, from lscpu."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("Flags", "").split())
    present = [flag for flag in ISA_FLAGS if flag in flags]
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else "unknown libc"
    return (f"{fields.get('Model name', '?')} (family {fields.get('CPU family', '?')}, model "
            f"{fields.get('Model', '?')}), {fields.get('CPU(s)', '?')} CPUs, {fields.get('Hypervisor vendor', 'bare metal')}"
            f"; ISA: {' '.join(present) or 'none of ' + ' '.join(ISA_FLAGS)}; {libc}")


def _counters(pid: int) -> tuple[int, float, float]:
    """Minor page faults, user and system CPU seconds of a process so far (all its threads)."""
    # /proc/<pid>/stat: the command name (field 2) may hold spaces, so split after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[7]), int(fields[11]) / tick, int(fields[12]) / tick  # fields 10, 14, 15: minflt, utime, stime


def run_once(variant: str, config: str, overrides: list[str], steps: int, warmup: int, threads: int,
             workdir: Path) -> dict:
    """One `lorakit train` process; page faults, tokens/s and CPU time of the steps after `warmup`."""
    output_dir = workdir / f"{variant}-{time.time_ns()}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    for name in (*KEPT, "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"):
        env.pop(name, None)
    if variant == "kept":
        env.update(KEPT)
    command = [sys.executable, "-m", "lorakit.cli", "train", config, f"max_steps={steps}", "logging_steps=1",
               "data.val_size=0", f"output_dir={output_dir}", *overrides]
    counters_at: dict[int, tuple[int, float, float]] = {}
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    log = output_dir.with_suffix(".log")
    with log.open("w") as saved:
        for line in child.stdout:
            for match in STEP_LINE.finditer(line):  # a progress line may hold several steps
                counters_at.setdefault(int(match.group(1)), _counters(child.pid))
            saved.write(line)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{variant} run failed ({child.returncode}):\n{log.read_text()[-3000:]}")
    if not {warmup, steps} <= counters_at.keys():
        raise SystemExit(f"{variant} run: no 'step {warmup}/{steps}' or 'step {steps}/{steps}' line seen in its "
                         f"output:\n{log.read_text()[-3000:]}")
    history = [entry for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
               if "loss" in entry]
    start, end = history[warmup - 1], history[-1]
    measured = end["step"] - start["step"]
    tokens = end["num_input_tokens_seen"] - start["num_input_tokens_seen"]
    seconds = end["train_runtime"] - start["train_runtime"]
    faults, user, system = (after - before for after, before in zip(counters_at[steps], counters_at[warmup]))
    return {"variant": variant, "steps": measured, "tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds, "tokens_per_cpu_second": tokens / (user + system),
            "faults_per_step": faults / measured, "system_seconds_per_step": system / measured,
            "user_seconds_per_step": user / measured,
            "process_faults": usage.ru_minflt, "peak_rss_gib": usage.ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2-lora.yaml")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the figures")
    parser.add_argument("--runs", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of each run (OMP_NUM_THREADS); 1 keeps a busy machine's noise out")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the training config")
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must be at least 1 and below --steps")
    print(f"machine: {machine()}", flush=True)
    print(f"runs: lorakit train {args.config} max_steps={args.steps} {' '.join(args.overrides)}; steps "
          f"{args.warmup + 1}-{args.steps} measured; {args.threads} thread(s)\n", flush=True)
    results: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="lorakit-allocator-") as workdir:
        for _ in range(args.runs):
            for variant in VARIANTS:
                result = run_once(variant, args.config, args.overrides, args.steps, args.warmup, args.threads,
                                  Path(workdir))
                results[variant].append(result)
                print(f"{variant:7}  {result['tokens_per_second']:7.1f} tokens/s  {result['tokens_per_cpu_second']:7.1f} "
                      f"tokens/CPU-s  {result['faults_per_step']:9,.0f} minor faults/step  "
                      f"{result['system_seconds_per_step']:6.2f} s system + {result['user_seconds_per_step']:6.2f} s "
                      f"user CPU/step  {result['process_faults']:10,} faults in the whole process  peak RSS "
                      f"{result['peak_rss_gib']:.2f} GiB", flush=True)
    print()
    keys = {"tokens_per_second": "tokens/s", "tokens_per_cpu_second": "tokens/CPU-s",
            "faults_per_step": "minor faults/step", "system_seconds_per_step": "system s/step",
            "peak_rss_gib": "peak RSS GiB"}
    for key, label in keys.items():
        kept, default = (statistics.median(r[key] for r in results[v]) for v in VARIANTS)
        print(f"median {label:18} kept {kept:12,.2f}   default {default:12,.2f}   kept/default "
              f"x{kept / default if default else float('nan'):.3f}")


if __name__ == "__main__":
    main()
