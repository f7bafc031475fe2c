"""`lorakit serve`: the official openai client against a real uvicorn server on loopback, tiny model + adapter."""

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch
import uvicorn
import yaml
from typer.testing import CliRunner

from lorakit.adapters import AdapterSpec, load_adapters
from lorakit.cli import app as cli_app
from lorakit.config import ModelConfig
from lorakit.errors import ConfigError
from lorakit.serve import Engine, ServeConfig, create_app, endpoints_for
from lorakit.serve.engine import Endpoint, FinishEvent, Job, Sampling, TextEvent, _Row
from lorakit.serve.vllm import vllm_command
from lorakit.templates import TEMPLATES, render, resolve_template

from conftest import make_model, make_tokenizer
from test_adapters import make_adapter

KEY = "test-key"
PROMPTS = ["hello", "what is tea?", "name a colour", "count to three", "hi there, how are you?", "why?",
           "say something long please", "ok"]


def lively_model():
    """The tiny llama with its weights scaled up, so different prompts get different greedy replies."""
    model = make_model("llama", len(make_tokenizer()))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(10)
    return model.eval()


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """`app` served by uvicorn in a background thread on a loopback socket bound here; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound before uvicorn starts, so no other process can take the port meanwhile
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            if not thread.is_alive():
                raise RuntimeError("the test server stopped while starting; see its log above")
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the test server did not start within 30 s")
            time.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "the test server did not stop within 10 s"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("adapter") / "tuned", seed=3, scale=8.0)


@pytest.fixture(scope="module")
def server(adapter_dir):
    """A tiny llama ("tiny", weights scaled up) with one adapter ("tuned", large random weights), served live."""
    tokenizer = make_tokenizer()
    specs = [AdapterSpec("tuned", adapter_dir)]
    model = load_adapters(lively_model(), specs, "tiny")
    engine = Engine(model, max_batch_size=8, batch_wait_s=0.02)
    with running(create_app(engine, endpoints_for(model, "tiny", tokenizer, specs), api_key=KEY)) as base_url:
        yield base_url, engine


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0) as client:
        yield client


def plain_reply(prompt: str, max_tokens: int, chat: bool = True) -> str:
    """What the plain tiny model says on its own, greedy, with no server, padding or batching involved."""
    tokenizer = make_tokenizer()
    model = lively_model()
    template = resolve_template(None, tokenizer)
    text = render(template, tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True) if chat \
        else prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
    ids = output[0, inputs["input_ids"].shape[1]:].tolist()
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def ask(client, model: str, prompt: str, max_tokens: int = 12, temperature: float = 0.0, **options):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=temperature, max_tokens=max_tokens, **options)


def test_health_and_models(server, client):
    health = httpx.get(f"{server[0]}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = {model.id: model for model in client.models.list().data}
    assert set(models) == {"tiny", "tuned"}
    assert client.models.retrieve("tuned").id == "tuned"


def test_chat_matches_the_plain_model_and_counts_tokens(client):
    reply = ask(client, "tiny", "hello", max_tokens=12)

    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "tiny"
    assert choice.message.role == "assistant"
    assert choice.message.content == plain_reply("hello", 12)
    assert choice.finish_reason in ("stop", "length")
    tokenizer = make_tokenizer()
    prompt = render(resolve_template(None, tokenizer), tokenizer, [{"role": "user", "content": "hello"}],
                    add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12


def test_streaming_chat_gives_the_same_text(client):
    whole = ask(client, "tuned", "what is tea?", max_tokens=16)
    chunks = list(ask(client, "tuned", "what is tea?", max_tokens=16, stream=True,
                      stream_options={"include_usage": True}))

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_sse_wire_format_ends_with_done(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4,
            "temperature": 0}
    text = httpx.post(f"{server[0]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}).text
    events = text.split("\n\n")
    assert all(event.startswith("data: ") for event in events if event)
    assert events[-2] == "data: [DONE]" and events[-1] == ""


def test_completions_plain_and_streaming(client):
    reply = client.completions.create(model="tiny", prompt="abc def", max_tokens=10, temperature=0)
    assert reply.choices[0].text == plain_reply("abc def", 10, chat=False)
    assert reply.usage.prompt_tokens == 7
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="tiny", prompt="abc def", max_tokens=10, temperature=0, stream=True) if chunk.choices)
    assert streamed == reply.choices[0].text


def test_adapter_is_chosen_by_model_name(client):
    base = ask(client, "tiny", "name a colour", max_tokens=16).choices[0].message.content
    tuned = ask(client, "tuned", "name a colour", max_tokens=16).choices[0].message.content
    assert tuned != base
    assert base == plain_reply("name a colour", 16)


def test_stop_strings_end_the_reply_where_they_begin(client):
    full = ask(client, "tuned", "count to three", max_tokens=24).choices[0].message.content
    assert len(full) >= 6, full
    stop = full[3:5]
    reply = ask(client, "tuned", "count to three", max_tokens=24, stop=[stop, "\x07never"])
    assert reply.choices[0].message.content == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_wrong_key_is_401(server):
    with openai.OpenAI(base_url=f"{server[0]}/v1", api_key="wrong", max_retries=0) as bad, \
            pytest.raises(openai.AuthenticationError) as caught:
        ask(bad, "tiny", "hello")
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"{server[0]}/v1/models").status_code == 401
    bad_json = httpx.post(f"{server[0]}/v1/chat/completions", content=b"{oops")
    assert bad_json.status_code == 401  # the key is checked before the body


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, "nope", "hello")
    assert caught.value.body["code"] == "model_not_found"
    assert "tiny, tuned" in caught.value.body["message"]


@pytest.mark.parametrize("content, param, words", [
    (b"{not json", None, "not valid JSON"),
    (b'{"model": "tiny"}', "messages", "messages: Field required"),
    (b'{"model": "tiny", "messages": []}', "messages", "at least 1 item"),
    (b'{"model": "tiny", "messages": "hi"}', "messages", "messages"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature",
     "temperature"),
    (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role", "role"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}', "n", "n=1"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens",
     "greater than or equal to 1"),
    (b'[1, 2]', None, "Invalid request"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}',
     "top_logprobs", "less than or equal to 20"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', "top_logprobs",
     "needs logprobs: true"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "logprobs": true, "stream": true}',
     "stream", "does not stream logprobs"),
])
def test_bad_bodies_get_openai_style_400(server, content, param, words):
    response = httpx.post(f"{server[0]}/v1/chat/completions", content=content,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"]


@pytest.mark.parametrize("extra, param", [
    ({"seed": 2**70, "temperature": 1}, "seed"),
    ({"seed": -1, "temperature": 1}, "seed"),
    ({"top_k": -2}, "top_k"),
])
def test_out_of_range_numbers_are_400_not_500(server, extra, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}
    response = httpx.post(f"{server[0]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_tiny_temperature_is_greedy_and_top_k_minus_one_is_off(client):
    greedy = ask(client, "tiny", "hello", max_tokens=8).choices[0].message.content
    assert ask(client, "tiny", "hello", max_tokens=8, temperature=1e-300).choices[0].message.content == greedy
    sampled = ask(client, "tiny", "hello", max_tokens=8, temperature=1.0, seed=3, extra_body={"top_k": -1})
    assert sampled.choices[0].message.content == ask(client, "tiny", "hello", max_tokens=8, temperature=1.0,
                                                     seed=3).choices[0].message.content


@pytest.mark.parametrize("route, body", [
    ("chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud800"}]}'),
    ("completions", b'{"model": "tiny", "prompt": "hi \\ud800"}'),
])
def test_a_lone_surrogate_is_an_openai_style_400(server, route, body):
    response = httpx.post(f"{server[0]}/v1/{route}", content=body,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "surrogate" in response.json()["error"]["message"]


def test_a_server_fault_is_an_openai_style_500():
    from fastapi.testclient import TestClient

    app = create_app(Engine(make_model("llama", len(make_tokenizer()))),
                     endpoints_for(make_model("llama", len(make_tokenizer())), "tiny", make_tokenizer(), []))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    response = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error" and "kaput" in response.json()["error"]["message"]


def test_several_prompts_in_one_completion_are_one_batch_with_a_choice_each(server, client):
    base_url, engine = server
    prompts = ["abc def", "hello", "what is tea?"]
    alone = [client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0).choices[0].text
             for prompt in prompts]
    batches_before = engine.batches

    together = client.completions.create(model="tiny", prompt=prompts, max_tokens=10, temperature=0)

    assert [choice.index for choice in together.choices] == [0, 1, 2]
    assert [choice.text for choice in together.choices] == alone
    assert engine.batches == batches_before + 1 and engine.batch_sizes[-1] == 3
    assert together.usage.prompt_tokens == sum(len(prompt) for prompt in prompts)  # one token per character
    as_ids = client.completions.create(model="tiny", prompt=[make_tokenizer()(p)["input_ids"] for p in prompts],
                                       max_tokens=10, temperature=0)
    assert [choice.text for choice in as_ids.choices] == alone
    one_as_ids = client.completions.create(model="tiny", prompt=make_tokenizer()(prompts[0])["input_ids"],
                                           max_tokens=10, temperature=0)
    assert [choice.text for choice in one_as_ids.choices] == alone[:1]


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": []}, "prompt", "empty list"),
    ({"prompt": [[]]}, "prompt", "empty"),
    ({"prompt": [[1, 99999]]}, "prompt", "outside the vocabulary of model 'tiny'"),
    ({"prompt": ["a", "b"], "stream": True}, "stream", "does not stream"),
    ({"prompt": "a", "stream": True, "echo": True}, "stream", "does not stream logprobs and echo"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens", "echo"),
    ({"prompt": "a", "logprobs": 21}, "logprobs", "less than or equal to 20"),
    ({"prompt": "a", "n": 2}, "n", "n=1"),
])
def test_bad_completion_bodies_are_400(server, body, param, words):
    response = httpx.post(f"{server[0]}/v1/completions", json={"model": "tiny", **body},
                          headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and words in response.json()["error"]["message"]


def test_unknown_routes_are_404(server):
    missing = httpx.get(f"{server[0]}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert missing.status_code == 404 and "error" in missing.json()


def teacher_forced_logprobs(ids: list[int], adapter_dir=None) -> torch.Tensor:
    """log_softmax over the plain model's logits for `ids`, row t predicting token t + 1: no server, no batch."""
    model = lively_model()
    if adapter_dir is not None:
        model = load_adapters(model, [AdapterSpec("tuned", adapter_dir)], "tiny")
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_chat_logprobs_are_the_models_own_for_each_reply_token(server, client):
    reply = ask(client, "tiny", "hello", max_tokens=8, logprobs=True, top_logprobs=3)

    tokenizer = make_tokenizer()
    content = reply.choices[0].logprobs.content
    prompt = render(resolve_template(None, tokenizer), tokenizer, [{"role": "user", "content": "hello"}],
                    add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        output = lively_model().generate(torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False,
                                         eos_token_id=None, pad_token_id=0)
    reply_ids = output[0, len(prompt_ids):].tolist()
    reply_ids = reply_ids[:reply_ids.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in reply_ids \
        else reply_ids
    assert len(content) == len(reply_ids)
    assert tokenizer.decode(reply_ids, skip_special_tokens=True) == reply.choices[0].message.content
    expected = teacher_forced_logprobs(prompt_ids + reply_ids)
    for position, (entry, token) in enumerate(zip(content, reply_ids)):
        row = expected[len(prompt_ids) - 1 + position]
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert [top.logprob for top in entry.top_logprobs] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the likeliest
        assert entry.bytes == list(entry.token.encode())
    plain = ask(client, "tiny", "hello", max_tokens=8)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == reply.choices[0].message.content


def test_echo_scores_the_prompt_per_row_adapter_in_one_batch(server, adapter_dir, monkeypatch):
    _, engine = server
    tokenizer = make_tokenizer()
    ids = tokenizer("why is tea green?")["input_ids"]
    monkeypatch.setattr(engine, "batch_wait_s", 0.3)  # both requests land in one batch

    async def both() -> list:
        async with openai.AsyncOpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0) as async_client:
            return await asyncio.gather(*(async_client.completions.create(
                model=model, prompt=[ids], max_tokens=0, echo=True, logprobs=2) for model in ("tiny", "tuned")))

    base, tuned = asyncio.run(both())

    assert engine.batch_sizes[-1] == 2
    for reply, adapter in ((base, None), (tuned, adapter_dir)):
        choice = reply.choices[0]
        assert choice.finish_reason == "length" and reply.usage.completion_tokens == 0
        assert choice.text == tokenizer.decode(ids)
        logprobs = choice.logprobs
        assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
        assert len(logprobs.tokens) == len(ids) and logprobs.text_offset[0] == 0
        expected = teacher_forced_logprobs(ids, adapter)
        assert logprobs.token_logprobs[1:] == pytest.approx(
            [float(expected[t, ids[t + 1]]) for t in range(len(ids) - 1)], abs=1e-4)
        assert all(1 <= len(top) <= 3 and top[token] == logprob  # the 2 likeliest plus the chosen token
                   for token, logprob, top in zip(logprobs.tokens[1:], logprobs.token_logprobs[1:],
                                                  logprobs.top_logprobs[1:]))
    assert base.choices[0].logprobs.token_logprobs != tuned.choices[0].logprobs.token_logprobs



def test_concurrent_requests_are_batched_and_match_sequential(server, client, monkeypatch):
    _, engine = server
    sequential = [ask(client, "tiny" if i % 2 else "tuned", prompt, max_tokens=16).choices[0].message.content
                  for i, prompt in enumerate(PROMPTS)]
    calls_before = engine.batches
    monkeypatch.setattr(engine, "batch_wait_s", 0.5)  # all eight requests land in one batch, even on a busy machine

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0) as async_client:
            replies = await asyncio.gather(*(async_client.chat.completions.create(
                model="tiny" if i % 2 else "tuned", messages=[{"role": "user", "content": prompt}], temperature=0,
                max_tokens=16) for i, prompt in enumerate(PROMPTS)))
        return [reply.choices[0].message.content for reply in replies]

    concurrent = asyncio.run(all_at_once())

    assert len(set(sequential)) >= 6, sequential  # distinct replies, so mixed-up rows would show
    calls = list(engine.batch_sizes)[len(engine.batch_sizes) - (engine.batches - calls_before):]
    assert calls == [len(PROMPTS)], calls
    assert concurrent == sequential  # base and adapter rows mixed in one batch, left-padded: same greedy text


