"""`lorakit serve`: an OpenAI-compatible HTTP API (FastAPI) over the base model and each loaded adapter.

`create_app()` builds the app around a ready Engine and its Endpoints (tests pass tiny models); `load_endpoints()`
loads them from a ServeConfig, and `serve()` runs the whole server with uvicorn. The base model is served under its
name as given (e.g. "smollm2-135m") and each adapter under its own, so an app can A/B them through one API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lorakit.adapters import adapter_tokenizer, load_adapters, resolve_adapter_dirs
from lorakit.config import BASE, AdapterSpec, ServeConfig
from lorakit.errors import LorakitError
from lorakit.infer.generate import stop_token_ids
from lorakit.serve.engine import (GREEDY_BELOW, Endpoint, Engine, EngineUnavailable, ErrorEvent, FinishEvent, Job,
                                  Sampling, TextEvent)
from lorakit.serve.protocol import (ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, chat_chunk,
                                    chat_completion, chat_logprobs, completion_choice, completion_logprobs,
                                    error_body, new_id, text_completion, usage)
from lorakit.templates import Template, render, resolve_template

class APIError(Exception):
    """A request the server refuses, answered with OpenAI's error body and `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.kind, self.param, self.code), status_code=self.status)


def make_endpoint(name: str, adapter: str, tokenizer: PreTrainedTokenizerBase,
                  template: Template | None = None) -> Endpoint:
    """An Endpoint; without `template`, the tokenizer's own chat template."""
    template = template or resolve_template(None, tokenizer)
    tokenizer("warm-up", add_special_tokens=False)  # settles the fast tokenizer's state before threads share it
    return Endpoint(name, adapter, tokenizer, template, frozenset(stop_token_ids(tokenizer, template)))


def endpoints_for(model: PreTrainedModel, base_name: str, tokenizer: PreTrainedTokenizerBase,
                  specs: Sequence[AdapterSpec]) -> dict[str, Endpoint]:
    """The base model under `base_name` and each adapter of `specs` (already on `model`) under its name, each
    with the tokenizer and template saved in its folder (the base model's when it has none)."""
    endpoints = {base_name: make_endpoint(base_name, BASE, tokenizer)}
    for spec in specs:
        endpoints[spec.name] = make_endpoint(spec.name, spec.name, *adapter_tokenizer(spec.path, tokenizer, base_name))
    return endpoints


def load_endpoints(config: ServeConfig) -> tuple[PreTrainedModel, dict[str, Endpoint]]:
    """Load the base model and every adapter of `config`; refuses an adapter trained on another base model."""
    from lorakit.model import load_model, load_tokenizer

    specs = resolve_adapter_dirs(config.adapters)
    tokenizer = load_tokenizer(config.model)
    model = load_adapters(load_model(config.model), specs, config.model.name)
    return model, endpoints_for(model, config.model.name, tokenizer, specs)


