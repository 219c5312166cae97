"""Pretraining data: tokenizing a corpus into Megatron indexed datasets, GPT samples, blends and
blend schedules."""
