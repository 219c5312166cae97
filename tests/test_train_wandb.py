"""W&B logging (train.wandb_*): an offline run's history, read back from its .wandb file with wandb's
own record type, holds metrics.jsonl's losses per iteration; a run that dies of an exception still
finishes its W&B run (exit code 1, history complete), and its resume continues the same run id.
Without the package, asking for W&B is one named error."""
import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from train_utils import tiny_overrides, train_in_process, write_corpus

from megactllm.testing import run_distributed

CRASH_AT_FORWARD = 5  # one micro-batch per step: the 5th step dies before it is logged


def _crashing_task(cfg):
    """PretrainTask whose 5th forward raises: the run ends by an exception after iteration 4."""
    from megactllm.training.stages.pretrain import PretrainTask

    class Crashing(PretrainTask):
        calls = 0

        def forward_step(self, data_iterator, model):
            Crashing.calls += 1
            if Crashing.calls == CRASH_AT_FORWARD:
                raise RuntimeError("crash on purpose (test)")
            return super().forward_step(data_iterator, model)

    return Crashing(cfg)


def read_wandb_records(run_file: str) -> list:
    """The records of an offline run's .wandb file, each decoded with wandb's own protobuf Record.

    wandb 0.31 ships no Python reader of the file (its Go core writes and syncs it). The framing is
    LevelDB's log format: a 7-byte file header (":W&B", 0xBEE1, version 1), then 32 KiB blocks of
    chunks, each a 7-byte header (CRC32-C, uint16 length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:  # zero padding to the block's end
            pos += left - 7
            continue
        pending += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(records) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def exit_codes(records) -> list[int]:
    return [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("wandb")
    return work, write_corpus(str(work / "corpus"), seed=5)


def test_offline_history_equals_metrics_through_a_crash_and_a_resume(corpus):
    pytest.importorskip("wandb")
    work, data = corpus
    run = work / "run"
    ov = tiny_overrides(data, str(run), **{
        "train.duration": "6 iterations", "train.global_batch_size": 2, "train.micro_batch_size": 2,
        "checkpoint.save": str(run / "ckpt"), "checkpoint.load": str(run / "ckpt"), "checkpoint.interval": 3,
        "wandb.project": "megactllm-test", "wandb.dir": str(run / "wandb"), "wandb.name": "tiny"})
    env = {"WANDB_MODE": "offline"}
    with pytest.raises(RuntimeError, match="crash on purpose"):
        run_distributed(train_in_process, 1, ov, _crashing_task, timeout=600, env=env)
    run_distributed(train_in_process, 1, ov, timeout=600, env=env)  # resumes from iteration 3

    run_id = (run / "log" / "wandb_run_id.txt").read_text().strip()
    files = sorted(glob.glob(str(run / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2 and all(os.path.basename(f) == f"run-{run_id}.wandb" for f in files), files
    crashed, resumed = (read_wandb_records(f) for f in files)
    assert exit_codes(crashed) == [1] and exit_codes(resumed) == [0]

    metrics = [json.loads(line) for line in (run / "log" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in metrics if r.get("kind") == "train"]
    rows = [row for row in history_rows(crashed) + history_rows(resumed) if "train/loss" in row]
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4, 4, 5, 6]  # the crashed run's 4, then the resume's
    assert [row["iteration"] for row in rows] == [r["iteration"] for r in train]
    for row, record in zip(rows, train):
        assert row["train/loss"] == record["loss"] and row["train/lr"] == record["lr"]
        assert row["train/grad_norm"] == record["grad_norm"] and row["train/tokens_per_s"] == record["tokens_per_s"]
        assert row["train/peak_mem_gib"] == record["peak_mem_gib"]

    config = {item.key: json.loads(item.value_json)
              for r in resumed if r.WhichOneof("record_type") == "run" for item in r.run.config.update}
    assert config["train"]["duration"] == "6 iterations" and config["wandb"]["name"] == "tiny"


def test_two_ranks_make_one_wandb_run_that_rank_zero_writes(corpus):
    """At TP2 (the loss is known on every rank) and at DP2, only rank 0 starts W&B: one run, and
    its history is metrics.jsonl's, iteration by iteration."""
    pytest.importorskip("wandb")
    work, data = corpus
    for layout in ("tp2", "dp2"):
        run = work / f"two_ranks_{layout}"
        parallel = {"parallel.tensor_model_parallel_size": 2} if layout == "tp2" else {}
        ov = tiny_overrides(data, str(run), **{
            "train.duration": "3 iterations", "train.global_batch_size": 4, "train.micro_batch_size": 2, **parallel,
            "wandb.project": "megactllm-test", "wandb.dir": str(run / "wandb")})
        run_distributed(train_in_process, 2, ov, timeout=600, env={"WANDB_MODE": "offline"})
        files = glob.glob(str(run / "wandb" / "wandb" / "*-run-*" / "run-*.wandb"))  # not latest-run, a link
        assert len(files) == 1, files
        metrics = [json.loads(line) for line in (run / "log" / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in metrics if r.get("kind") == "train"]
        rows = [row for row in history_rows(read_wandb_records(files[0])) if "train/loss" in row]
        assert [(row["iteration"], row["train/loss"]) for row in rows] == [(r["iteration"], r["loss"]) for r in train]
        assert [r["iteration"] for r in train] == [1, 2, 3]


def test_wandb_settings_without_the_package_are_one_named_error(corpus):
    work, data = corpus
    args = ["--dry-run", *tiny_overrides(data, str(work / "missing"), **{"wandb.project": "p"})]
    code = ("import sys; sys.modules['wandb'] = None; from megactllm.training.main import main, exit_for; "
            f"exit_for(main({args!r}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error: ")]
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert len(errors) == 1 and "wandb.project" in errors[0] and 'megactllm[wandb]' in errors[0], errors
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_wandb_details_without_a_project_are_refused():
    from megactllm.config import ConfigError, load_config
    from megactllm.training.run.wandb_sink import wandb_wanted

    assert not wandb_wanted(load_config(None, []).wandb)
    with pytest.raises(ConfigError, match=r"wandb.entity='me': needs wandb.project"):
        load_config(None, ["wandb.entity=me"])
