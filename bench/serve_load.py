"""Load test of `lorakit serve` with streaming chat requests, printed after the machine it ran on.

Case `burst`: 32 distinct greedy prompts one at a time, then all 32 at once; each concurrent streamed reply must
equal that prompt's sequential reply (so rows were not mixed up, cut short or interleaved). Prints requests/s and
generated tokens/s for both, and their ratio.

Case `staggered`: the same prompts arriving one every `--interval-ms` (100 ms), as real clients do, against a
server with `batching: static` (a request waits for the running batch to finish) and one with `batching:
continuous` (it joins the running batch at the next token), one after the other in this run. Prints each policy's
time to first token (p50, p95: from sending the request to its first text), throughput (generated tokens over the
time from the first request to the last reply) and whether both policies gave the same replies.

Each server is `lorakit serve` on loopback in a subprocess (the first run converts and caches the bundled model).

    .venv/bin/python bench/serve_load.py                      # both cases; smollm2-135m, float32, 48 tokens
    .venv/bin/python bench/serve_load.py --case staggered --requests 32 --interval-ms 100
    .venv/bin/python bench/serve_load.py --case burst --dtype bfloat16 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from train_speed import machine_line

TOPICS = ["tea", "rivers", "the moon", "bicycles", "volcanoes", "bread", "owls", "glaciers", "chess", "copper",
          "penguins", "clocks", "deserts", "violins", "honey", "lighthouses", "maps", "coral reefs", "paper",
          "thunder", "bees", "trains", "salt", "kites", "mushrooms", "bridges", "snow", "candles", "whales", "silk",
          "comets", "gardens"]


@dataclass
class Reply:
    text: str
    tokens: int
    finish: str
    first_text_s: float = 0.0  # seconds from sending the request to its first text
    done_at: float = 0.0  # time.perf_counter() when the reply ended


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, dtype: str, max_batch_size: int, log: Path,
                 batching: str = "continuous") -> subprocess.Popen:
    """`lorakit serve` in a subprocess, its stderr in `log` (a pipe nobody reads would fill and block the server)."""
    command = [sys.executable, "-m", "lorakit.cli", "serve", "--model", model, "--port", str(port),
               "--dtype", dtype, "--max-batch-size", str(max_batch_size), "--batching", batching]
    env = {key: value for key, value in os.environ.items() if key != "LORAKIT_API_KEY"}
    env["HF_HUB_OFFLINE"] = "1"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lorakit serve exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"lorakit serve did not start within 10 minutes: {log.read_text(errors='replace')[-2000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def streamed_reply(client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> Reply:
    pieces, tokens, finish, first_text = [], 0, "", None
    sent = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices:
            text = chunk.choices[0].delta.content or ""
            if text and first_text is None:
                first_text = time.perf_counter() - sent
            pieces.append(text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    done_at = time.perf_counter()
    return Reply("".join(pieces), tokens, finish, done_at - sent if first_text is None else first_text, done_at)


async def run(base_url: str, model: str, prompts: list[str], max_tokens: int) -> dict[str, tuple[float, list]]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=1800) as client:
        await streamed_reply(client, model, "warm up", 4)
        start = time.perf_counter()
        sequential = [await streamed_reply(client, model, prompt, max_tokens) for prompt in prompts]
        sequential_s = time.perf_counter() - start
        start = time.perf_counter()
        concurrent = await asyncio.gather(*(streamed_reply(client, model, p, max_tokens) for p in prompts))
        concurrent_s = time.perf_counter() - start
    return {"sequential": (sequential_s, sequential), "concurrent": (concurrent_s, list(concurrent))}


async def staggered(base_url: str, model: str, prompts: list[str], max_tokens: int,
                    interval_s: float) -> tuple[float, list[Reply]]:
    """Send request i at i * interval_s; the wall time from the first request to the last reply, and the replies."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=1800) as client:
        await streamed_reply(client, model, "warm up", 4)

        async def later(index: int, prompt: str) -> Reply:
            await asyncio.sleep(index * interval_s)
            return await streamed_reply(client, model, prompt, max_tokens)

        start = time.perf_counter()
        replies = await asyncio.gather(*(later(index, prompt) for index, prompt in enumerate(prompts)))
    return max(reply.done_at for reply in replies) - start, list(replies)


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


