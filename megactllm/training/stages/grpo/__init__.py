"""Stage `grpo`: its loss (loss.py); the rollouts and rewards it trains on are megactllm.rl."""
