"""The ground floor: plumbing every package uses (corpus reading, atomic writes, progress, rank and
environment, recipe loading). It imports nothing else of megactllm's but errors."""