def create_app(engine: Engine, endpoints: dict[str, Endpoint], api_key: str | None = None,
               default_max_tokens: int = 256) -> FastAPI:
    """The FastAPI app: /v1/models, /v1/chat/completions, /v1/completions and /health.

    The app starts `engine` on startup and stops it on shutdown. With `api_key`, /v1 routes need
    `Authorization: Bearer <api_key>`. Bad requests get OpenAI-style errors (400, 401, 404), never a 500.
    """
    context_length = getattr(engine.model.config, "max_position_embeddings", None)
    vocab_size = engine.model.get_input_embeddings().num_embeddings
    base_name = next(name for name, endpoint in endpoints.items() if endpoint.adapter == BASE)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="lorakit", lifespan=lifespan)

    def check_key(request: Request) -> None:
        if not _authorized(request, api_key):
            raise _unauthorized()

    @app.exception_handler(APIError)
    async def on_api_error(_: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI parses the body before running dependencies; a wrong key still answers 401 first.
        return (_validation_error(error) if _authorized(request, api_key) else _unauthorized()).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return APIError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(EngineUnavailable)
    async def on_engine_down(_: Request, error: EngineUnavailable) -> JSONResponse:
        return APIError(503, str(error), kind="server_error", code="engine_unavailable").response()

    @app.exception_handler(Exception)
    async def on_fault(_: Request, error: Exception) -> JSONResponse:
        # a genuine server fault: still OpenAI's error shape, so clients show the message rather than a parse error
        return APIError(500, f"Internal server error: {type(error).__name__}: {error}", kind="server_error",
                        code="internal_error").response()

    def find(name: str) -> Endpoint:
        if name not in endpoints:
            raise APIError(404, f"The model '{name}' does not exist. Served models: {', '.join(endpoints)}.",
                           param="model", code="model_not_found")
        return endpoints[name]

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.alive:
            return JSONResponse({"status": "engine_down", "models": list(endpoints)}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(endpoints)})

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, root=None if e.adapter == BASE else base_name)
                               for name, e in endpoints.items()])

    @app.get("/v1/models/{name}", dependencies=[Depends(check_key)])
    async def model(name: str) -> ModelCard:
        endpoint = find(name)
        return ModelCard(id=name, root=None if endpoint.adapter == BASE else base_name)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        endpoint = find(body.model)
        try:
            prompt = render(endpoint.template, endpoint.tokenizer, [m.as_dict() for m in body.messages],
                            tools=body.tools, add_generation_prompt=True)
        except LorakitError as err:
            raise APIError(400, str(err), param="messages") from None
        except (TypeError, ValueError, UnicodeError) as err:
            raise APIError(400, f"The messages cannot be rendered ({type(err).__name__}: {err}). Send valid UTF-8 "
                           "text (no lone surrogates).", param="messages") from None
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true; set both, or leave top_logprobs out.",
                           param="top_logprobs")
        _refuse_streamed_logprobs(body, body.logprobs)
        stop = (*body.stop_strings(), *endpoint.template.stop_words)
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
        job = _new_job(endpoint, _tokenize(endpoint, prompt, "messages"), body, max_tokens, stop, context_length,
                       "messages", logprobs=body.top_count())
        engine.submit(job)
        request_id = new_id("chatcmpl")
        if body.stream:
            return _respond_streaming(job, body, request, request_id, _chat_stream)
        (text, finish), = await _collect([job], request)
        logprobs = chat_logprobs(endpoint.tokenizer, finish.logprobs) if finish.logprobs is not None else None
        return chat_completion(request_id, body.model, text, finish.reason,
                               usage(finish.prompt_tokens, finish.completion_tokens), logprobs)

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, request: Request):
        endpoint = find(body.model)
        prompts = body.prompts()
        if not prompts:
            raise APIError(400, "prompt is an empty list; send a prompt (text or token ids) or a list of them.",
                           param="prompt")
        if len(prompts) > 1 and body.stream:
            raise APIError(400, f"prompt holds {len(prompts)} prompts, which lorakit serve answers together but does "
                           "not stream; set stream to false, or send one prompt per streaming request.",
                           param="stream", code="unsupported_parameter")
        _refuse_streamed_logprobs(body, body.logprobs is not None or body.echo, "logprobs and echo")
        max_tokens = body.max_tokens if body.max_tokens is not None else default_max_tokens
        if max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens is 0, which only makes sense with echo: true (score the prompt). Ask "
                           "for at least 1 token, or set echo.", param="max_tokens")
        jobs = [_new_job(endpoint, _prompt_ids(endpoint, prompt, vocab_size), body, max_tokens, body.stop_strings(),
                         context_length, "prompt", logprobs=body.logprobs, echo=body.echo)
                for prompt in prompts]
        engine.submit(*jobs)
        request_id = new_id("cmpl")
        if body.stream:
            return _respond_streaming(jobs[0], body, request, request_id, _completion_stream)
        answers = await _collect(jobs, request)
        choices = [_completion_choice(index, endpoint, prompt, job, text, finish)
                   for index, (prompt, job, (text, finish)) in enumerate(zip(prompts, jobs, answers))]
        used = usage(sum(finish.prompt_tokens for _, finish in answers),
                     sum(finish.completion_tokens for _, finish in answers))
        return text_completion(request_id, body.model, "", None, used=used, choices=choices)

    return app


