"""`lorakit serve` (OpenAI-compatible HTTP server) and `lorakit adapters` (load several, mix them)."""

from __future__ import annotations
