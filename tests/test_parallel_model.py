"""The CPU compatibility layer and the model builder: megatron-core GPTModel on gloo processes."""
import pytest
import torch

from megactllm.config import ConfigError, load_config
from megactllm.testing import run_distributed

VOCAB, SEQ, MBS = 1000, 32, 2


def _forward_backward_losses(tp: int, pp: int, vpp=None, sequence_parallel=False):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megactllm.model import build_model
    from megactllm.parallel import destroy_parallel, initialize_parallel

    overrides = [
        "model.arch=tiny",
        f"model.vocab_size={VOCAB}",
        f"model.seq_length={SEQ}",
        f"parallel.tensor_model_parallel_size={tp}",
        f"parallel.pipeline_model_parallel_size={pp}",
        f"parallel.sequence_parallel={sequence_parallel}",
    ]
    if vpp:
        overrides.append(f"parallel.virtual_pipeline_model_parallel_size={vpp}")
    cfg = load_config(None, overrides)
    initialize_parallel(cfg.parallel, seed=1234, num_layers=cfg.model.num_layers)
    chunks = build_model(cfg.model, cfg.parallel, cfg.optim)
    # Same full weights on every layout: each TP rank takes its shard of rank-0's global tensors.
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=g)
    position_ids = torch.arange(SEQ).expand(MBS, SEQ)

    def forward_step(data_iterator, model):
        output = model(tokens[:, :-1], position_ids, None, labels=tokens[:, 1:])

        def loss_func(output_tensor):
            loss = output_tensor.float().mean()
            return loss, {"loss": loss.detach()}

        return output, loss_func

    for chunk in chunks:
        chunk.config.finalize_model_grads_func = None
    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=[iter(range(4)) for _ in chunks],
        model=chunks,
        num_microbatches=2,
        seq_length=SEQ,
        micro_batch_size=MBS,
        forward_only=False,
    )
    last = parallel_state.is_pipeline_last_stage()
    grads_finite = all(torch.isfinite(p.main_grad if hasattr(p, "main_grad") else p.grad).all()
                       for c in chunks for p in c.parameters() if p.grad is not None)
    destroy_parallel()
    return [float(x["loss"]) for x in losses] if last else None, grads_finite


def test_cpu_compat_maps_cuda_to_cpu():
    from megactllm.parallel import enable_cpu_compat

    if torch.cuda.is_available():
        pytest.skip("compatibility layer is only active without CUDA")
    assert enable_cpu_compat()
    t = torch.zeros(3, device="cuda")
    assert t.device.type == "cpu"
    assert t.cuda() is t
    assert t.type() == "torch.cuda.FloatTensor"
    assert torch.ones(2).to("cuda").device.type == "cpu"
    assert torch.empty(1, device=torch.cuda.current_device()).device.type == "cpu"
    state = torch.cuda.get_rng_state()
    a = torch.rand(4)
    torch.cuda.set_rng_state(state)
    assert torch.equal(a, torch.rand(4))


@pytest.mark.parametrize(
    "tp,pp,vpp,sp",
    [(2, 1, None, False), (2, 1, None, True), (1, 2, None, False), (2, 2, None, False), (1, 2, 2, False)],
    ids=["tp2", "tp2-sp", "pp2", "tp2pp2", "pp2-vpp2"],
)
def test_forward_backward_runs_on_gloo(tp, pp, vpp, sp):
    results = run_distributed(_forward_backward_losses, tp * pp, tp, pp, vpp, sp, timeout=300)
    losses = [r[0] for r in results if r[0] is not None]
    assert losses, "the last pipeline stage reports the losses"
    assert all(len(l) == 2 and all(torch.isfinite(torch.tensor(l))) for l in losses)
    assert all(r[1] for r in results)
    if tp == 2 and pp == 1:
        # CPU initialisation builds full weights then splits them, so TP ranks agree with TP=1.
        (single,) = run_distributed(_forward_backward_losses, 1, 1, 1, None, False, timeout=300)
        assert losses[0] == pytest.approx(single[0], abs=1e-5)


def test_layout_errors_name_the_fix():
    from megactllm.parallel import ParallelLayoutError, check_layout

    cfg = load_config(None, ["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"])
    assert check_layout(cfg.parallel, 8, num_layers=4) == 2
    with pytest.raises(ParallelLayoutError, match="launch a multiple of 4"):
        check_layout(cfg.parallel, 6)
    with pytest.raises(ConfigError, match="parallel.pipeline_model_parallel_size=2: .* must divide the model's 3 layers"):
        check_layout(cfg.parallel, 4, num_layers=3)
    with pytest.raises(ConfigError, match="parallel.sequence_parallel=true: needs parallel.tensor_model_parallel_size > 1"):
        load_config(None, ["parallel.sequence_parallel=true"])
    cfg = load_config(None, ["parallel.context_parallel_size=2"])
    check_layout(cfg.parallel, 2)  # context parallelism is supported (tests/test_context_parallel.py)
    with pytest.raises(ConfigError, match="model.seq_length=126: is not divisible by 2 x parallel.context_parallel_size = 4"):
        load_config(None, ["parallel.context_parallel_size=2", "model.seq_length=126"])
