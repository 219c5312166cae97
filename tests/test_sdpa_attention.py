"""SDPAttention (torch's fused attention on the local spec) against megatron's DotProductAttention.

One module on one process: causal, GQA and the document-reset mask give megatron's outputs and
gradients; dropout is reproducible under megatron's RNG tracker, unbiased, and off in eval mode.
Whole models at TP=2 x PP=2 (4 gloo ranks, GQA): the same weights under either attention give the
same losses and gradients, with a document-reset mask (built by megatron's own GPTDataset helper)
on one micro-batch and the plain causal path on the other.
"""
import pytest
import torch

from megactllm.config import load_config
from megactllm.testing import run_distributed

SEQ, MBS, VOCAB, EOD = 32, 2, 256, 2


def _document_mask(tokens):
    """megatron-core's own [b, 1, s, s] document-reset mask (True blocks), as GPTDataset builds it."""
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    masks = [
        _get_ltor_masks_and_position_ids(row, EOD, False, True, False, True)[0] for row in tokens
    ]
    return torch.stack(masks)


def _tokens(seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (MBS, SEQ + 1), generator=g)
    tokens[0, [5, 17]] = EOD  # three documents in row 0, two in row 1
    tokens[1, 11] = EOD
    return tokens


def _modules(dropout=0.0):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megactllm.model import build_transformer_config
    from megactllm.model.sdpa_attention import SDPAttention

    cfg = load_config(None, ["model.arch=tiny", "model.num_query_groups=2", f"model.attention_dropout={dropout}"])
    config = build_transformer_config(cfg.model, cfg.parallel, cfg.optim)
    args = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    return DotProductAttention(**args), SDPAttention(**args), config


