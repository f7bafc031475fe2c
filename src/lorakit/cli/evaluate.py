"""`lorakit eval`, `lorakit inspect` and `lorakit sweep`: did fine-tuning help, and what did it forget?"""

from __future__ import annotations
