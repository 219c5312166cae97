"""Backends answer lm-eval's requests over token ids: hf.py (transformers), parallel.py (a
megactllm checkpoint or live model at its TP/PP/DP layout)."""