def _qkv(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = config.kv_channels
    q = torch.randn(SEQ, MBS, config.num_attention_heads, d, generator=g, requires_grad=True)
    k = torch.randn(SEQ, MBS, config.num_query_groups, d, generator=g, requires_grad=True)
    v = torch.randn(SEQ, MBS, config.num_query_groups, d, generator=g, requires_grad=True)
    return q, k, v


def _module_parity():
    reference, sdpa, config = _modules()
    mask = _document_mask(_tokens(0)[:, :-1])
    assert mask.any() and not mask[:, :, torch.arange(SEQ), torch.arange(SEQ)].any()
    report = {}
    blocked = mask.clone()
    blocked[0, :, 3, :] = True  # a query that may see nothing: megatron spreads it evenly
    for name, m in (("causal", None), ("documents", mask), ("fully-blocked row", blocked)):
        outs, grads = [], []
        for module in (reference, sdpa):
            q, k, v = _qkv(config)
            out = module(q, k, v, m)
            out.pow(2).sum().backward()
            outs.append(out.detach())
            grads.append([t.grad for t in (q, k, v)])
        report[name] = (
            (outs[0] - outs[1]).abs().max().item(),
            max((a - b).abs().max().item() for a, b in zip(*grads)),
            tuple(outs[1].shape),
        )
    return report


def _dropout_behaviour():
    from megatron.core import tensor_parallel

    _, sdpa, config = _modules(dropout=0.5)
    q, k, v = (t.detach() for t in _qkv(config))
    sdpa.eval()
    clean = sdpa(q, k, v, None)
    sdpa.train()
    tensor_parallel.model_parallel_cuda_manual_seed(11)
    first = sdpa(q, k, v, None)
    tensor_parallel.model_parallel_cuda_manual_seed(11)
    again = sdpa(q, k, v, None)
    mean = torch.stack([sdpa(q, k, v, None) for _ in range(400)]).mean(0)
    return {
        "reproducible": torch.equal(first, again),
        "changed": (first - clean).abs().max().item(),
        # relative error of the dropout average against the clean output (unbiased: 1/(1-p) scaling)
        "mean_error": ((mean - clean).norm() / clean.norm()).item(),
    }


def _one_process_checks():
    from megactllm.parallel import destroy_parallel, initialize_parallel

    initialize_parallel(load_config(None, []).parallel, seed=7)
    try:
        return _module_parity(), _dropout_behaviour()
    finally:
        destroy_parallel()


@pytest.fixture(scope="module")
def one_process():
    (result,) = run_distributed(_one_process_checks, 1, timeout=300)
    return result


def test_sdpa_matches_dot_product_attention_causal_gqa_and_document_resets(one_process):
    report, _ = one_process
    for name, (out_diff, grad_diff, shape) in report.items():
        assert shape == (SEQ, MBS, 4 * 16), name
        assert out_diff < 1e-5, f"{name}: outputs differ by {out_diff}"
        assert grad_diff < 1e-4, f"{name}: gradients differ by {grad_diff}"


def test_sdpa_dropout_is_seeded_unbiased_and_off_in_eval(one_process):
    _, r = one_process
    assert r["reproducible"], "the same RNG-tracker seed must drop the same entries"
    assert r["changed"] > 0.1, "dropout 0.5 in training mode changed nothing"
    assert r["mean_error"] < 0.1, f"dropout is biased: the average is {r['mean_error']:.3f} away from eval"


def _model_parity(tp, pp):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel

    cfg = load_config(None, [
        "model.arch=tiny", f"model.vocab_size={VOCAB}", f"model.seq_length={SEQ}", "model.num_query_groups=2",
        f"parallel.tensor_model_parallel_size={tp}", f"parallel.pipeline_model_parallel_size={pp}",
    ])
    initialize_parallel(cfg.parallel, seed=1234, num_layers=cfg.model.num_layers)
    batches = [_tokens(1), _tokens(2)]
    masks = [_document_mask(batches[0][:, :-1]), None]
    position_ids = torch.arange(SEQ).expand(MBS, SEQ)
    results = {}
    state = None
    for attention in ("megatron", "sdpa"):
        (chunk,) = build_model(cfg.model, cfg.parallel, cfg.optim, local_attention=attention)
        if state is None:
            state = {k: v.clone() for k, v in chunk.state_dict().items() if isinstance(v, torch.Tensor)}
        else:
            chunk.load_state_dict(state, strict=False)
        chunk.config.finalize_model_grads_func = None
        step = iter(range(2))

        def forward_step(data_iterator, model):
            i = next(step)
            tokens = batches[i]
            output = model(tokens[:, :-1], position_ids, masks[i], labels=tokens[:, 1:])
            return output, lambda out: (out.float().mean(), {"loss": out.float().mean().detach()})

        losses = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(range(2)), model=chunk, num_microbatches=2,
            seq_length=SEQ, micro_batch_size=MBS, forward_only=False,
        )
        grads = {n: p.grad.clone() for n, p in chunk.named_parameters() if p.grad is not None}
        results[attention] = ([float(x["loss"]) for x in losses], grads)
    last_stage = parallel_state.is_pipeline_last_stage()
    destroy_parallel()
    (ref_losses, ref_grads), (losses, grads) = results["megatron"], results["sdpa"]
    assert ref_grads.keys() == grads.keys() and grads
    grad_diff = max((ref_grads[n] - grads[n]).abs().max().item() for n in grads)
    return (ref_losses, losses) if last_stage else None, grad_diff


def test_sdpa_model_matches_megatron_attention_at_tp2_pp2_with_document_resets():
    results = run_distributed(_model_parity, 4, 2, 2, timeout=300)
    last = [r[0] for r in results if r[0] is not None]
    assert len(last) == 2  # the two TP ranks of the last stage
    for ref_losses, losses in last:
        assert len(losses) == 2
        assert losses == pytest.approx(ref_losses, abs=1e-5)
    for rank, (_, grad_diff) in enumerate(results):
        assert grad_diff < 1e-5, f"rank {rank}: gradients differ by {grad_diff}"
