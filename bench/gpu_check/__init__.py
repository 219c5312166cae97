"""The GPU check: one command that measures megactllm's GPU path stage by stage (scripts/gpu_check.sh).

Not part of the library: nothing in megactllm imports it. Each stage uses the project's own code
(model builder, Trainer, checkpoint save/load, HF export, the eval HF backend) and returns one row.
"""
