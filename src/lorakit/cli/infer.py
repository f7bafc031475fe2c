"""`lorakit chat`, `lorakit predict`, `lorakit serve` and adapter mixing: talk to a model and plug it into apps."""

from __future__ import annotations
