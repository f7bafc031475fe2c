"""Evaluation stage: did fine-tuning help, and what did it forget?

metrics.py (ROUGE/BLEU/chrF/EM/F1), perplexity.py, generation.py (predictions next to references),
benchmarks.py (MMLU / C-Eval / CMMLU files) and choice.py (scored by log-likelihood), gsm8k.py, compare.py (A/B
answers), judge.py (LLM-as-judge), adapter_inspect.py (where an adapter changed the model), suite.py and report.py
(before/after, forgetting).
"""
