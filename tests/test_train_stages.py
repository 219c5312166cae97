"""The stage registry, the run-length arithmetic and the recipes: cheap checks, no processes."""
from pathlib import Path

import pytest

from megactllm.config import ConfigError, load_config
from megactllm.training.schedule import (
    ScheduleError,
    num_microbatches,
    resolve_train_iters,
)
from megactllm.training.stages import (
    UnknownStageError,
    available_stages,
    build_task,
    get_task_factory,
    register_stage,
)

RECIPES = Path(__file__).resolve().parents[1] / "examples" / "configs"


def test_builtin_stages_resolve_lazily():
    assert {"pretrain", "sft", "dpo"} <= set(available_stages())
    assert get_task_factory("pretrain").__name__ == "PretrainTask"
    task = build_task(load_config(None, []))
    assert task.name == "pretrain" and task.metric_names() == ["lm loss"]


def test_unknown_and_registered_stages():
    with pytest.raises(UnknownStageError, match="available"):
        get_task_factory("nope")

    class Custom:
        name = "custom"

    register_stage("custom-test", lambda cfg: Custom())
    assert build_task(load_config(None, ["train.stage=custom-test"])).name == "custom"


def test_run_length_from_iters_tokens_and_epochs():
    cfg = load_config(None, ["model.seq_length=128", "train.global_batch_size=16", "train.duration=20000 tokens"])
    assert resolve_train_iters(cfg) == 10  # ceil(20000 / 2048)
    cfg = load_config(None, ["train.stage=sft", "train.duration=2 epochs", "train.global_batch_size=8"])
    assert resolve_train_iters(cfg, train_samples=100) == 25
    with pytest.raises(ScheduleError, match="finite training set"):
        resolve_train_iters(cfg)
    with pytest.raises(ConfigError, match="train.global_batch_size=6: must be a multiple of train.micro_batch_size=4"):
        load_config(None, ["train.global_batch_size=6", "train.micro_batch_size=4"])
    with pytest.raises(ScheduleError, match="multiple of micro_batch_size"):
        num_microbatches(load_config(None, ["train.global_batch_size=6", "train.micro_batch_size=3"]), 4)


def test_recipes_load_and_yaml_exponents_are_numbers():
    cfg = load_config(str(RECIPES / "ctllm_2b.yaml"), ["optim.lr=2e-4"])
    assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.num_layers == 32 and cfg.optim.bf16 and cfg.parallel.use_distributed_optimizer
    assert resolve_train_iters(cfg) == 149570
    for name in ("tiny_cpu", "llama2_7b_continue"):
        load_config(str(RECIPES / f"{name}.yaml"))


def test_stages_declare_what_they_provide_and_the_loop_probes_nothing():
    from megactllm.training.stages.dpo.task import DPOTask
    from megactllm.training.trainer import StageError, Trainer
    from megactllm.training.stages.pretrain import PretrainTask
    from megactllm.training.stages.sft import SFTTask
    from megactllm.training.stages.task import StageCapabilities

    assert PretrainTask.provides == StageCapabilities(perplexity=True, blend_schedule=True)
    assert SFTTask.provides == StageCapabilities(perplexity=True)
    assert DPOTask.provides == StageCapabilities(sequences_per_sample=2)

    class Undeclared:
        name = "undeclared"
        sequences_per_sample = 2  # an attribute the old loop probed for: no longer read

    with pytest.raises(StageError, match="must declare `provides = StageCapabilities"):
        Trainer(load_config(None, []), task=Undeclared())


def test_callbacks_close_all_even_when_one_raises():
    from megactllm.training.callbacks import Callback, CallbackList

    closed = []

    class Failing(Callback):
        def on_close(self, trainer):
            closed.append("failing")
            raise OSError("disk gone")

    class Releasing(Callback):
        def on_close(self, trainer):
            closed.append("releasing")

    callbacks = CallbackList([Failing(), Releasing()])
    callbacks.on_train_start(None)  # only started callbacks are closed
    with pytest.raises(OSError, match="disk gone"):
        callbacks.close(None)
    assert closed == ["failing", "releasing"]
    assert isinstance(callbacks.of(Releasing), Releasing)
