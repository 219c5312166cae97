"""megactllm: train Chinese-centric LLMs the CT-LLM way on megatron-core."""

__version__ = "0.1.0"
