"""Chinese corpus cleaning the MAP-CC way: filters, exact and MinHash-LSH dedup, reports.

    from megactllm.clean import CleanConfig, run_all
    cfg = CleanConfig.from_yaml("examples/clean/mapcc.yaml", ["run.output_dir=out"])
    run_all(cfg)

See tools/clean_corpus.py for the command line and runner.py for stages and resumption.
"""
from .config import CleanConfig
from .pipeline import Cleaner, Outcome
from .runner import STAGES, run_all, run_stage, slurm_task

__all__ = ["CleanConfig", "Cleaner", "Outcome", "STAGES", "run_all", "run_stage", "slurm_task"]
