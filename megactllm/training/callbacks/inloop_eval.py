"""Benchmark accuracy during training (eval.interval): megactllm.eval.inloop on the live model."""
from __future__ import annotations

from megactllm.training.callbacks.base import PRIORITY_EVALUATE, Callback


class InLoopEvaluation(Callback):
    name = "inloop_eval"
    priority = PRIORITY_EVALUATE

    def __init__(self, evaluator):
        self.evaluator = evaluator  # megactllm.eval.inloop.InLoopEvaluator

    def on_evaluate(self, trainer) -> None:
        s = trainer.state
        if self.evaluator.due(s.iteration):
            trainer.log.benchmark({"iteration": s.iteration, "consumed_tokens": s.consumed_tokens,
                                   "metrics": self.evaluator.run()})
