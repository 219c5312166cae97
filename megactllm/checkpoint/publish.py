"""Publishing: the step that makes a written checkpoint directory complete and the latest.

Whoever writes a checkpoint's tensors (Checkpointer.save, or a converter writing dist_checkpointing
shards itself) writes them under `iter_XXXXXXX.partial` and then calls `publish_checkpoint`, on
every rank at once (or in one process):

1. each dist_checkpointing part's storage index must cover every tensor it declares;
2. the tokenizer copy is added;
3. every file is recorded with its size and CRC-32 (the ranks hash a share each);
4. megactllm.json (metadata + manifest) is written last, atomically;
5. the directory is renamed to `iter_XXXXXXX` and the latest pointer replaced.

A crash before 4 leaves a `.partial` directory that is never loaded; before 5, the previous
checkpoint stays the latest.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from megactllm.checkpoint import collective, manifest
from megactllm.checkpoint.errors import CheckpointError
from megactllm.checkpoint.layout import LATEST_FILE, METADATA_FILE, PARTIAL_SUFFIX, TOKENIZER_DIR
from megactllm.checkpoint.tokenizer_copy import copy_tokenizer
from megactllm.common.atomic import write_text_atomic

# The dist_checkpointing directories a checkpoint may hold.
SHARDED_PARTS = ("model", "optimizer")


def publish_checkpoint(
    partial: str | os.PathLike,
    metadata: dict,
    tokenizer_path: Optional[str | os.PathLike] = None,
    tokenizer_adds_bos: Optional[bool] = None,
    known_checksums: Optional[dict] = None,
) -> Path:
    """Collective (or single-process): publish `partial` (…/iter_XXXXXXX.partial) with `metadata`
    (metadata.build_metadata's JSON); returns the published iteration directory.

    A writer whose whole output directory is staged elsewhere and renamed into place at the end (the
    HF importer) may pass the iter_XXXXXXX directory itself: it is published where it is.
    `known_checksums` ({relative path: [size, crc32]}) are a writer's own, taken as it wrote the
    files: a file of that size is not read again."""
    from megactllm.checkpoint.async_save import StorageIndexError, check_storage_index

    partial = Path(partial)
    in_place = not partial.name.endswith(PARTIAL_SUFFIX)
    final = partial if in_place else partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)])
    save_dir = final.parent
    rank, world = collective.rank(), collective.world_size()
    collective.barrier()
    # Checked on rank 0, refused on every rank (no rank left waiting at a barrier).
    problem = None
    if rank == 0:
        try:
            for part in SHARDED_PARTS:
                if (partial / part).is_dir():
                    check_storage_index(partial / part)
        except StorageIndexError as e:
            problem = str(e)
        if problem is None and tokenizer_path:
            copy_tokenizer(Path(tokenizer_path), partial / TOKENIZER_DIR, tokenizer_adds_bos)
    problem = collective.broadcast(problem)
    if problem:
        raise CheckpointError(f"iteration {metadata['iteration']} not published, {partial} stays unloadable: {problem}")

    # Every file is on disk now: rank 0 lists them, every rank hashes its share.
    listing = None
    if rank == 0:
        files = manifest.checkpoint_files(partial)
        listing = {rel: (partial / rel).stat().st_size for rel in files}
    listing = collective.broadcast(listing)
    mine = manifest.share(list(listing), listing, rank, world)
    entries = {}
    for part in collective.all_gather(manifest.manifest_entries(partial, mine, known_checksums)):
        entries.update(part)

    if rank == 0:
        payload = dict(metadata, manifest=manifest.manifest_of(entries))
        # durable (fsync) before the rename and the latest pointer that follow
        write_text_atomic(partial / METADATA_FILE, json.dumps(payload, indent=2, sort_keys=True))
        if not in_place:
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
        write_text_atomic(save_dir / LATEST_FILE, str(metadata["iteration"]))
    collective.barrier()
    return final