def _authorized(request: Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


def _refuse_streamed_logprobs(body: ChatCompletionRequest | CompletionRequest, asked: bool,
                              what: str = "logprobs") -> None:
    if body.stream and asked:
        raise APIError(400, f"lorakit serve does not stream {what}; set stream to false to get them, or leave them "
                       "out to stream.", param="stream", code="unsupported_parameter")


def _tokenize(endpoint: Endpoint, prompt: str, prompt_param: str) -> list[int]:
    try:
        prompt_ids = endpoint.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    except (TypeError, ValueError, UnicodeError) as err:  # e.g. a lone surrogate the tokenizer cannot encode
        raise APIError(400, f"The {prompt_param} cannot be tokenized ({type(err).__name__}: {err}). Send valid "
                       "UTF-8 text (no lone surrogates).", param=prompt_param) from None
    if not prompt_ids:
        if endpoint.tokenizer.bos_token_id is None:
            raise APIError(400, "The prompt is empty; send some text.", param=prompt_param)
        prompt_ids = [endpoint.tokenizer.bos_token_id]
    return prompt_ids


def _prompt_ids(endpoint: Endpoint, prompt: str | list[int], vocab_size: int) -> list[int]:
    """A completion prompt's token ids: text tokenized as is (no special tokens added), or ids checked."""
    if isinstance(prompt, str):
        return _tokenize(endpoint, prompt, "prompt")
    if not prompt:
        raise APIError(400, "A prompt of token ids is empty; send at least one token id.", param="prompt")
    bad = next((token for token in prompt if not 0 <= token < vocab_size), None)
    if bad is not None:
        raise APIError(400, f"Token id {bad} in prompt is outside the vocabulary of model '{endpoint.name}' "
                       f"(0 to {vocab_size - 1}).", param="prompt")
    return list(prompt)


def _new_job(endpoint: Endpoint, prompt_ids: list[int], body: ChatCompletionRequest | CompletionRequest,
             max_tokens: int, stop: tuple[str, ...], context_length: int | None, prompt_param: str,
             logprobs: int | None = None, echo: bool = False) -> Job:
    """The engine's Job for a request; APIError (400) for what lorakit serve does not do or cannot fit."""
    if (body.n or 1) > 1:
        raise APIError(400, f"n={body.n} is not supported: lorakit serve returns one choice per prompt (n=1). "
                       "Send several requests instead.", param="n", code="unsupported_parameter")
    if context_length is not None:
        room = context_length - len(prompt_ids)
        if room < (1 if max_tokens else 0):
            raise APIError(400, f"The prompt is {len(prompt_ids)} tokens; model '{endpoint.name}' takes at most "
                           f"{context_length}. Shorten it.", param=prompt_param, code="context_length_exceeded")
        max_tokens = min(max_tokens, room)
    temperature = 1.0 if body.temperature is None else body.temperature  # OpenAI's default
    greedy = temperature < GREEDY_BELOW
    sampling = Sampling(temperature=0.0 if greedy else temperature, top_p=body.top_p or 1.0,
                        top_k=max(body.top_k or 0, 0), seed=None if greedy else body.seed)
    return Job(endpoint=endpoint, prompt_ids=prompt_ids, max_tokens=max_tokens, stop=stop, sampling=sampling,
               loop=asyncio.get_running_loop(), logprobs=logprobs, echo=echo)


def _completion_choice(index: int, endpoint: Endpoint, prompt: str | list[int], job: Job, text: str,
                       finish: FinishEvent) -> dict:
    """One prompt's choice: with echo, the prompt's text before the reply and its tokens before the reply's."""
    shown = ""
    if job.echo:
        shown = prompt if isinstance(prompt, str) else endpoint.tokenizer.decode(prompt, skip_special_tokens=False)
    logprobs = None
    if finish.logprobs is not None:
        logprobs = completion_logprobs(endpoint.tokenizer, finish.prompt_logprobs or (), finish.logprobs,
                                       reply_start=len(shown))
    return completion_choice(index, shown + text, finish.reason, logprobs)


def _unauthorized() -> APIError:
    return APIError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY' (the OpenAI "
                    "client's api_key).", code="invalid_api_key")


