"""Per-rank memory of a training run, estimated before anything is built.

    est = estimate_memory(cfg, world_size)      # MemoryEstimate, bytes per rank
    check_fits(cfg, world_size)                  # MemoryFitError naming the knobs that would fit

Static state, per pipeline stage (the heaviest stage counts):
- weights in the parameter dtype (bf16/fp16: 2 bytes, fp32: 4);
- gradients: megatron-core's DDP keeps an fp32 main-grad buffer (grad_reduce_in_fp32): 4 bytes;
- optimizer: Adam's two fp32 moments (8 bytes), plus fp32 master weights (4) for half-precision
  params; the distributed optimizer divides this by the data x context parallel size. The step itself
  needs one fp32 temporary per (sharded) parameter (torch's foreach Adam: sqrt of the 2nd moment).

Activations follow the per-tensor accounting of Korthikanti et al. ("Reducing Activation
Recomputation in Large Transformer Models", 2022; Megatron's 34sbh + 5as^2b per layer), redone
for our layers and dtypes: RMSNorm in fp32 statistics, SwiGLU (2f + f + f saved), grouped-query
keys/values expanded to all heads by the local attention, softmax in fp32, dropout masks only
when dropout > 0. TP divides the tensor-parallel parts, sequence parallelism the rest;
selective recompute drops the s^2 terms, full recompute keeps one input per recompute group.
Pipeline schedules hold min(PP, micro-batches) micro-batches on the first stage (x(1 + (PP-1)/
(PP*VPP)) interleaved). The last stage adds the logits (the cross entropy's softmax, computed in
place and kept for backward; a second copy when padded vocabulary rows are masked) and the output
layer's weight-gradient temporary. Context parallelism (CP) gives each rank s/CP tokens: every
per-token activation is divided by CP, the scores cover s/CP queries against all s keys, and each
layer keeps the keys and values gathered from the other CP ranks.

Not counted: the Python/torch/megatron baseline of the process (already resident when the check
runs, so not in the available figure either), communication buffers, allocator fragmentation.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megactllm.config import Config, ConfigError
from megactllm.errors import MemoryFitError
from megactllm.model.families import family_of

GIB = 2**30


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int  # the peak of forward/backward working memory, or of the optimizer step if larger
    params_per_rank: int
    stage: str  # which pipeline stage is the heaviest

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.2f} GiB per rank (weights {self.weights / GIB:.2f}, gradients "
            f"{self.gradients / GIB:.2f}, optimizer {self.optimizer / GIB:.2f}, activations "
            f"{self.activations / GIB:.2f}; {self.params_per_rank:,} parameters on the {self.stage} stage)"
        )


def _layer_params(cfg: Config) -> tuple[int, int]:
    """(tensor-parallel-split, replicated) parameters of one transformer layer, from the model's family."""
    return family_of(cfg.model).layer_parameters(cfg.model)


