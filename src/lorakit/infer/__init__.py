"""Inference stage: talk to a base model or base + adapter with the template it was trained with.

generate.py: `generate()` (batched) and `stream_generate()` (piece by piece), loading with `load_for_inference()`;
chat.py: `Chat` and the terminal REPL `run_chat()`; predict.py: `predict()`, resumable batch prediction to JSONL.
"""

from lorakit.infer.chat import Chat, open_chat, run_chat
from lorakit.infer.generate import (GenerationConfig, generate, inference_model, load_adapter, load_for_inference,
                                    load_inference_tokenizer, stream_generate)
from lorakit.infer.predict import PredictionRequest, PredictSummary, predict, prediction_requests, run_predict

__all__ = ["Chat", "GenerationConfig", "PredictSummary", "PredictionRequest", "generate", "inference_model", "load_adapter", "load_for_inference",
           "load_inference_tokenizer", "open_chat", "predict", "prediction_requests", "run_chat", "run_predict",
           "stream_generate"]
