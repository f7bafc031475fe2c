"""Serving stage: `serve(config)` answers OpenAI API requests with the base model and its adapters, batched.

app.py holds the HTTP API, engine.py the batching engine, protocol.py the request and response bodies, vllm.py the
road of engine 'vllm'.
"""

from lorakit.serve.app import ServeConfig, create_app, endpoints_for, load_endpoints, serve
from lorakit.serve.engine import Endpoint, Engine

__all__ = ["Endpoint", "Engine", "ServeConfig", "create_app", "endpoints_for", "load_endpoints", "serve"]
