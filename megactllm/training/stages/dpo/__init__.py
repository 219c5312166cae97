"""Stage `dpo`: the task (task.py), its losses (loss.py), the reference log-probs computed once
(reference.py) and their command `megactllm precompute-dpo-reference` (cli.py)."""
