"""The real entry point under torchrun (2 gloo processes): a user's mistake is one line, and output is readable.

For each class of mistake (config, layout, checkpoint, tokenizer, memory, data) the run prints
exactly one `error: ...` line (from rank 0, unprefixed), no worker traceback, and both ranks exit
with code 2, which torchrun reports (its own summary). A dry run prints the plan once; the known
third-party noise (megatron-core's "Apex is not installed" fallbacks) is gone by default and back
with --verbose.
"""
import re

import pytest
from entry_utils import launch, save_checkpoint_with_tokenizer

from megactllm.testing.distributed import run_distributed

SAVED = ["model.arch=tiny", "model.vocab_size=64000", "model.seq_length=32", "model.max_position_embeddings=32"]
NOISE = "Transformer Engine and Apex are not installed"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, sp_model_path):
    path = tmp_path_factory.mktemp("ckpt") / "run"
    run_distributed(save_checkpoint_with_tokenizer, 1, SAVED, str(path), str(sp_model_path), timeout=300)
    return path


def _cases(checkpoint, tmp_path, shared_data):
    small = ["model.arch=tiny", "model.vocab_size=512", "model.seq_length=32", "train.duration=2 iterations",
             "train.global_batch_size=4", "train.micro_batch_size=2", "validation.iters=0"]
    start = [f"checkpoint.pretrained={checkpoint}", "train.duration=2 iterations", "train.global_batch_size=4"]
    return {
        "config": (small + ["train.bogus=1"], "unknown key(s) ['bogus']"),
        "layout": (small + ["parallel.pipeline_model_parallel_size=4"], "world size 2 is not divisible by TP x PP x CP"),
        "checkpoint": (start + ["model.num_layers=2"], "model.num_layers=2 (set by an override) but the checkpoint"),
        "tokenizer": (start + [f"data.tokenizer_model={shared_data}/tokenizers/cluecorpussmall_sp.model"],
                      "cluecorpussmall_sp.model has"),
        "memory": (["model.arch=llama2-7b", "train.duration=1 iterations", "train.global_batch_size=2"],
                   "this run needs"),
        "data": (small + [f"data.data_path=[{tmp_path}/missing/corpus]", f"data.data_cache_path={tmp_path}/cache"],
                 f"{tmp_path}/missing/corpus"),
    }


@pytest.mark.parametrize("kind", ["config", "layout", "checkpoint", "tokenizer", "memory", "data"])
def test_user_error_is_one_line_and_one_exit_code(kind, checkpoint, tmp_path, shared_data):
    args, expected = _cases(checkpoint, tmp_path, shared_data)[kind]
    out = launch(args)
    log = out.stdout
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert out.returncode != 0, log[-3000:]
    assert len(errors) == 1 and expected in errors[0] and "(rank " not in errors[0], log[-3000:]
    # No worker traceback: the only traceback is torchrun's own summary of the failed ranks.
    assert not re.search(r'File ".*megactllm/', log), log[-3000:]
    assert len(re.findall(r"exitcode\s*: 2 ", log)) == 2, log[-3000:]


def test_dry_run_prints_the_plan_once_and_filters_known_noise(checkpoint):
    args = ["--dry-run", f"checkpoint.pretrained={checkpoint}", "train.duration=10 iterations",
            "train.global_batch_size=4"]
    quiet = launch(args)
    assert quiet.returncode == 0, quiet.stdout[-3000:]
    log = quiet.stdout
    assert log.count(f"model: tiny from {checkpoint}/iter_0000000: 4 layers") == 1, log
    assert log.count("layout: world 2 = TP 1 x PP 1 x CP 1 x DP 2") == 1, log
    assert log.count("schedule: stage pretrain, 10 iterations") == 1 and log.count("memory: ") == 1, log
    assert NOISE not in log and "Traceback" not in log, log
    loud = launch(["--verbose", *args])
    assert loud.returncode == 0 and loud.stdout.count(NOISE) >= 2, loud.stdout[-3000:]  # every rank's, unfiltered
