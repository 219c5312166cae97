"""Validation loss every validation.interval iterations, and once more at the end of the run."""
from __future__ import annotations

from megactllm.training.callbacks.base import PRIORITY_EVALUATE, Callback
from megactllm.training.run.metrics import perplexity


class Validation(Callback):
    name = "validation"
    priority = PRIORITY_EVALUATE + 1  # the validation record before the benchmarks', as before

    def __init__(self, eval_interval: int, perplexity_of_first_metric: bool):
        self.eval_interval = eval_interval
        self.perplexity = perplexity_of_first_metric  # a token NLL; a DPO loss has none

    def on_evaluate(self, trainer) -> None:
        if trainer.state.iteration % self.eval_interval == 0:
            self._validate(trainer)

    def on_train_end(self, trainer) -> None:
        s = trainer.state
        if s.iteration >= trainer.train_iters and s.iteration % self.eval_interval:
            self._validate(trainer)

    def _validate(self, trainer) -> None:
        metrics = trainer.evaluate()
        first = trainer.metric_names[0]
        record = {
            "iteration": trainer.state.iteration,
            "consumed_tokens": trainer.state.consumed_tokens,
            "loss_name": first,
            "metrics": metrics,
        }
        if self.perplexity:
            record["ppl"] = perplexity(metrics[first])
        trainer.log.validation(record)
        trainer.result.valid.append(record)
