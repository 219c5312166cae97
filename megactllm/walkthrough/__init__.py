"""The walkthrough: an application on top of the library, not part of its core. It chains the whole CT-LLM path (clean -> tokenizer -> tokenize -> pretrain -> evaluate -> SFT ->
DPO -> export -> GGUF -> serve) on the bundled sample, with done-markers so that a rerun skips finished stages.

    from megactllm.walkthrough import FullPath, FullPathSettings, run_stages
    path = FullPath(repo, out, FullPathSettings.quick())
    records = run_stages(path.stages(), out, path.settings_dict())

Each stage runs a `python -m megactllm <command>` (training under torchrun) and reads its figures
from the files that command wrote. Its front ends: `megactllm full-path` and tools/full_path.py.
"""
from .full_path import FullPath, FullPathSettings
from .runner import Stage, StageFailed, StageRecord, StageResult, format_table, run_stages

__all__ = ["FullPath", "FullPathSettings", "Stage", "StageFailed", "StageRecord", "StageResult", "format_table",
           "run_stages"]