def _stage_params(cfg: Config, first: bool, last: bool) -> int:
    m, p = cfg.model, cfg.parallel
    t = p.tensor_model_parallel_size
    split, replicated = _layer_params(cfg)
    layers = m.num_layers // p.pipeline_model_parallel_size
    n = layers * (split // t + replicated)
    vocab_rows = m.padded_vocab_size(t) // t
    if first:
        n += vocab_rows * m.hidden_size
    if last:
        n += m.hidden_size  # final norm
        if not (first and m.tie_word_embeddings):
            n += vocab_rows * m.hidden_size
    return n


def _stage_expert_params(cfg: Config) -> int:
    """Routed-expert parameters on one rank of a stage: the stage's share of the layers' experts,
    split over expert parallelism (EP) and expert tensor parallelism (ETP, default TP)."""
    m, p = cfg.model, cfg.parallel
    experts = family_of(m).expert_parameters(m)
    if not experts:
        return 0
    etp = p.expert_tensor_parallel_size or p.tensor_model_parallel_size
    return experts // p.pipeline_model_parallel_size // (p.expert_model_parallel_size * etp)


def _act_bytes_per_layer(cfg: Config, micro_batch: int, recompute: str | None) -> int:
    """Saved activations of one layer for one micro-batch, in bytes."""
    m, p = cfg.model, cfg.parallel
    t = p.tensor_model_parallel_size
    sp = t if p.sequence_parallel else 1
    e = _elem_bytes(cfg)
    cp = p.context_parallel_size
    s_full = m.seq_length
    s, b, h, f, a = s_full // cp, micro_batch, m.hidden_size, m.ffn_hidden_size, m.num_attention_heads
    if m.is_moe:  # a token's SwiGLU activations are its k experts' (and the shared expert's)
        f = m.moe_router_topk * (m.moe_ffn_hidden_size or f) + (m.moe_shared_expert_intermediate_size or 0)
    q, kv = a * m.head_dim, m.num_kv_heads * m.head_dim
    norms = 2 * (4 + 2 * e) * s * b * h // sp  # fp32 statistics input, normalised, output (x2 norms)
    # The fused QKV output, contiguous copies of q and k (and of v when grouped-query heads are
    # expanded), and the attention context that the output projection keeps.
    qkv_context = e * s * b * (q + 2 * kv + 3 * q + (q if kv < q else 0)) // t
    # Keys and values gathered from the other CP ranks, kept for the attention's backward.
    qkv_context += e * (s_full - s) * b * 2 * kv // t
    scores = (4 + (e if e < 4 else 0)) * a * s * s_full * b // t  # fp32 softmax (+ its half-precision copy)
    swiglu = 5 * e * s * b * f // t  # fc1 output (2f), silu input and output, product
    dropout = 0
    if m.attention_dropout > 0:
        dropout += (1 + e) * a * s * s_full * b // t
    if m.hidden_dropout > 0:
        dropout += 2 * s * b * h // sp
    if recompute == "selective":  # core attention recomputed: its s^2 tensors are not kept
        scores = 0
        dropout -= (1 + e) * a * s * s_full * b // t if m.attention_dropout > 0 else 0
    return norms + qkv_context + scores + swiglu + dropout


def _elem_bytes(cfg: Config) -> int:
    return 2 if (cfg.optim.bf16 or cfg.optim.fp16) else 4


def _num_microbatches(cfg: Config, dp: int) -> int:
    t = cfg.train
    return max(1, t.global_batch_size // (t.micro_batch_size * dp))


def _activations(cfg: Config, dp: int, first: bool, last: bool) -> int:
    m, p = cfg.model, cfg.parallel
    pp, vpp = p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size or 1
    t = p.tensor_model_parallel_size
    sp = t if p.sequence_parallel else 1
    e = _elem_bytes(cfg)
    b, s, h = cfg.train.micro_batch_size, m.seq_length // p.context_parallel_size, m.hidden_size
    layers = m.num_layers // pp
    per_layer = _act_bytes_per_layer(cfg, b, p.recompute_granularity)
    full_layer = _act_bytes_per_layer(cfg, b, None)
    if p.recompute_granularity == "full":
        group = p.recompute_num_layers or 1
        if (p.recompute_method or "uniform") == "block":
            kept = group * e * s * b * h // sp + (layers - group) * per_layer
        else:
            kept = -(-layers // group) * e * s * b * h // sp
        # Backward recomputes one group at a time and holds its activations besides the gradients.
        working = (1 + min(group, layers)) * full_layer
    else:
        kept = layers * per_layer
        # Backward of a layer needs about its own activations again for gradients; selective
        # recompute also rebuilds the layer's attention scores first.
        working = full_layer + (full_layer - per_layer)
    # Micro-batches in flight on this stage (1F1B warm-up; 1 without pipelining or on the last stage).
    m_count = _num_microbatches(cfg, dp)
    if pp == 1 or last:
        in_flight = 1.0
    elif vpp > 1:
        in_flight = min(pp * (1 + (pp - 1) / (pp * vpp)), m_count)
    else:
        in_flight = min(pp, m_count)
    total = int(kept * in_flight) + working
    if last:
        # Logits and megatron-core's vocabulary-parallel cross entropy, which works in place (logits
        # -> minus max -> exp -> softmax kept for backward -> gradient). Masking the padded vocabulary
        # rows (model.builder.mask_padded_vocab_logits) makes one out-of-place copy each way. In
        # backward the output layer's weight gradient is one more vocabulary-sized temporary.
        v = m.padded_vocab_size(t) // t
        copies = 2 if m.padded_vocab_size(t) != m.vocab_size else 1
        logits = e * s * b * v
        forward_peak = copies * logits
        backward_peak = copies * logits + e * v * h
        total += max(forward_peak, backward_peak)
    return total


def estimate_memory(cfg: Config, world_size: int) -> MemoryEstimate:
    """Bytes one rank needs, for the heaviest pipeline stage."""
    p, o = cfg.parallel, cfg.optim
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    dp = max(1, world_size // model_parallel)
    pp = p.pipeline_model_parallel_size
    stages = [("only", True, True)] if pp == 1 else [("first", True, False), ("last", False, True)]
    best = None
    for name, first, last in stages:
        dense = _stage_params(cfg, first, last)
        experts = _stage_expert_params(cfg)
        params = dense + experts
        weights = params * _elem_bytes(cfg)
        grads = params * 4
        state_bytes = 8 if o.optimizer == "adam" else 4  # Adam moments; SGD momentum
        master = 4 if _elem_bytes(cfg) < 4 else 0
        # megatron shards the distributed optimizer over data x context parallel ranks; routed experts
        # over their own data-parallel ranks (world / (EP x ETP x PP)).
        shard = dp * p.context_parallel_size if p.use_distributed_optimizer else 1
        etp = p.expert_tensor_parallel_size or p.tensor_model_parallel_size
        expert_dp = max(1, world_size // (p.expert_model_parallel_size * etp * pp))
        expert_shard = expert_dp if p.use_distributed_optimizer else 1
        optimizer = dense * (state_bytes + master) // shard + experts * (state_bytes + master) // expert_shard
        step_temp = dense * 4 // shard + experts * 4 // expert_shard
        acts = max(_activations(cfg, dp, first, last), step_temp)
        est = MemoryEstimate(weights, grads, optimizer, acts, params, name)
        if best is None or est.total > best.total:
            best = est
    return best


@dataclass
class Available:
    bytes: int
    where: str  # "GPU 0 (NVIDIA H100, 79.1 GiB free)" or "CPU RAM (20.3 GiB available)"
    ranks_sharing: int  # ranks whose memory comes out of this figure


def available_memory() -> Available:
    """Free memory of this rank's GPU, or the machine's available RAM shared by the local ranks."""
    import os

    import torch

    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return Available(free, f"GPU {torch.cuda.current_device()} ({free / GIB:.1f} GiB free)", 1)
    import psutil

    avail = psutil.virtual_memory().available
    return Available(avail, f"CPU RAM ({avail / GIB:.1f} GiB available to {local_ranks} local rank(s))", local_ranks)


# Single-knob changes tried when a run does not fit, in the order a user would reach for them.
def _alternatives(cfg: Config) -> list[tuple[str, Config]]:
    p, t = cfg.parallel, cfg.train
    out = []

    def variant(text, section, **changes):
        try:
            c = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
        except ConfigError:  # a layout this model cannot take (TP not dividing its heads): no alternative
            return
        out.append((text, c))

    if not p.use_distributed_optimizer:
        variant("parallel.use_distributed_optimizer=true", "parallel", use_distributed_optimizer=True)
    if p.recompute_granularity is None:
        variant("parallel.recompute_granularity=selective", "parallel", recompute_granularity="selective")
    if p.recompute_granularity != "full":
        variant("parallel.recompute_granularity=full", "parallel", recompute_granularity="full")
    if t.micro_batch_size > 1:
        variant(f"train.micro_batch_size={t.micro_batch_size // 2}", "train", micro_batch_size=t.micro_batch_size // 2)
    tp2 = p.tensor_model_parallel_size * 2
    variant(f"parallel.tensor_model_parallel_size={tp2} (more devices or less data parallelism)", "parallel",
            tensor_model_parallel_size=tp2)
    pp2 = p.pipeline_model_parallel_size * 2
    if cfg.model.num_layers % pp2 == 0:
        variant(f"parallel.pipeline_model_parallel_size={pp2} (more devices or less data parallelism)", "parallel",
                pipeline_model_parallel_size=pp2)
    cp2 = p.context_parallel_size * 2
    if cfg.model.seq_length % (2 * cp2) == 0:
        variant(f"parallel.context_parallel_size={cp2} (more devices or less data parallelism)", "parallel",
                context_parallel_size=cp2)
    return out


def check_fits(cfg: Config, world_size: int, available: Available | None = None) -> MemoryEstimate:
    """The estimate, or MemoryFitError: needed, available, and which single knob would fit."""
    est = estimate_memory(cfg, world_size)
    available = available or available_memory()
    needed = est.total * available.ranks_sharing
    if needed <= available.bytes:
        return est
    budget = available.bytes / available.ranks_sharing
    # Keep the world size: a larger TP/PP shrinks DP (the distributed optimizer's shards grow),
    # which estimate_memory accounts for.
    fixes = []
    for text, alt in _alternatives(cfg):
        alt_est = estimate_memory(alt, world_size)
        if alt_est.total <= budget:
            fixes.append(f"{text} ({alt_est.total / GIB:.1f} GiB)")
    hint = ("would fit with " + "; or ".join(fixes)) if fixes else (
        "no single change of TP/PP/CP, micro batch, recompute or distributed optimizer fits: combine them or use more devices")
    raise MemoryFitError(
        f"this run needs {est.describe()}"
        + (f" x {available.ranks_sharing} ranks" if available.ranks_sharing > 1 else "")
        + f" but {available.where}; {hint}"
    )
