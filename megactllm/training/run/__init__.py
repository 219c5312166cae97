"""Run operations: what surrounds the loop in a process rather than steps it.

lock.py            one writer per checkpoint directory ({checkpoint.save}/run.lock)
signals.py         a scheduler's SIGTERM/SIGUSR1, the time limit, the exit status a launch script reads
parent_death.py    torchrun workers die with their launcher
preflight.py       every check that needs the world (files, memory, world size) before anything is built
memory_estimate.py per-rank memory of a run, estimated before it is built
metrics.py         throughput/MFU arithmetic, the log line, metrics.jsonl, TensorBoard, the loss PNG
wandb_sink.py      Weights & Biases as a metrics sink
"""
