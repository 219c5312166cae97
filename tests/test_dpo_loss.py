"""DPO loss, rewards and accuracy against an independent computation written here."""
import math

import numpy as np
import pytest
import torch
from chat_fixtures import SEQ

from megactllm.config import load_config
from megactllm.data.chat.dpo_dataset import build_dpo_datasets
from megactllm.testing import run_distributed
from megactllm.training.stages.dpo.loss import dpo_loss

# Fixtures shared across the SFT/DPO test modules (one instance per session, not per module).
pytest_plugins = ["chat_fixtures"]


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _expected(pc, pr, rc, rr, beta, smoothing, loss_type):
    """Per-pair (loss, chosen reward, rejected reward, accuracy) from the papers' formulas."""
    out = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        chosen, rejected = beta * (a - c), beta * (b - d)
        if loss_type == "sigmoid":
            h = chosen - rejected
            loss = -(1 - smoothing) * _log_sigmoid(h) - smoothing * _log_sigmoid(-h)
        else:
            loss = ((a - c) - (b - d) - 1 / (2 * beta)) ** 2
        out.append((loss, chosen, rejected, 1.0 if chosen > rejected else 0.0))
    return out


@pytest.mark.parametrize("loss_type,beta,smoothing", [("sigmoid", 0.5, 0.0), ("sigmoid", 0.1, 0.2), ("ipo", 0.5, 0.0)])
def test_dpo_loss_formulas(loss_type, beta, smoothing):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-50 * torch.rand(6, generator=g, dtype=torch.float64) for _ in range(4))
    out = dpo_loss(pc, pr, rc, rr, beta, smoothing, loss_type)
    expected = np.array(_expected(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta, smoothing, loss_type))
    assert out.losses.tolist() == pytest.approx(expected[:, 0].tolist(), rel=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx(expected[:, 1].tolist(), rel=1e-6)
    assert out.rejected_rewards.tolist() == pytest.approx(expected[:, 2].tolist(), rel=1e-6)
    assert out.accuracies.tolist() == expected[:, 3].tolist()
    assert out.margins.tolist() == pytest.approx((expected[:, 1] - expected[:, 2]).tolist(), rel=1e-6)


def test_dpo_loss_refuses_bad_settings():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="label smoothing"):
        dpo_loss(x, x, x, x, beta=0.5, label_smoothing=0.1, loss_type="ipo")


def _task_and_independent(policy_ckpt, reference_ckpt, items, settings):
    """Per setting: the DPO task's report and the same quantities computed here from two models."""
    from chat_parallel import tiny_config
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel
    from megactllm.training.batches import collate
    from megactllm.checkpoint import Checkpointer
    from megactllm.training.stages.dpo.task import DPOTask

    cfg = tiny_config(seq=SEQ)
    initialize_parallel(cfg.parallel, seed=1, num_layers=cfg.model.num_layers)
    models = {}
    for name, ckpt in (("policy", policy_ckpt), ("reference", reference_ckpt)):
        (models[name],) = build_model(cfg.model, cfg.parallel, cfg.optim)
        Checkpointer.load_weights(ckpt, [models[name]], cfg.model)
    batch = collate(items)
    rows = {k: v.reshape(-1, v.shape[-1]) for k, v in batch.items()}
    independent = {}
    with torch.no_grad():
        for name, model in models.items():
            logits = model(rows["tokens"], rows["position_ids"], None).float()  # [rows, s, vocab]
            token_logps = torch.log_softmax(logits, -1).gather(-1, rows["labels"].unsqueeze(-1)).squeeze(-1)
            seq_logps = (token_logps * rows["loss_mask"]).sum(-1).double()
            independent[name] = (seq_logps[0::2].tolist(), seq_logps[1::2].tolist())
    results = []
    for loss_type, beta, smoothing in settings:
        run_cfg = tiny_config(seq=SEQ, extra=(f"checkpoint.pretrained={reference_ckpt}", f"dpo.beta={beta}",
                                              f"dpo.label_smoothing={smoothing}", f"dpo.loss_type={loss_type}"))
        models["policy"].config.calculate_per_token_loss = True
        task = DPOTask(run_cfg)
        microbatches = task.prepare_global_batch([collate(items[:2]), collate(items[2:])], [models["policy"]])
        reports = get_forward_backward_func()(
            forward_step_func=task.forward_step, data_iterator=[iter(microbatches)], model=[models["policy"]],
            num_microbatches=2, seq_length=SEQ, micro_batch_size=4, forward_only=True)
        summed = {k: torch.stack([r[k] for r in reports]).sum(0).tolist() for k in reports[0]}
        results.append(summed)
    destroy_parallel()
    return independent, results


def test_dpo_task_matches_an_independent_computation(chat_tokenizer, dpo_prefix, policy_checkpoint, tiny_checkpoint):
    cfg = load_config(None, [f"model.seq_length={SEQ}", f"data.train_data_path=['{dpo_prefix}']"])
    train = build_dpo_datasets(cfg, chat_tokenizer)[0]
    items = [train[i] for i in range(4)]
    settings = [("sigmoid", 0.5, 0.0), ("sigmoid", 0.1, 0.2), ("ipo", 0.5, 0.0)]
    (result,) = run_distributed(_task_and_independent, 1, policy_checkpoint, tiny_checkpoint, items, settings, timeout=300)
    independent, reports = result
    (pc, pr), (rc, rr) = independent["policy"], independent["reference"]
    assert pc != pytest.approx(rc)  # two different models
    for (loss_type, beta, smoothing), report in zip(settings, reports):
        expected = np.array(_expected(pc, pr, rc, rr, beta, smoothing, loss_type))
        n = len(items)
        assert report["dpo loss"][1] == n
        assert report["dpo loss"][0] / n == pytest.approx(expected[:, 0].mean(), rel=1e-4)
        assert report["rewards/chosen"][0] / n == pytest.approx(expected[:, 1].mean(), rel=1e-4, abs=1e-4)
        assert report["rewards/rejected"][0] / n == pytest.approx(expected[:, 2].mean(), rel=1e-4, abs=1e-4)
        assert report["rewards/margin"][0] / n == pytest.approx((expected[:, 1] - expected[:, 2]).mean(), rel=1e-4, abs=1e-4)
        assert report["rewards/accuracy"][0] / n == expected[:, 3].mean()
        assert report["logps/chosen"][0] / n == pytest.approx(np.mean(pc), rel=1e-5)
