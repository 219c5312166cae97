"""Training: one loop that every stage runs, its callbacks, and the operations around a run.

main.py        the entry point: `python -m megactllm.train` / `megactllm train` (checks, then the loop)
trainer.py     the Trainer: the one loop over steps (schedules, optimizer step, callbacks' hooks)
resume.py      where a run starts: a checkpoint to resume, weights to start from, or nothing
rng.py         every random generator a rank draws from, captured and restored
optimizer.py   megatron-core's optimizer and one guarded step
schedule.py    how long a run lasts (iterations, samples, epochs) and how its LR moves
batches.py     which samples a data-parallel rank reads at each step
model_setup.py the bare model chunks wrapped for megatron-core's schedules and optimizer
context_parallel.py  the data side of context parallelism
stages/        what differs per stage: pretrain, sft, dpo, grpo (a Task each, a folder when it has more
               than one file) and the registry of stages
callbacks/     the loop's concerns, one callback each: checkpointing, exit conditions, run lock,
               throughput/MFU, validation, in-loop eval, non-finite and spike handling, W&B, ...
run/           run operations: lock, signals, parent death, preflight, memory estimate, metrics, W&B sink

Nothing is imported here: `python -m megactllm.train` installs its signal handlers before any
heavy import.
"""
