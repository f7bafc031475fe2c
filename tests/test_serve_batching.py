"""The serve engine's batching: a request that arrives while others generate joins them at the next step
(continuous) or waits for the batch to finish (static), and gets the same greedy reply either way."""

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from lorakit.adapters import BASE, AdapterSpec, load_adapters
from lorakit.serve import Engine
from lorakit.serve.engine import Endpoint, FinishEvent, Job, Sampling, TextEvent
from lorakit.templates import resolve_template

from conftest import make_tokenizer
from test_adapters import make_adapter
from test_decoder import alone, lively


@pytest.fixture(scope="module")
def tuned_model(tmp_path_factory):
    """The lively tiny llama with one adapter, "tuned", that changes its greedy replies."""
    adapter = make_adapter(tmp_path_factory.mktemp("adapter") / "tuned", seed=3, scale=8.0)
    return load_adapters(lively(), [AdapterSpec("tuned", adapter)], "tiny")


def endpoint(adapter: str = BASE) -> Endpoint:
    tokenizer = make_tokenizer()
    return Endpoint(adapter, adapter, tokenizer, resolve_template(None, tokenizer), frozenset())  # no stop token


class Recorder:
    """Jobs whose finishes are recorded with the engine's step count when they happen, in the engine thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.finished = engine, []

    def job(self, name: str, prompt: str, max_tokens: int, adapter: str = BASE, stop: tuple[str, ...] = ()) -> Job:
        job = Job(endpoint=endpoint(adapter), prompt_ids=make_tokenizer()(prompt)["input_ids"], max_tokens=max_tokens,
                  stop=stop, sampling=Sampling(), loop=asyncio.get_running_loop())
        send = job.send

        def recording(event) -> None:
            if isinstance(event, FinishEvent):
                self.finished.append((name, self.engine.steps))
            send(event)

        job.send = recording
        return job


async def reply(job: Job) -> tuple[str, FinishEvent]:
    pieces = []
    while not isinstance(event := await job.events.get(), FinishEvent):
        assert isinstance(event, TextEvent), event
        pieces.append(event.text)
    return "".join(pieces), event


@contextlib.contextmanager
def held_at_forward(model, count: int) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Within the block, the engine thread waits in its `count`-th forward pass until `release` is set; `reached`
    tells when it is there. The first forward reads the first prompt, each later one is a decoding step."""
    reached, release, forwards = threading.Event(), threading.Event(), []

    def hold(*_):
        forwards.append(1)
        if len(forwards) == count:
            reached.set()
            release.wait(timeout=30)

    handle = model.register_forward_pre_hook(hold)
    try:
        yield reached, release
    finally:
        release.set()
        handle.remove()


def plain(model, prompt: str, count: int, adapter: str = BASE) -> str:
    """The text of `count` greedy tokens of `prompt` alone, as the engine decodes it."""
    tokenizer = make_tokenizer()
    return tokenizer.decode(alone(model, tokenizer(prompt)["input_ids"], count, adapter), skip_special_tokens=True)


def arrive_during_a_long_reply(model, batching: str, long_adapter: str, short_adapter: str):
    """A long reply starts alone; a short request arrives while its second decoding step runs."""
    engine = Engine(model, batch_wait_s=0.001, batching=batching)

    async def scenario(reached: threading.Event, release: threading.Event):
        recorder = Recorder(engine)
        long = recorder.job("long", "hello there", 30, long_adapter)
        short = recorder.job("short", "why?", 4, short_adapter)
        engine.start()
        try:
            engine.submit(long)
            assert await asyncio.to_thread(reached.wait, 30)
            engine.submit(short)
            release.set()
            replies = await asyncio.gather(reply(long), reply(short))
        finally:
            engine.stop()
        return replies, recorder.finished

    with held_at_forward(model, 3) as (reached, release):
        return asyncio.run(scenario(reached, release))


@pytest.mark.parametrize("batching", ["continuous", "static"])
def test_a_request_arriving_mid_generation_joins_the_batch_and_finishes_first(tuned_model, batching):
    (long, short), finished = arrive_during_a_long_reply(tuned_model, batching, "tuned", BASE)

    # Greedy replies equal each prompt's alone, adapters kept per row (tuned and base rows share the batch).
    assert long[0] == plain(tuned_model, "hello there", 30, "tuned") != plain(tuned_model, "hello there", 30)
    assert short[0] == plain(tuned_model, "why?", 4)
    assert long[1].completion_tokens == 30 and short[1].completion_tokens == 4
    # The long reply's first token comes from reading its prompt, each later one from a step: 29 steps.
    # The short request arrives during step 2; its prompt is read, then 3 steps give its last 3 tokens.
    if batching == "continuous":
        assert finished == [("short", 2 + 3), ("long", 29)]  # joined at step 3, left after step 5
    else:
        assert finished == [("long", 29), ("short", 29 + 3)]  # waited for the whole batch


def test_rows_that_join_keep_their_own_stop_strings_and_max_tokens(tuned_model):
    alone_replies = {prompt: plain(tuned_model, prompt, 16) for prompt in ("hello there", "why?")}
    stop = alone_replies["why?"][5:7]  # a stop string the reply reaches after a few tokens
    assert len(stop) == 2 and stop not in alone_replies["why?"][:6]
    engine = Engine(tuned_model, batch_wait_s=0.001)

    async def scenario(reached: threading.Event, release: threading.Event):
        recorder = Recorder(engine)
        first = recorder.job("first", "hello there", 16)
        joining = [recorder.job("stops", "why?", 16, stop=(stop,)), recorder.job("short", "ok", 3)]
        engine.start()
        try:
            engine.submit(first)
            assert await asyncio.to_thread(reached.wait, 30)
            engine.submit(*joining)
            release.set()
            return await asyncio.gather(*(reply(job) for job in (first, *joining))), recorder.finished
        finally:
            engine.stop()

    with held_at_forward(tuned_model, 2) as (reached, release):
        (first, stops, short), finished = asyncio.run(scenario(reached, release))

    assert first[0] == alone_replies["hello there"] and first[1].reason == "length"
    assert stops[0] == alone_replies["why?"][:5] and stops[1].reason == "stop"
    assert short[0] == plain(tuned_model, "ok", 3) and short[1].reason == "length"
    assert short[1].completion_tokens == 3
    assert [name for name, _ in finished] == ["short", "stops", "first"]
    assert engine.batch_sizes[-1] == 2  # the two arrivals joined together