def test_sampling_with_a_seed_repeats(client):
    first = ask(client, "tiny", "hello", max_tokens=12, temperature=1.0, seed=7).choices[0].message.content
    again = ask(client, "tiny", "hello", max_tokens=12, temperature=1.0, seed=7).choices[0].message.content
    other = ask(client, "tiny", "hello", max_tokens=12, temperature=1.0, seed=8).choices[0].message.content
    assert first == again and first != other
    top_1 = ask(client, "tiny", "hello", max_tokens=12, temperature=1.0, seed=8, extra_body={"top_k": 1})
    assert top_1.choices[0].message.content == ask(client, "tiny", "hello", max_tokens=12).choices[0].message.content


class _ByteTokenizer:
    """Each token is one UTF-8 byte, so a Chinese character takes three tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_rows_never_send_half_a_character_or_half_a_stop_string():
    endpoint = Endpoint("x", "base", _ByteTokenizer(), TEMPLATES["chatml"], frozenset({0}))
    sent = []
    job = Job(endpoint=endpoint, prompt_ids=[1], max_tokens=100, stop=("STOP",), sampling=Sampling(),
              loop=None)
    job.send = sent.append
    row = _Row(job)
    for byte in "你好, 世界 STO! STOP after".encode():
        if not row.done:
            row.add(byte)

    texts = [event.text for event in sent if isinstance(event, TextEvent)]
    assert "".join(texts) == "你好, 世界 STO! "
    assert not any("\ufffd" in text for text in texts)
    assert sent[-1] == FinishEvent("stop", 1, len("你好, 世界 STO! STOP".encode()))

    sent.clear()
    job = Job(endpoint=endpoint, prompt_ids=[1], max_tokens=4, stop=(), sampling=Sampling(), loop=None)
    job.send = sent.append
    cut = _Row(job)
    for byte in "好世".encode()[:4]:
        cut.add(byte)
    assert [event.text for event in sent if isinstance(event, TextEvent)] == ["好"]  # half of 世 is dropped
    assert sent[-1] == FinishEvent("length", 1, 4)


def test_vllm_command_and_missing_vllm(tmp_path, tiny_model_dir):
    adapter = make_adapter(tmp_path / "tuned", rank=12)
    config = ServeConfig(model=ModelConfig(name=str(tiny_model_dir)), adapters=(AdapterSpec("tuned", adapter),),
                         port=9000, max_batch_size=16)
    command = vllm_command(config)
    assert command[:3] == ["vllm", "serve", str(tiny_model_dir)]
    assert command[command.index("--served-model-name") + 1] == str(tiny_model_dir)
    assert command[command.index("--lora-modules") + 1] == f"tuned={adapter.resolve()}"
    assert command[command.index("--max-lora-rank") + 1] == "16"
    assert "--enable-lora" in command and command[command.index("--port") + 1] == "9000"



def test_engine_vllm_execs_vllm_when_ready_and_refuses_otherwise(monkeypatch, tiny_model_dir):
    execs = []
    monkeypatch.setattr("os.execvpe", lambda file, argv, env: execs.append((file, argv, env)))
    monkeypatch.setattr("lorakit.serve.vllm.missing_for_vllm", lambda: ["a CUDA GPU (none is visible)"])
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model_dir), "--engine", "vllm"])
    assert isinstance(result.exception, ConfigError)
    assert "engine 'vllm' needs" in str(result.exception) and "CUDA" in str(result.exception)
    assert execs == []

    monkeypatch.setattr("lorakit.serve.vllm.missing_for_vllm", lambda: [])
    monkeypatch.setattr("shutil.which", lambda name: "/opt/bin/vllm")
    monkeypatch.setenv("LORAKIT_API_KEY", "secret")
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model_dir), "--engine", "vllm",
                                          "--port", "9001"])
    assert result.exception is None, result.output
    [(file, argv, env)] = execs
    assert file == "/opt/bin/vllm" and argv[:3] == ["/opt/bin/vllm", "serve", str(tiny_model_dir)]
    assert argv[argv.index("--port") + 1] == "9001" and "secret" not in argv
    assert env["VLLM_API_KEY"] == "secret"


def test_cli_serve_reads_the_key_from_the_environment(monkeypatch, tiny_model_dir):
    seen = []
    monkeypatch.setattr("lorakit.serve.serve", seen.append)
    monkeypatch.setenv("LORAKIT_API_KEY", "from-env")
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model_dir), "--port", "0",
                                          "--adapter", f"tuned={tiny_model_dir}", "--max-batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert seen[0].api_key == "from-env" and seen[0].max_batch_size == 4
    assert seen[0].adapters == (AdapterSpec("tuned", tiny_model_dir),)

    with pytest.raises(ConfigError, match="engine must be one of"):
        ServeConfig(engine="tgi")


def test_cli_serve_defaults_to_the_first_adapters_base(monkeypatch, tmp_path, tiny_model_dir):
    seen = []
    monkeypatch.setattr("lorakit.serve.serve", seen.append)
    base = make_model("llama", len(make_tokenizer()))
    base.name_or_path = str(tiny_model_dir)  # what PEFT records as base_model_name_or_path
    adapter = make_adapter(tmp_path / "tuned", base=base)
    result = CliRunner().invoke(cli_app, ["serve", "--adapter", f"tuned={adapter}"])
    assert result.exit_code == 0, result.output
    assert seen[0].model.name == str(tiny_model_dir)
    result = CliRunner().invoke(cli_app, ["serve"])
    assert result.exit_code == 0, result.output
    assert seen[1].model.name == ModelConfig().name


@pytest.mark.slow
def test_real_model_streams_chinese_whole_characters():
    from lorakit.serve import ServeConfig, load_endpoints

    model, endpoints = load_endpoints(ServeConfig(model=ModelConfig(name="smollm2-135m")))
    engine = Engine(model, max_batch_size=4)
    with running(create_app(engine, endpoints)) as base_url, \
            openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
        prompt = "中文：我喜欢喝茶，因为茶"
        whole = client.completions.create(model="smollm2-135m", prompt=prompt, temperature=0, max_tokens=16)
        pieces = [chunk.choices[0].text for chunk in client.completions.create(
            model="smollm2-135m", prompt=prompt, temperature=0, max_tokens=16, stream=True) if chunk.choices]
        echoed = client.completions.create(model="smollm2-135m", prompt=prompt, temperature=0, max_tokens=16,
                                           echo=True, logprobs=2).choices[0]

    text = whole.choices[0].text
    assert text and "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert any("\u4e00" <= char <= "\u9fff" for char in text), text
    # Byte-level BPE splits a Chinese character over tokens: the one that completes it carries it.
    assert echoed.text == prompt + text and "".join(echoed.logprobs.tokens) == echoed.text
    assert all(echoed.text[offset:offset + len(token)] == token
               for offset, token in zip(echoed.logprobs.text_offset, echoed.logprobs.tokens))


def test_load_endpoints_takes_run_folders_and_each_adapters_own_template(tmp_path, tiny_model_dir):
    from lorakit.adapters import parse_adapter
    from lorakit.serve import load_endpoints

    own = ("{% for message in messages %}[{{ message['content'] }}]{% endfor %}"
           "{% if add_generation_prompt %}>{% endif %}")
    make_adapter(tmp_path / "run-7" / "adapter")
    tokenizer = make_tokenizer()
    tokenizer.chat_template = own
    tokenizer.save_pretrained(tmp_path / "run-7" / "adapter")
    config = ServeConfig(model=ModelConfig(name=str(tiny_model_dir), dtype="float32", device="cpu"),
                         adapters=(parse_adapter(str(tmp_path / "run-7")),))

    model, endpoints = load_endpoints(config)

    assert list(endpoints) == [str(tiny_model_dir), "run-7"]
    assert endpoints["run-7"].template.jinja == own
    assert endpoints[str(tiny_model_dir)].template.jinja != own
    assert "run-7" in model.peft_config


@pytest.mark.parametrize("dora, first_batch", [(False, [0, 1, 2, 3, 4]), (True, [0, 2, 4])])
def test_batches_mix_adapters_unless_dora_and_mix_sampling(dora, first_batch):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    tokenizer = make_tokenizer()
    model = get_peft_model(make_model("llama", len(tokenizer)),
                           PeftLoraConfig(r=2, target_modules=["q_proj"], use_dora=dora), adapter_name="tuned")
    engine = Engine(model)

    def job(adapter: str, sampling: Sampling = Sampling()) -> Job:
        endpoint = Endpoint(adapter, adapter, tokenizer, TEMPLATES["chatml"], frozenset())
        return Job(endpoint=endpoint, prompt_ids=[7], max_tokens=4, stop=(), sampling=sampling, loop=None)

    jobs = [job("tuned"), job("base"), job("tuned"), job("base"), job("tuned", Sampling(temperature=0.7))]
    engine._pending.extend(jobs)  # queued without the engine thread, which would take them itself

    assert engine._take_batch() == [jobs[index] for index in first_batch]


def _tiny_app(engine_kwargs: dict | None = None):
    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    engine = Engine(model, **(engine_kwargs or {}))
    return engine, create_app(engine, endpoints_for(model, "tiny", tokenizer, []))


@pytest.mark.parametrize("where", ["prompt", "step", "engine loop"])
def test_a_failed_batch_answers_its_requests_with_an_error_and_the_engine_goes_on(where):
    from fastapi.testclient import TestClient

    engine, app = _tiny_app()
    failures = [RuntimeError("out of memory")]
    if where == "engine loop":
        real = engine._admit

        def admit(jobs):
            if failures:
                raise failures.pop()
            real(jobs)

        engine._admit = admit
    else:
        forwards = []

        def fail_once(*_):  # the first forward pass reads the prompt, the second is the first decoding step
            forwards.append(1)
            if failures and len(forwards) == (1 if where == "prompt" else 2):
                raise failures.pop()

        engine.model.register_forward_pre_hook(fail_once)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    with TestClient(app) as client:
        failed = client.post("/v1/chat/completions", json=body)
        assert failed.status_code == 500 and "out of memory" in failed.json()["error"]["message"]
        assert client.get("/health").status_code == 200
        answered = client.post("/v1/chat/completions", json=body)
        assert answered.status_code == 200, answered.text
        assert answered.json()["usage"]["completion_tokens"] == 3


def test_a_stopped_engine_answers_503_and_health_says_so():
    from fastapi.testclient import TestClient

    engine, app = _tiny_app()
    with TestClient(app) as client:
        engine.start()  # a second start is a no-op
        assert client.get("/health").status_code == 200
        engine.stop()
        assert client.get("/health").status_code == 503
        down = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert down.status_code == 503 and down.json()["error"]["code"] == "engine_unavailable"


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_stops_its_row(stream):
    from lorakit.adapters import BASE

    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    steps = []

    def slow_step(*_):
        steps.append(1)
        time.sleep(0.02)  # 200 tokens take 4 s, so the row must stop well before max_tokens

    model.register_forward_hook(slow_step)
    engine = Engine(model, batch_wait_s=0.001)
    endpoint = Endpoint("tiny", BASE, tokenizer, resolve_template(None, tokenizer), frozenset())  # no stop token
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 200, "temperature": 0, "stream": stream}
    with running(create_app(engine, {"tiny": endpoint})) as base_url:
        if stream:
            with httpx.stream("POST", f"{base_url}/v1/completions", json=body) as response:
                assert response.status_code == 200
                next(response.iter_lines())
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{base_url}/v1/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 10
        while (engine._running or not steps) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        assert not engine._running and engine.batches == 1
    assert 1 <= len(steps) < 120, len(steps)


def test_tools_reach_the_template():
    from fastapi.testclient import TestClient

    from lorakit.adapters import BASE
    from lorakit.serve.app import make_endpoint

    tokenizer = make_tokenizer()
    model = make_model("llama", len(tokenizer))
    model.config.max_position_embeddings = 2048  # the char-level tokenizer makes the tool schema ~500 tokens
    engine = Engine(model)
    endpoints = {"tools": make_endpoint("tools", BASE, tokenizer, TEMPLATES["chatml"]),
                 "plain": make_endpoint("plain", BASE, tokenizer, resolve_template(None, tokenizer))}
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    tool = {"type": "function",
            "function": {"name": "get_weather", "description": "Weather in a city", "parameters": parameters}}
    body = {"messages": [{"role": "user", "content": "weather in Oslo?"}], "max_tokens": 1, "temperature": 0}
    with TestClient(create_app(engine, endpoints)) as client:
        without = client.post("/v1/chat/completions", json={"model": "tools", **body})
        with_tools = client.post("/v1/chat/completions", json={"model": "tools", "tools": [tool], **body})
        refused = client.post("/v1/chat/completions", json={"model": "plain", "tools": [tool], **body})
    assert without.status_code == with_tools.status_code == 200, with_tools.text
    assert with_tools.json()["usage"]["prompt_tokens"] > without.json()["usage"]["prompt_tokens"] + 20
    assert refused.status_code == 400 and "cannot show tools" in refused.json()["error"]["message"]


def test_lm_eval_multiple_choice_over_the_server_matches_lorakit_eval(server, tmp_path, monkeypatch):
    """lm-eval-harness's `local-completions` model, batch size 2, on a local multiple-choice task.

    Like for like: lm-eval scores each option by the summed log-likelihood of " <option text>" after the prompt,
    which is lorakit eval's `scoring="content"` (its default "letter" scoring has lm-eval's equivalent in
    doc_to_choice A-D, but the tiny model then picks the same letter every time, which would prove little).
    """
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval-harness is not installed (pip install 'lm-eval[api]')")
    from lm_eval.tasks import TaskManager

    from lorakit.eval.benchmarks import Benchmark, Question
    from lorakit.eval.choice import evaluate_choice, format_prompt

    base_url, engine = server
    teas = ["green", "black", "white", "oolong", "mint", "chai", "earl grey", "rooibos", "jasmine", "matcha"]
    questions = [Question("tea", f"which {thing} is best?", tuple(teas[(i * 3 + k) % 10] for k in range(4)),
                          "ABCD"[i % 4], f"questions.jsonl:{i + 1}")
                 for i, thing in enumerate(["tea", "cup", "pot", "leaf", "brew", "sip", "kettle", "mug"])]
    benchmark = Benchmark("tea", "mmlu", dev={}, test={"tea": questions}, categories={})
    ours = evaluate_choice(lively_model(), make_tokenizer(), benchmark, shots=0, scoring="content", progress=False)
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"prompt": format_prompt(benchmark, question, 0, "content"),
                                        "options": list(question.options), "answer": "ABCD".index(question.answer)})
                            + "\n" for question in questions))
    tokenizer_dir = tmp_path / "tokenizer"
    make_tokenizer().save_pretrained(tokenizer_dir)
    (tmp_path / "tea.yaml").write_text(yaml.safe_dump({
        "task": "lorakit_tea", "dataset_path": "json", "test_split": "test", "output_type": "multiple_choice",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "cache")},
        "doc_to_text": "prompt", "doc_to_choice": "{{options}}", "doc_to_target": "answer",
        "metric_list": [{"metric": "acc"}]}))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # how local-completions takes the server's key
    batches_before = engine.batches

    theirs = lm_eval.simple_evaluate(
        model="local-completions", batch_size=2, log_samples=True, tasks=["lorakit_tea"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        model_args=f"model=tiny,base_url={base_url}/v1/completions,tokenizer_backend=huggingface,"
                   f"tokenizer={tokenizer_dir},max_retries=1")

    records = ours.records
    assert len({record["predicted"] for record in records}) >= 3, records  # the model tells the questions apart
    assert theirs["results"]["lorakit_tea"]["acc,none"] == ours.accuracy
    samples = sorted(theirs["samples"]["lorakit_tea"], key=lambda sample: sample["doc_id"])
    for sample, record in zip(samples, records):
        assert [resp[0][0] for resp in sample["resps"]] == pytest.approx(list(record["logprobs"].values()), abs=1e-4)
    new = engine.batches - batches_before
    assert list(engine.batch_sizes)[-new:] == [2] * (len(questions) * 4 // 2)  # each request's two prompts: a batch
