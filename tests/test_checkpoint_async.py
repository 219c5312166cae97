"""Why the first async-save attempt (034edb2) loaded as KeyError, reproduced without timing luck.

Two dist_checkpointing saves scheduled as two async requests run in two concurrent writer
processes that hand results back through megatron-core's one process-wide queue. Holding the first
writer back (so the second finishes first, as happened in a clean clone) makes the first save's
finalize index the second save's files: its .metadata lacks its own tensors, loading it raises
KeyError, and check_storage_index names the key. The same two saves combined into one request
(what checkpoint.async_save does) are indexed correctly and load.
"""
import os
import time

import torch

from megactllm.testing import run_distributed


def _after_flag(fn, flag: str):
    """fn, run once the other writer has finished (it creates `flag`): an order, not a race."""
    def run(*args, **kwargs):
        deadline = time.monotonic() + 300
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the other writer's result reaches the queue right after its flag
        return fn(*args, **kwargs)

    return run


def _then_flag(fn, flag: str):
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        open(flag, "w").close()
        return out

    return run


def _save_pair(root: str, combined: bool) -> dict:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import ShardedTensor
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    from megactllm.checkpoint.async_save import StorageIndexError, check_storage_index, combine_requests

    first = {"embedding.word_embeddings.weight": torch.arange(12.0).reshape(3, 4)}
    second = {"optimizer.exp_avg": torch.full((5,), 7.0)}

    def sharded(tensors):
        return {k: ShardedTensor.from_rank_offsets(k, v, replica_id=0) for k, v in tensors.items()}

    requests = []
    for name, tensors in (("model", first), ("optimizer", second)):
        directory = os.path.join(root, name)
        os.makedirs(directory)
        requests.append(dist_checkpointing.save(sharded(tensors), directory, async_sharded_save=True))
    queue = AsyncCallsQueue()
    if combined:
        queue.schedule_async_request(combine_requests(requests, lambda: None))
    else:
        # The first writer waits for the second, so the second's results reach the shared queue first.
        flag = os.path.join(root, "second_written")
        requests[0] = requests[0]._replace(async_fn=_after_flag(requests[0].async_fn, flag))
        requests[1] = requests[1]._replace(async_fn=_then_flag(requests[1].async_fn, flag))
        for request in requests:
            queue.schedule_async_request(request)
    queue.maybe_finalize_async_calls(blocking=True)

    out = {}
    try:
        check_storage_index(f"{root}/model")
        out["index"] = "complete"
    except StorageIndexError as e:
        out["index"] = str(e)
    try:
        target = {k: torch.zeros_like(v) for k, v in first.items()}
        loaded = dist_checkpointing.load(sharded(target), f"{root}/model")
        out["loaded_equal"] = torch.equal(loaded["embedding.word_embeddings.weight"], first["embedding.word_embeddings.weight"])
    except BaseException as e:  # torch's CheckpointException derives from BaseException
        out["load_error"] = repr(e)
    return out


def _both(root: str) -> tuple:
    from megactllm.config import load_config
    from megactllm.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(load_config(None, []).parallel, seed=0)
    try:
        return _save_pair(f"{root}/two", False), _save_pair(f"{root}/one", True)
    finally:
        destroy_parallel()


def test_two_concurrent_requests_swap_their_storage_index_one_combined_request_does_not(tmp_path):
    ((racing, combined),) = run_distributed(_both, 1, str(tmp_path), timeout=300)
    assert "embedding.word_embeddings.weight" in racing["index"] and "no stored data" in racing["index"]
    assert "embedding.word_embeddings.weight" in racing.get("load_error", ""), racing

    assert combined == {"index": "complete", "loaded_equal": True}
