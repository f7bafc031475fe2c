"""Everything that takes a trained model out of lorakit: merge.py (base + adapter -> one model folder), gguf.py
(llama.cpp's GGUF, whole or adapter-only), ollama.py (a Modelfile beside a GGUF), hub.py (the Hugging Face Hub).

Every export writes into a temporary folder beside its target and moves it into place at the end, and refuses an
existing output unless `force` is set.
"""
