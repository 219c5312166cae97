"""`python -m megactllm.train` (and `torchrun ... -m megactllm.train`): the training command's
long-standing name, kept for launch scripts. The entry point lives in megactllm.training.main."""
from megactllm.training.main import exit_for, main, parse_args  # noqa: F401

if __name__ == "__main__":
    exit_for(main())