def _validation_error(error: RequestValidationError) -> APIError:
    problems = error.errors()
    first = problems[0] if problems else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"The request body is not valid JSON ({first.get('msg', 'parse error')}). Send a JSON "
                        "object such as {\"model\": ..., \"messages\": [...]}.", code="invalid_json")
    parts = []
    for problem in problems[:3]:
        where = ".".join(str(item) for item in problem.get("loc", ()) if item != "body") or "body"
        parts.append(f"{where}: {problem.get('msg')}")
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    param = ".".join(str(item) for item in first.get("loc", ()) if item != "body") or None
    return APIError(400, "Invalid request: " + "; ".join(parts) + more + ".", param=param)


async def _events(job: Job) -> AsyncIterator[TextEvent | FinishEvent | ErrorEvent]:
    while True:
        event = await job.events.get()
        yield event
        if not isinstance(event, TextEvent):
            return


async def _cancel_on_disconnect(request: Request, job: Job, poll_s: float = 0.05) -> None:
    """Cancel `job` once the client has gone, so its row stops generating; ends the job's event stream too."""
    while not await request.is_disconnected():
        await asyncio.sleep(poll_s)
    job.cancelled = True
    job.events.put_nowait(ErrorEvent("The client disconnected."))


def _respond_streaming(job: Job, body: ChatCompletionRequest | CompletionRequest, request: Request,
                       request_id: str, stream: Callable[[Job, str, str, bool], AsyncIterator[dict]]
                       ) -> StreamingResponse:
    """The job's answer as SSE chunks."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _sse(stream(job, request_id, body.model, include_usage), job, request)


async def _collect(jobs: list[Job], request: Request) -> list[tuple[str, FinishEvent]]:
    """Each job's whole text and finish; all jobs are cancelled if the client goes away or one fails."""
    watchers = [asyncio.create_task(_cancel_on_disconnect(request, job)) for job in jobs]
    try:
        return list(await asyncio.gather(*(_collect_one(job) for job in jobs)))
    finally:
        for watcher in watchers:
            watcher.cancel()
        for job in jobs:
            job.cancelled = True  # a no-op once finished; stops the row if the client went away


async def _collect_one(job: Job) -> tuple[str, FinishEvent]:
    pieces, finish = [], None
    async for event in _events(job):
        if isinstance(event, TextEvent):
            pieces.append(event.text)
        elif isinstance(event, ErrorEvent):
            raise APIError(500, event.message, kind="server_error", code="generation_failed")
        else:
            finish = event
    return "".join(pieces), finish


def _sse(chunks: AsyncIterator[dict], job: Job, request: Request) -> StreamingResponse:
    async def lines() -> AsyncIterator[str]:
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            job.cancelled = True
    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chat_stream(job: Job, request_id: str, model: str, include_usage: bool) -> AsyncIterator[dict]:
    yield chat_chunk(request_id, model, {"role": "assistant", "content": ""})
    async for event in _events(job):
        if isinstance(event, TextEvent):
            yield chat_chunk(request_id, model, {"content": event.text})
        elif isinstance(event, ErrorEvent):
            yield error_body(event.message, "server_error", code="generation_failed")
        else:
            yield chat_chunk(request_id, model, {}, finish_reason=event.reason)
            if include_usage:
                yield chat_chunk(request_id, model, {}, used=usage(event.prompt_tokens, event.completion_tokens),
                                 with_choice=False)


async def _completion_stream(job: Job, request_id: str, model: str, include_usage: bool) -> AsyncIterator[dict]:
    async for event in _events(job):
        if isinstance(event, TextEvent):
            yield text_completion(request_id, model, event.text, None)
        elif isinstance(event, ErrorEvent):
            yield error_body(event.message, "server_error", code="generation_failed")
        else:
            yield text_completion(request_id, model, "", event.reason)
            if include_usage:
                yield text_completion(request_id, model, "", None,
                                      used=usage(event.prompt_tokens, event.completion_tokens), with_choice=False)


def serve(config: ServeConfig) -> None:
    """Load the model and adapters and serve them until interrupted (vLLM's server with engine="vllm")."""
    if config.engine == "vllm":
        from lorakit.serve.vllm import run_vllm

        run_vllm(config)
        return
    import uvicorn

    model, endpoints = load_endpoints(config)
    engine = Engine(model, max_batch_size=config.max_batch_size, batching=config.batching)
    app = create_app(engine, endpoints, api_key=config.api_key, default_max_tokens=config.default_max_tokens)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
