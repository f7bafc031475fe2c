"""Load test of `lorakit serve`: 32 streaming chat requests at once vs the same 32 one after another.

Starts `lorakit serve` on loopback in a subprocess (first run converts and caches the bundled model), sends 32
distinct greedy prompts one at a time, then all 32 at once, and checks that each concurrent streamed reply equals
that prompt's sequential reply (so rows were not mixed up, cut short or interleaved). Prints requests/s and
generated tokens/s for both, and their ratio.

    .venv/bin/python bench/serve_load.py                      # smollm2-135m, float32, 48 tokens, batch 32
    .venv/bin/python bench/serve_load.py --dtype bfloat16 --max-tokens 32
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

TOPICS = ["tea", "rivers", "the moon", "bicycles", "volcanoes", "bread", "owls", "glaciers", "chess", "copper",
          "penguins", "clocks", "deserts", "violins", "honey", "lighthouses", "maps", "coral reefs", "paper",
          "thunder", "bees", "trains", "salt", "kites", "mushrooms", "bridges", "snow", "candles", "whales", "silk",
          "comets", "gardens"]


@dataclass
class Reply:
    text: str
    tokens: int
    finish: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, dtype: str, max_batch_size: int, log: Path) -> subprocess.Popen:
    """`lorakit serve` in a subprocess, its stderr in `log` (a pipe nobody reads would fill and block the server)."""
    command = [sys.executable, "-m", "lorakit.cli", "serve", "--model", model, "--port", str(port),
               "--dtype", dtype, "--max-batch-size", str(max_batch_size)]
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
    pieces, tokens, finish = [], 0, ""
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return Reply("".join(pieces), tokens, finish)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32", help="float32 keeps batched greedy text exact")
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()
    prompts = [f"Tell me one short fact about {TOPICS[i % len(TOPICS)]}." + (f" ({i})" if i >= len(TOPICS) else "")
               for i in range(args.requests)]
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        server = start_server(args.model, port, args.dtype, args.max_batch_size, Path(folder) / "server.log")
        try:
            results = asyncio.run(run(f"http://127.0.0.1:{port}/v1", args.model, prompts, args.max_tokens))
        finally:
            stop_server(server)

    sequential = results["sequential"][1]
    print(f"\n{args.model}, {args.dtype}, {args.requests} distinct greedy chat prompts, max_tokens "
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


if __name__ == "__main__":
    main()
