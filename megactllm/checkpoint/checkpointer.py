"""One Checkpointer: save, load, find the latest, list, verify.

    ckpt = Checkpointer(save_dir, async_save=False)
    ckpt.save(iteration, model_chunks, cfg, optimizer=..., scheduler=..., train_state=..., callbacks=...)
    meta = ckpt.latest(warn=log.warning)             # the newest checkpoint whose files check out
    loaded = Checkpointer.load(meta.path, model_chunks, optimizer, scheduler, cfg.model)
    report = Checkpointer.verify(path)               # sizes and checksums against the manifest

The model is saved as global (unsharded) tensors by megatron-core's dist_checkpointing, so a
checkpoint written at one TP/PP layout loads at any other. The files and their order are in
layout.py, the metadata and its versions in metadata.py and migrations.py, publishing in
publish.py, the optimizer's format and megatron-core's Adam gaps in optimizer_state.py.

A save that runs out of space is removed and named (DiskFullError, exit 2) with the previous
checkpoint left the latest; before writing, a save compares the free space with the previous
save's size: it warns below twice that size and stops, writing nothing, below it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from megactllm.checkpoint import collective, disk_space, manifest
from megactllm.checkpoint.errors import CheckpointError, DamagedCheckpointError, DiskFullError
from megactllm.checkpoint.layout import (
    RNG_DIR,
    is_checkpoint_dir,
    iteration_dir,
    partial_dir,
    published_iterations,
    read_latest_pointer,
    resolve_checkpoint_dir,
    rng_file,
)
from megactllm.checkpoint.metadata import (
    CheckpointMetadata,
    build_metadata,
    check_model_matches,
    read_metadata,
    read_raw_metadata,
)
from megactllm.checkpoint import optimizer_state
from megactllm.checkpoint.publish import publish_checkpoint
from megactllm.config import Config, ModelConfig


@dataclass
class Loaded:
    metadata: CheckpointMetadata
    train_state: dict  # the loop's counters (and the scheduler's state under "scheduler")
    callbacks: dict  # callback name -> its saved state


@dataclass
class Verification:
    path: Path
    problems: list = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    checksums: bool = False  # whether checksums were compared (sizes always are)
    manifest: bool = True  # False for a format-1 checkpoint (checked against its storage indexes)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        shown = "; ".join(self.problems[:3]) + (f"; and {len(self.problems) - 3} more" if len(self.problems) > 3 else "")
        return f"{self.path}: {shown}"


def model_sharded_state_dict(model_chunks: list) -> dict:
    """One key per virtual-pipeline chunk; the tensors inside carry global, layout-free names."""
    return {f"chunk{i}": _unwrap(chunk).sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _unwrap(module):
    """The GPTModel inside megatron's DDP and Float16Module wrappers (both keep it in `.module`)."""
    from megatron.core.models.gpt import GPTModel

    while not isinstance(module, GPTModel) and hasattr(module, "module"):
        module = module.module
    return module


def _checkpoint_bytes(path: Path) -> int:
    try:
        recorded = read_raw_metadata(path).get("manifest")
    except CheckpointError:
        recorded = None
    if recorded:
        return sum(size for size, _ in recorded["files"].values())
    return disk_space.directory_bytes(path)


class _Agreed(Exception):
    """A failure every rank knows of at the same point (raised on all of them together)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _agree(error: Optional[BaseException]) -> None:
    failed = collective.first_failure(error)
    if failed is not None:
        raise _Agreed(failed[1])


def _synchronised(error: BaseException) -> bool:
    """Raised on every rank at the same point: ours, or torch DCP's write failure (broadcast to all)."""
    from torch.distributed.checkpoint.api import CheckpointException

    return isinstance(error, (_Agreed, CheckpointException))


@dataclass
class _InFlight:
    final: Path
    previous: Optional[tuple]
    free: int


