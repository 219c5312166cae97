"""`python -m megactllm <command> ...`: the `megactllm` command without the console script."""
from megactllm.cli import console_main

console_main()
