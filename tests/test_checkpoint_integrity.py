"""A checkpoint's files are checked against the manifest written when it was published; a damaged
latest checkpoint is named and the newest intact one used; a full disk is named, its partial save
removed and the previous checkpoint left loadable; checkpoints of format 1 (commit 2c88b3a, the
committed fixture under tests/data/checkpoints/) are read through their migration and resume.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megactllm.testing import run_distributed

FIXTURES = Path(__file__).parent / "data" / "checkpoints"
FORMAT1 = FIXTURES / "format1_2c88b3a"
TINY = ["model.arch=tiny", "model.vocab_size=512", "model.seq_length=32"]


def _save_two(root: str, rng_bytes: int = 0) -> list:
    """Rank body: iterations 1 and 2 of a tiny model with its optimizer (stepped once) and RNG."""
    import torch

    from megactllm.checkpoint import Checkpointer
    from megactllm.config import load_config
    from megactllm.model import build_model
    from megactllm.parallel import initialize_parallel
    from megactllm.training.model_setup import wrap_model_chunks
    from megactllm.training.optimizer import build_optimizer

    cfg = load_config(None, TINY)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    chunks = wrap_model_chunks(cfg, build_model(cfg.model, cfg.parallel, cfg.optim))
    optimizer = build_optimizer(cfg, chunks)
    ckpt = Checkpointer(root)
    return [str(ckpt.save(it, chunks, cfg, optimizer=optimizer, rng_state={"seed": torch.arange(4)})) for it in (1, 2)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved") / "run"
    run_distributed(_save_two, 1, str(root))
    return root


@pytest.fixture
def run(saved, tmp_path):
    """A fresh copy of the two saved checkpoints, to damage."""
    shutil.copytree(saved, tmp_path / "run")
    return tmp_path / "run"


def _largest_shard(path: Path) -> Path:
    return max((path / "model").glob("*.distcp"), key=lambda p: p.stat().st_size)


def test_manifest_records_every_file_with_size_and_crc32(run):
    from megactllm.checkpoint import FORMAT_VERSION, Checkpointer, read_metadata
    from megactllm.checkpoint.manifest import crc32_file

    meta = read_metadata(run)
    assert meta.format_version == meta.written_version == FORMAT_VERSION == 2
    on_disk = sorted(p.relative_to(meta.path).as_posix() for p in meta.path.rglob("*") if p.is_file())
    assert sorted([*meta.manifest["files"], "megactllm.json"]) == on_disk
    assert {"model/.metadata", "optimizer/.metadata", "rng/rank_00000.pt"} <= set(meta.manifest["files"])
    for rel, (size, crc) in meta.manifest["files"].items():
        assert (size, crc) == ((meta.path / rel).stat().st_size, crc32_file(meta.path / rel))
    report = Checkpointer.verify(run)
    assert report.ok and report.checksums and report.files == len(on_disk) - 1


def test_truncated_shard_is_named_and_the_one_before_is_used(run):
    from megactllm.checkpoint import Checkpointer

    shard = _largest_shard(run / "iter_0000002")
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    report = Checkpointer.verify(run / "iter_0000002", checksums=False)  # sizes alone find it
    assert report.problems == [f"model/{shard.name} is {size // 2} bytes, cut short (saved as {size})"]
    said = []
    meta = Checkpointer(run).latest(checksums=False, warn=said.append)
    assert meta.iteration == 1
    assert said == [
        f"checkpoint {run}/iter_0000002: model/{shard.name} is {size // 2} bytes, cut short (saved as {size}): "
        "damaged, trying the one before",
        f"using {run}/iter_0000001, the newest checkpoint that checks out",
    ]


def test_missing_file_and_changed_byte(run):
    from megactllm.checkpoint import Checkpointer, DamagedCheckpointError

    (run / "iter_0000002" / "optimizer" / ".metadata").unlink()
    assert Checkpointer.verify(run / "iter_0000002", checksums=False).problems == ["optimizer/.metadata is missing"]

    shard = _largest_shard(run / "iter_0000001")
    with open(shard, "r+b") as f:  # one bit of one weight: same size, other bytes
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    assert Checkpointer.verify(run / "iter_0000001", checksums=False).ok  # sizes cannot see it
    (problem,) = Checkpointer.verify(run / "iter_0000001").problems
    assert problem.startswith(f"model/{shard.name} has changed bytes (crc32 ")
    with pytest.raises(DamagedCheckpointError) as e:  # none left: one error naming both
        Checkpointer(run).latest(checksums=True)
    assert "iter_0000002: optimizer/.metadata is missing" in str(e.value)
    assert f"iter_0000001: model/{shard.name} has changed bytes" in str(e.value)


def test_verify_command_and_export_check_what_they_read(run, capsys):
    from megactllm.checkpoint.cli import main
    from megactllm.convert.errors import ConversionError
    from megactllm.convert.megatron_reader import MegatronCheckpointReader
    from megactllm.convert.process_group import single_process_group

    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {run}/iter_0000002 (9 files, ")
    shard = _largest_shard(run / "iter_0000002")
    os.truncate(shard, 100)
    assert main(["verify", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {run}/iter_0000002: model/{shard.name} is 100 bytes")
    assert main(["list", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("iter_0000002") and "DAMAGED" in lines[0] and "(latest)" in lines[0]
    assert lines[1].startswith("iter_0000001") and lines[1].endswith("ok")
    with single_process_group(), pytest.raises(ConversionError, match=f"model/{shard.name} is 100 bytes, cut short"):
        MegatronCheckpointReader(run)


# ---------------------------------------------------------------- a full disk, for real (tmpfs)
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: room for one weights-only save of the tiny model and a little more."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _fill_the_disk(root: str) -> dict:
    """Rank body: save 1 fits; save 2 (a 2 MB RNG file first, then the weights) runs out of space
    while dist_checkpointing writes the weights, synchronously and then in the background; save 3
    is refused before writing anything. Save 1 stays the latest and loads."""
    import torch

    from megactllm.checkpoint import Checkpointer, DiskFullError, read_metadata
    from megactllm.config import load_config
    from megactllm.errors import UserError
    from megactllm.model import build_model
    from megactllm.parallel import initialize_parallel

    cfg = load_config(None, TINY)
    initialize_parallel(cfg.parallel, cfg.train.seed, cfg.model.num_layers)
    chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    out = {}
    Checkpointer(root).save(1, chunks, cfg)
    big_rng = {"state": torch.zeros(2_000_000 // 4)}
    for mode in ("sync", "async"):
        ckpt = Checkpointer(root, async_save=mode == "async")
        try:
            ckpt.save(2, chunks, cfg, rng_state=big_rng)
            ckpt.poll(blocking=True)
            out[mode] = None
        except DiskFullError as e:
            out[mode] = (str(e), isinstance(e, UserError), sorted(os.listdir(root)))
    filler = os.path.join(root, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * (os.statvfs(root).f_bavail * os.statvfs(root).f_frsize - 200_000))
    try:
        Checkpointer(root).save(3, chunks, cfg)
        out["before"] = None
    except DiskFullError as e:
        out["before"] = (str(e), sorted(os.listdir(root)))
    os.remove(filler)
    fresh = build_model(cfg.model, cfg.parallel, cfg.optim)
    meta = Checkpointer(root).latest(checksums=True)
    Checkpointer.load_weights(meta.path, fresh, cfg.model)
    same = all(torch.equal(a, b) for a, b in zip(chunks[0].state_dict().values(), fresh[0].state_dict().values())
               if isinstance(a, torch.Tensor))
    out["latest"] = (read_metadata(root).iteration, meta.iteration, same)
    return out


def test_full_disk_is_named_the_partial_removed_and_the_last_checkpoint_kept(small_disk):
    root = small_disk / "ckpt"
    (out,) = run_distributed(_fill_the_disk, 1, str(root))
    for mode in ("sync", "async"):
        assert out[mode] is not None, f"the {mode} save did not run out of space"
        message, user_error, left = out[mode]
        assert message.startswith(f"no space left on device while saving iter_0000002 to {root} (the last save took 0.00"), message
        assert message.endswith("GiB free); the last complete checkpoint is iter_0000001"), message
        assert user_error
        assert left == ["iter_0000001", "latest_checkpointed_iteration.txt"], f"{mode}: {left}"
    message, left = out["before"]
    assert message.startswith(f"not enough space on device to save iter_0000003 to {root} (the last save took "), message
    assert "filler" in left and not any(name.startswith("iter_0000003") for name in left)
    assert out["latest"] == (1, 1, True)


# ---------------------------------------------------------------- format 1 (commit 2c88b3a)
def test_format1_is_read_through_its_migration(tmp_path):
    from megactllm.checkpoint import Checkpointer, read_metadata
    from megactllm.checkpoint.migrations import MIGRATIONS, v1_to_v2

    assert MIGRATIONS[1] is v1_to_v2
    meta = read_metadata(FORMAT1 / "ckpt")
    assert (meta.written_version, meta.format_version, meta.iteration) == (1, 2, 2)
    assert meta.optimizer_format == "model_space" and meta.manifest is None and meta.callbacks == {}
    assert Checkpointer.verify(FORMAT1 / "ckpt").ok
    copy = tmp_path / "ckpt"
    shutil.copytree(FORMAT1 / "ckpt", copy)
    shard = copy / "iter_0000002" / "optimizer" / "__0_1.distcp"
    os.truncate(shard, 1000)
    (problem,) = Checkpointer.verify(copy).problems  # no manifest: the storage index still finds it
    assert problem.startswith("optimizer/__0_1.distcp is 1000 bytes, cut short (its index needs ")


def _train(run_dir: Path, iters: int, log: str) -> subprocess.CompletedProcess:
    sys.path.insert(0, str(FIXTURES))
    from make_format1 import overrides

    args = overrides(corpus=FORMAT1 / "corpus", save=run_dir, load=run_dir, log=run_dir.parent / log)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "megactllm.train", *args, f"train.duration={iters} iterations"],
                          capture_output=True, text=True, env=env, timeout=300)


def _loss(log_dir: Path, iteration: int) -> float:
    records = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r.get("kind") == "train" and r["iteration"] == iteration][-1]


def test_format1_resumes_and_a_damaged_latest_falls_back(tmp_path):
    """The old code's checkpoint resumes with the old code's own next loss; then the new format-2
    latest is cut short, and the relaunch says so and resumes from the one before; with every
    checkpoint damaged the run stops with one error line and exit 2."""
    from megactllm.checkpoint import read_metadata

    expected = json.loads((FORMAT1 / "expected.json").read_text())["continued_loss"]["3"]
    run_dir = tmp_path / "ckpt"
    shutil.copytree(FORMAT1 / "ckpt", run_dir)

    first = _train(run_dir, 3, "log1")
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    assert f"resumed from {run_dir}/iter_0000002: iteration 2" in first.stdout
    assert _loss(tmp_path / "log1", 3) == pytest.approx(expected, abs=1e-6)
    assert read_metadata(run_dir).written_version == 2  # iteration 3, published by this code

    shard = _largest_shard(run_dir / "iter_0000003")
    os.truncate(shard, 10)
    second = _train(run_dir, 4, "log2")
    assert second.returncode == 0, second.stderr[-3000:] + second.stdout[-3000:]
    out = second.stdout + second.stderr
    assert f"checkpoint {run_dir}/iter_0000003: model/{shard.name} is 10 bytes, cut short" in out
    assert f"using {run_dir}/iter_0000002, the newest checkpoint that checks out" in out
    assert f"resumed from {run_dir}/iter_0000002: iteration 2" in out
    assert _loss(tmp_path / "log2", 3) == pytest.approx(expected, abs=1e-6)  # the same step again

    for it in (2, 4):
        os.truncate(_largest_shard(run_dir / f"iter_{it:07d}"), 10)
    third = _train(run_dir, 5, "log3")
    assert third.returncode == 2, third.stderr[-3000:]
    errors = [line for line in third.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: no checkpoint in {run_dir} checks out: "), third.stderr[-2000:]
