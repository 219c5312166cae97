"""SFT losses: packing changes nothing per sequence; TP=2, PP=2, DP=2 equal one process."""
import numpy as np
import pytest
import torch
from chat_fixtures import SEQ
from chat_parallel import tiny_config

from megactllm.config import load_config
from megactllm.data.chat.sft_dataset import SFTDataset, build_sft_datasets
from megactllm.testing import run_distributed

# Fixtures shared across the SFT/DPO test modules (one instance per session, not per module).
pytest_plugins = ["chat_fixtures"]


@pytest.fixture(scope="module")
def sft_train(chat_tokenizer, sft_prefixes):
    cfg = load_config(None, [f"model.seq_length={SEQ}",
                             f"data.train_data_path=['4', '{sft_prefixes['zh']}', '1', '{sft_prefixes['en']}']"])
    return build_sft_datasets(cfg, chat_tokenizer)[0]


def _per_sample_losses(checkpoint, rows_packed, rows_single):
    """Summed loss of each sample, from packed rows (split by segment) and from one-sample rows."""
    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.batches import collate
    from megactllm.checkpoint import Checkpointer
    from megactllm.training.stages.sft import model_forward

    cfg = tiny_config(seq=rows_packed[0]["tokens"].shape[-1])
    initialize_parallel(cfg.parallel, seed=1, num_layers=cfg.model.num_layers)
    (model,) = build_model(cfg.model, cfg.parallel, cfg.optim)
    Checkpointer.load_weights(checkpoint, [model], cfg.model)
    with torch.no_grad():
        packed = collate(rows_packed)
        losses = model_forward(model, packed) * packed["loss_mask"]
        from_packed = []
        for r in range(losses.shape[0]):
            seg = packed["segment_ids"][r]
            from_packed += [float(losses[r][seg == s].sum()) for s in range(1, int(seg.max()) + 1)]
        single = collate(rows_single)
        from_single = (model_forward(model, single) * single["loss_mask"]).sum(-1).tolist()
    destroy_parallel()
    return from_packed, from_single


def test_packing_gives_the_same_per_sequence_losses(tiny_checkpoint, sft_train):
    seq = 2 * SEQ  # room for several samples per row
    packed = SFTDataset(sft_train.sources, sft_train.samples[:10], seq, True, 0)
    single = SFTDataset(sft_train.sources, sft_train.samples[:10], seq, False, 0)
    assert len(packed) < len(single) == 10
    rows_packed = [packed[i] for i in range(len(packed))]
    order = [k for row in packed.rows for k in row]  # sample of each packed segment, in order
    (result,) = run_distributed(_per_sample_losses, 1, tiny_checkpoint, rows_packed, [single[k] for k in order], timeout=300)
    from_packed, from_single = result
    assert len(from_packed) == 10
    assert from_packed == pytest.approx(from_single, rel=1e-5, abs=1e-4)
    assert min(from_single) > 0


def _global_mean(results):
    """Loss sum / token count over the ranks that report (last stage, TP rank 0) and their DP peers."""
    total = np.sum([r[0][0]["lm loss"] for r in results if r[0][0] is not None], axis=0)
    return total[0] / total[1], total[1]


@pytest.mark.parametrize("tp,pp,world", [(2, 1, 2), (1, 2, 2), (1, 1, 2)], ids=["tp2", "pp2", "dp2"])
def test_sft_loss_at_tp_pp_dp_equals_one_process(layout_reports, tp, pp, world):
    single, parallel = layout_reports(1, 1, 1), layout_reports(tp, pp, world)
    assert all(r[0][1] for r in parallel), "gradients must be finite on every rank"
    (mean_1, tokens_1), (mean_n, tokens_n) = _global_mean(single), _global_mean(parallel)
    assert tokens_n == tokens_1 > 0
    assert mean_n == pytest.approx(mean_1, rel=1e-5)
    # Only answer tokens count: a loss that ignored the mask would average over every position.
    assert tokens_1 < 8 * SEQ * 0.9