def serving(args: argparse.Namespace, batching: str, work):
    """Run `work(base_url)` (a coroutine function) against a fresh `lorakit serve` with `batching`."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(args.model, port, args.dtype, args.max_batch_size, Path(folder) / "server.log",
                              batching)
        try:
            return asyncio.run(work(f"http://127.0.0.1:{port}/v1"))
        finally:
            stop_server(server)


def run_burst(args: argparse.Namespace, prompts: list[str]) -> None:
    results = serving(args, "continuous", lambda url: run(url, args.model, prompts, args.max_tokens))
    sequential = results["sequential"][1]
    print(f"\n### burst: {args.model}, {args.dtype}, {args.requests} distinct greedy chat prompts, max_tokens "
          f"{args.max_tokens}, streaming, max batch {args.max_batch_size}, torch threads: default\n")
    print("| mode | wall s | requests/s | generated tokens | tokens/s | replies equal to sequential |")
    print("|---|---|---|---|---|---|")
    rates = {}
    for mode, (seconds, replies) in results.items():
        tokens = sum(reply.tokens for reply in replies)
        same = sum(reply.text == ref.text for reply, ref in zip(replies, sequential))
        rates[mode] = tokens / seconds
        print(f"| {mode} | {seconds:.1f} | {len(replies) / seconds:.2f} | {tokens} | {tokens / seconds:.1f} | "
              f"{same}/{len(replies)} |")
    print(f"\nconcurrent / sequential tokens/s: x{rates['concurrent'] / rates['sequential']:.2f}")
    mismatched = [i for i, (reply, ref) in enumerate(zip(results["concurrent"][1], sequential))
                  if reply.text != ref.text]
    for index in mismatched[:3]:
        print(f"\nprompt {index} differs:\n  sequential: {sequential[index].text!r}\n"
              f"  concurrent: {results['concurrent'][1][index].text!r}")
    empty = sum(not reply.text for reply in sequential)
    if empty:
        print(f"\nwarning: {empty} sequential replies are empty")


def run_staggered(args: argparse.Namespace, prompts: list[str]) -> None:
    interval_s = args.interval_ms / 1000
    print(f"\n### staggered: {args.model}, {args.dtype}, {args.requests} distinct greedy chat prompts, one every "
          f"{args.interval_ms} ms, max_tokens {args.max_tokens}, streaming, max batch {args.max_batch_size}\n",
          flush=True)
    print("| batching | TTFT p50 s | TTFT p95 s | generated tokens | wall s | tokens/s |")
    print("|---|---|---|---|---|---|", flush=True)
    results = {}
    for batching in ("static", "continuous"):
        wall, replies = serving(args, batching, lambda url: staggered(url, args.model, prompts, args.max_tokens,
                                                                      interval_s))
        results[batching] = (wall, replies)
        first = [reply.first_text_s for reply in replies]
        tokens = sum(reply.tokens for reply in replies)
        print(f"| {batching} | {percentile(first, 0.5):.2f} | {percentile(first, 0.95):.2f} | {tokens} | "
              f"{wall:.1f} | {tokens / wall:.1f} |", flush=True)
    static, continuous = results["static"][1], results["continuous"][1]
    p95 = [percentile([reply.first_text_s for reply in replies], 0.95) for replies in (static, continuous)]
    rates = [sum(reply.tokens for reply in replies) / wall for wall, replies in results.values()]
    same = sum(a.text == b.text for a, b in zip(static, continuous))
    print(f"\nTTFT p95 static / continuous: x{p95[0] / p95[1]:.2f}; tokens/s continuous / static: "
          f"x{rates[1] / rates[0]:.2f}; replies equal across policies: {same}/{len(static)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("all", "burst", "staggered"), default="all")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32", help="float32 keeps batched greedy text exact")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--interval-ms", type=int, default=100, help="staggered case: time between two requests")
    args = parser.parse_args()
    prompts = [f"Tell me one short fact about {TOPICS[i % len(TOPICS)]}." + (f" ({i})" if i >= len(TOPICS) else "")
               for i in range(args.requests)]
    print(machine_line(), flush=True)
    if args.case in ("all", "staggered"):
        run_staggered(args, prompts)
    if args.case in ("all", "burst"):
        run_burst(args, prompts)


if __name__ == "__main__":
    main()
