"""Training callbacks: hooks run by declared priority; each callback's own state travels in the
checkpoint under its name (and is read from the train state of a checkpoint written before, at
2c88b3a); on_error and on_close hear of a run that raised, on_train_end does not."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from train_utils import write_corpus

from megactllm.testing import run_distributed
from megactllm.training.callbacks import Callback, CallbackList

# A checkpoint written by megactllm at 2c88b3a (make.py beside it): iteration 7 of a 1-layer model,
# spike skipping on (window 4), one forced spike rolled back (samples [10, 12) skipped).
OLD = Path(__file__).parent / "data" / "checkpoints" / "v1_spike_rollback"


def _overrides(data: str, work: str, **extra) -> list[str]:
    """The fixture's recipe (the model must match its checkpoint)."""
    base = {
        "model.arch": "tiny", "model.num_layers": 1, "model.hidden_size": 16, "model.ffn_hidden_size": 32,
        "model.num_attention_heads": 2, "model.vocab_size": 512, "model.seq_length": 32,
        "model.max_position_embeddings": 32, "data.data_path": f"[{data}]", "data.split": "100,0,0",
        "data.data_cache_path": f"{work}/data_cache", "train.global_batch_size": 2, "train.micro_batch_size": 2,
        "logging.interval": 1, "validation.interval": 0, "validation.iters": 0, "logging.dir": f"{work}/log",
        "stability.skip_spiky_steps": "true", "stability.spike_window": 4, "optim.lr": 3e-3, "optim.min_lr": 3e-4,
        "optim.lr_warmup_iters": 1, "optim.bf16": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


class Recorder(Callback):
    """Records the hooks it hears and every callback's state when the run starts (after the resume)."""

    name = "recorder"
    priority = -10

    def __init__(self):
        self.heard: list = []
        self.states_at_start = None

    def on_train_start(self, trainer):
        self.heard.append("on_train_start")
        self.states_at_start = trainer.callbacks.state_dict()

    def on_train_end(self, trainer):
        self.heard.append("on_train_end")

    def on_error(self, trainer, exc):
        self.heard.append(f"on_error:{type(exc).__name__}:{exc}")

    def on_close(self, trainer):
        self.heard.append("on_close")


def _train(overrides: list[str], fail_at_step: int = 0) -> dict:
    """Rank body: the default callbacks plus a Recorder; a step that raises when fail_at_step is set."""
    from dataclasses import asdict

    from megactllm.config import load_config
    from megactllm.parallel import initialize_parallel
    from megactllm.training.stages.pretrain import PretrainTask
    from megactllm.training.trainer import Trainer

    class Failing(PretrainTask):
        steps = 0

        def prepare_global_batch(self, microbatches, model_chunks):
            Failing.steps += 1
            if Failing.steps == fail_at_step:
                raise RuntimeError("a step failed on purpose (test)")
            return microbatches

    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    trainer = Trainer(cfg, Failing(cfg))
    recorder = Recorder()
    trainer.callbacks = CallbackList(list(trainer.callbacks) + [recorder])
    out = {"order": [cb.name for cb in trainer.callbacks]}
    try:
        result = trainer.fit()
        out.update(state=asdict(result.state), last_checkpoint=result.last_checkpoint)
    except RuntimeError as e:
        out["raised"] = str(e)
    out.update(heard=recorder.heard, states_at_start=recorder.states_at_start, states_at_end=trainer.callbacks.state_dict())
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("callbacks")
    return work, write_corpus(str(work / "corpus"), seed=11, documents=60)


class _Named(Callback):
    def __init__(self, name, priority, log):
        self.name, self.priority, self.log = name, priority, log

    def on_step_start(self, trainer):
        self.log.append(self.name)


def test_hooks_run_by_priority_ties_keep_the_given_order_and_names_are_unique():
    log: list = []
    cbs = CallbackList([_Named("c", 0, log), _Named("a", 50, log), _Named("b", 0, log), _Named("first", 100, log)])
    cbs.on_step_start(None)
    assert log == ["first", "a", "c", "b"]
    assert cbs.order() == "first (100), a (50), c (0), b (0)"
    with pytest.raises(ValueError, match="named"):
        CallbackList([_Named("x", 1, log), _Named("x", 2, log)])


def test_default_callbacks_order_by_their_bands(tmp_path):
    from megactllm.config import load_config
    from megactllm.training.callbacks import default_callbacks

    cfg = load_config(None, _overrides("unused", str(tmp_path), **{
        "checkpoint.save": str(tmp_path / "ckpt"), "checkpoint.interval": 5, "stability.spike_rollback_after": 1}))
    trainer = SimpleNamespace(cfg=cfg, blend_schedule=None, world_size=2, valid_reader=None, rank=0)
    names = [cb.name for cb in CallbackList(default_callbacks(trainer))]
    # The lock before anything opens; data position and guards before the record is written; the
    # record before evaluation and saving; the save before the exit decision; the plot last.
    assert names == ["run_lock", "skip_data", "nonfinite", "spikes", "stragglers", "throughput",
                     "checkpointing", "exit", "loss_plot"]


def test_on_error_and_on_close_hear_of_a_step_that_raised(corpus):
    work, data = corpus
    run = work / "failing"
    ov = _overrides(data, str(run), **{"train.duration": "4 iterations", "checkpoint.save": str(run / "ckpt"), "checkpoint.interval": 2})
    (r,) = run_distributed(_train, 1, ov, 3, timeout=600)
    assert r["raised"] == "a step failed on purpose (test)"
    assert r["heard"] == ["on_train_start", "on_error:RuntimeError:a step failed on purpose (test)", "on_close"]
    assert not (run / "ckpt" / "run.lock").exists(), "the run lock is released however the run ended"
    assert (run / "ckpt" / "iter_0000002").is_dir()


def test_states_from_an_old_checkpoint_and_through_a_new_one(corpus, tmp_path):
    from megactllm.checkpoint import read_metadata

    work, data = corpus
    old = json.loads((OLD / "iter_0000007" / "megactllm.json").read_text())["train_state"]
    assert "callbacks" not in json.loads((OLD / "iter_0000007" / "megactllm.json").read_text())
    fixture = tmp_path / "old"  # a copy: resuming must not touch the repository's files
    shutil.copytree(OLD, fixture)

    # The old checkpoint kept the spike window, the rollback count and the skipped window in its
    # train state: each callback takes its part from there.
    save = tmp_path / "ckpt"
    ov = _overrides(data, str(tmp_path), **{"train.duration": "8 iterations", "checkpoint.load": str(fixture), "checkpoint.save": str(save),
                                            "checkpoint.interval": 100})
    (r,) = run_distributed(_train, 1, ov, timeout=600)
    assert r["state"]["iteration"] == 8 and "raised" not in r
    assert r["states_at_start"]["spikes"] == {"window": old["spike_window"], "rollbacks": 1}
    assert r["states_at_start"]["skip_data"] == {"skipped_samples": [[10, 12]]} == {"skipped_samples": old["skipped_samples"]}
    assert r["heard"] == ["on_train_start", "on_train_end", "on_close"]

    # The new checkpoint keeps them under each callback's name, the train state only the loop's counters.
    meta = read_metadata(str(save))
    assert meta.iteration == 8
    assert not {"spike_window", "skipped_samples", "spike_rollbacks"} & set(meta.train_state)
    assert meta.callbacks == r["states_at_end"]
    window = meta.callbacks["spikes"]["window"]["values"]
    assert window[:3] == old["spike_window"]["values"][1:] and len(window) == 4  # one more applied step
    assert meta.callbacks["skip_data"] == {"skipped_samples": [[10, 12]]}

    # Round trip: a run resumed from it starts with exactly those states.
    ov = _overrides(data, str(tmp_path / "again"), **{"train.duration": "9 iterations", "checkpoint.load": str(save),
                                                        "checkpoint.save": str(tmp_path / "ckpt2")})
    (again,) = run_distributed(_train, 1, ov, timeout=600)
    assert again["states_at_start"] == meta.callbacks