class Checkpointer:
    """The checkpoints of one run directory (`save_dir`); load and verify take any checkpoint path."""

    def __init__(self, save_dir: Optional[str | os.PathLike] = None, async_save: bool = False):
        self.save_dir = Path(save_dir) if save_dir else None
        self._queue = None
        if async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._queue = AsyncCallsQueue()
        self._in_flight: Optional[_InFlight] = None
        self.warn: Callable[[str], None] = lambda text: None

    # ----------------------------------------------------------------- finding
    def list(self) -> list[int]:
        """Published iterations of the run directory, oldest first."""
        return published_iterations(self.save_dir)

    def latest(self, checksums: bool = True, warn: Optional[Callable[[str], None]] = None) -> Optional[CheckpointMetadata]:
        """The newest checkpoint whose files check out (collective when distributed; every rank gets
        the same answer), None when the directory holds none. A damaged one is named through
        `warn` and the one before it tried; with none left, DamagedCheckpointError."""
        warn = warn or (lambda text: None)
        root = self.save_dir
        if is_checkpoint_dir(root):  # one iteration directory, named by the user
            report = self.verify(root, checksums=checksums)
            if not report.ok:
                raise DamagedCheckpointError(f"checkpoint {report.summary()}")
            return read_metadata(root)
        pointer = read_latest_pointer(root)
        candidates = [i for i in reversed(self.list()) if pointer is None or i <= pointer]
        damaged = []
        if pointer is not None and pointer not in candidates:
            damaged.append(f"{iteration_dir(root, pointer)}: named by the latest pointer but not published")
            warn(f"checkpoint {damaged[-1]}")
        for it in candidates:
            path = iteration_dir(root, it)
            report = self.verify(path, checksums=checksums)
            if report.ok:
                if damaged:
                    warn(f"using {path}, the newest checkpoint that checks out")
                return read_metadata(path)
            damaged.append(report.summary())
            warn(f"checkpoint {report.summary()}: damaged, trying the one before")
        if damaged:
            raise DamagedCheckpointError(
                f"no checkpoint in {root} checks out: " + " | ".join(damaged)
                + ". Restore the files from a copy, or start without train.load"
            )
        return None

    # ----------------------------------------------------------------- verifying
    @staticmethod
    def verify(path: str | os.PathLike, checksums: bool = True, parts: Optional[Iterable[str]] = None) -> Verification:
        """Check a checkpoint's files against its manifest (a format-1 one against its storage
        indexes); collective when distributed, each rank hashing a share. `parts` limits it to some
        top-level entries (model, tokenizer, ...), e.g. what an export reads."""
        try:
            ckpt = resolve_checkpoint_dir(path)
            meta = read_metadata(ckpt)
        except CheckpointError as e:
            return Verification(Path(path), [str(e)])
        parts = None if parts is None else list(parts)
        if meta.manifest is None:
            wanted = [p for p in ("model", "optimizer") if parts is None or p in parts]
            if "optimizer" in wanted and not meta.has_optimizer:
                wanted.remove("optimizer")
            problems = manifest.check_storage_indexes(ckpt, wanted) if collective.rank() == 0 else []
            problems = collective.broadcast(problems)
            return Verification(ckpt, problems, checksums=False, manifest=False)
        files = manifest.selected(meta.manifest, parts)
        sizes = {rel: meta.manifest["files"][rel][0] for rel in files}
        mine = manifest.share(files, sizes, collective.rank(), collective.world_size())
        problems = []
        for found in collective.all_gather(manifest.check_files(ckpt, meta.manifest, mine, checksums)):
            problems += found
        return Verification(ckpt, sorted(problems), files=len(files), bytes=sum(sizes.values()), checksums=checksums)

    # ----------------------------------------------------------------- saving
    def save(
        self,
        iteration: int,
        model_chunks: list,
        cfg: Config,
        *,
        optimizer=None,
        scheduler=None,
        train_state: Optional[dict] = None,
        callbacks: Optional[dict] = None,
        tokenizer_path: Optional[str] = None,
        tokenizer_adds_bos: Optional[bool] = None,
        rng_state: Optional[dict] = None,
    ) -> Path:
        """Collectively save model (and optimizer/scheduler when given); returns the iteration dir.

        `rng_state` (each rank's own) is written per rank under rng/; `callbacks` maps a callback's
        name to its JSON state. With async_save the tensors are written by a background process
        while training goes on, and the iteration is published when `poll` finds every rank's
        write done: until then the previous checkpoint stays the latest.
        """
        from megatron.core import dist_checkpointing

        from megactllm.checkpoint.async_save import combine_requests

        self.poll(blocking=True)  # one save in flight at a time
        final, partial = iteration_dir(self.save_dir, iteration), partial_dir(self.save_dir, iteration)
        previous, free = self._room_for(final)
        use_async = self._queue is not None
        try:
            error = None
            if collective.rank() == 0:
                try:
                    self.save_dir.mkdir(parents=True, exist_ok=True)
                    if partial.exists():  # left by a crash: never trusted, never loaded
                        shutil.rmtree(partial)
                    (partial / "model").mkdir(parents=True)
                    if optimizer is not None:
                        (partial / "optimizer").mkdir()
                    if rng_state is not None:
                        (partial / RNG_DIR).mkdir()
                except OSError as e:
                    error = e
            _agree(error)
            error = None
            if rng_state is not None:
                try:
                    torch.save(rng_state, rng_file(partial, collective.rank()))
                except (OSError, RuntimeError) as e:
                    error = e
            _agree(error)

            requests = [
                dist_checkpointing.save(model_sharded_state_dict(model_chunks), str(partial / "model"), async_sharded_save=use_async)
            ]
            optimizer_format = None
            if optimizer is not None:
                optimizer_format = optimizer_state.optimizer_checkpoint_format(cfg)
                optim_sd = optimizer.sharded_state_dict(
                    model_sharded_state_dict(model_chunks), metadata=optimizer_state.sharded_metadata(optimizer_format)
                )
                requests.append(
                    dist_checkpointing.save({"optimizer": optim_sd}, str(partial / "optimizer"), async_sharded_save=use_async)
                )
            # Everything the metadata records is captured now: an async save's training moves on.
            state = dict(train_state or {})
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            metadata = build_metadata(
                iteration, cfg, tokenizer_file=tokenizer_path, has_optimizer=optimizer is not None,
                optimizer_format=optimizer_format, world_size=collective.world_size(),
                train_state=state, callbacks=callbacks,
            )

            def publish() -> None:
                publish_checkpoint(partial, metadata, tokenizer_path, tokenizer_adds_bos)

            if use_async:
                self._queue.schedule_async_request(combine_requests(requests, publish, label=final.name))
                self._in_flight = _InFlight(final, previous, free)
                return final
            publish()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # torch's CheckpointException is a BaseException
            self._failed(e, final, previous, free)
        return final

    @property
    def in_flight(self) -> Optional[Path]:
        return self._in_flight.final if self._in_flight else None

    def poll(self, blocking: bool) -> Optional[Path]:
        """Publish a finished background save; returns its path once published, else None.

        Collective (megatron-core all-reduces whether every rank's writer is done): call it at the
        same point on every rank."""
        if self._in_flight is None:
            return None
        try:
            self._queue.maybe_finalize_async_calls(blocking=blocking)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # torch's CheckpointException is a BaseException
            flight, self._in_flight = self._in_flight, None
            self._failed(e, flight.final, flight.previous, flight.free)
        if self._queue.get_num_unfinalized_calls():
            return None
        published, self._in_flight = self._in_flight.final, None
        return published

    def _room_for(self, final: Path) -> tuple[Optional[tuple], int]:
        """(previous save's (iteration, bytes) or None, free bytes); warns or refuses (collective)."""
        verdict = None
        if collective.rank() == 0:
            pointer = read_latest_pointer(self.save_dir) if self.save_dir.is_dir() else None
            previous = None
            if pointer is not None and iteration_dir(self.save_dir, pointer).is_dir():
                previous = (pointer, _checkpoint_bytes(iteration_dir(self.save_dir, pointer)))
            free = disk_space.free_bytes(self.save_dir)
            # Re-saving the same iteration frees its old copy only after the new one is written.
            verdict = (previous, free)
        previous, free = collective.broadcast(verdict)
        if previous is not None:
            needed = previous[1]
            if free < needed:
                raise DiskFullError(disk_space.out_of_space_message(final, previous, free, before=True))
            if free < 2 * needed:
                self.warn(
                    f"{disk_space.gib(free)} free in {self.save_dir}, the last save took {disk_space.gib(needed)}: "
                    f"{final.name} fits, the save after it will not"
                )
        return previous, free

    def _failed(self, error: BaseException, final: Path, previous, free: int) -> None:
        """A save raised: a full disk is named (and its partial directory removed), else re-raised."""
        inner = error.error if isinstance(error, _Agreed) else error
        full = disk_space.is_out_of_space(inner, final.parent)
        if _synchronised(error):
            full = any(collective.all_gather(full))
        if not full:
            raise inner
        if collective.rank() == 0:
            shutil.rmtree(final.with_name(final.name + ".partial"), ignore_errors=True)
        raise DiskFullError(disk_space.out_of_space_message(final, previous, free, before=False)) from None

    # ----------------------------------------------------------------- loading
    @staticmethod
    def load_weights(path: str | os.PathLike, model_chunks: list, model_config: Optional[ModelConfig] = None) -> CheckpointMetadata:
        """Load only the model weights (any saved layout into the current one); returns the metadata."""
        from megactllm.checkpoint import extra_state

        meta = read_metadata(path)
        if model_config is not None:
            check_model_matches(meta.model_config, model_config, str(meta.path))
        model_dir = meta.path / "model"
        if not model_dir.is_dir():
            raise CheckpointError(f"{meta.path} has no model/ directory")
        # Either layer spec reads either spec's checkpoint: extra state the checkpoint lacks stays the module's.
        try:
            loaded, _ = extra_state.load_model_state(model_sharded_state_dict(model_chunks), model_dir)
        except extra_state.MissingWeightsError as e:
            raise CheckpointError(str(e)) from None
        for i, chunk in enumerate(model_chunks):
            module = _unwrap(chunk)
            module.load_state_dict(extra_state.keep_own_extra_state(module, loaded[f"chunk{i}"]), strict=True)
        return meta

    @staticmethod
    def load(path: str | os.PathLike, model_chunks: list, optimizer=None, scheduler=None, model_config=None) -> Loaded:
        """Model, and optimizer/scheduler state when given."""
        from megatron.core import dist_checkpointing

        meta = Checkpointer.load_weights(path, model_chunks, model_config)
        if optimizer is not None:
            if not meta.has_optimizer:
                raise CheckpointError(f"{meta.path} holds no optimizer state; start with checkpoint.pretrained instead")
            optimizer_state.materialize_adam_state(optimizer)
            optim_sd = optimizer.sharded_state_dict(
                model_sharded_state_dict(model_chunks), is_loading=True,
                metadata=optimizer_state.sharded_metadata(meta.optimizer_format),
            )
            loaded = dist_checkpointing.load({"optimizer": optim_sd}, str(meta.path / "optimizer"))
            optimizer_state.load_optimizer_state(optimizer, loaded["optimizer"])
        state = dict(meta.train_state)
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        return Loaded(meta, state, dict(meta.callbacks))

    @staticmethod
    def load_rng(meta: CheckpointMetadata) -> Optional[dict]:
        """This rank's saved RNG state, or None when the checkpoint holds none for it."""
        path = rng_file(meta.path, collective.rank())
        if not path.is_file():
            return None
        return torch.load(path, weights_only=False)
