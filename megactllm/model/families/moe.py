"""What the mixture-of-experts families (qwen3_moe, qwen2_moe) add to a LLaMA-style decoder.

An MoE layer replaces the SwiGLU MLP with a router (a linear layer to one logit per expert), E
SwiGLU experts of width moe_ffn_hidden_size of which each token uses the top k, and optionally one
shared expert that every token uses, scaled by sigmoid(gate . x) (Qwen2-MoE). Layers listed in HF's
mlp_only_layers, or off HF's decoder_sparse_step, keep a dense MLP of intermediate_size
(megatron-core's moe_layer_freq as a per-layer list: ModelConfig.moe_layer_pattern).

Weight names (megatron-core's dist_checkpointing keys; with dense layers mixed in megatron keys
each layer on its own, `decoder.layers.{i}.…`, instead of stacking them):

    decoder.layers.pre_mlp_layernorm.weight                  post_attention_layernorm.weight
    decoder.layers.mlp.router.weight               [E, h]     mlp.gate.weight
    decoder.layers.mlp.experts.experts.linear_fc1.weight [E, 2f, h]  mlp.experts.{e}.gate_proj / up_proj
    decoder.layers.mlp.experts.experts.linear_fc2.weight [E, h, f]   mlp.experts.{e}.down_proj
    decoder.layers.mlp.shared_experts.linear_fc1.weight          mlp.shared_expert.gate_proj / up_proj
    decoder.layers.mlp.shared_experts.linear_fc2.weight          mlp.shared_expert.down_proj
    decoder.layers.mlp.shared_experts.gate_weight  [1, h]     mlp.shared_expert_gate.weight

Hugging Face checkpoints on the Hub (and what transformers 5 saves) name each expert's tensors;
transformers 5 computes with them fused per layer (mlp.experts.gate_up_proj [E, 2f, h],
mlp.experts.down_proj [E, h, f]), a layout the importer also reads.
"""
from __future__ import annotations

import re
from typing import Optional

from megactllm.config import ModelConfig
from megactllm.model.families.base import (
    FC1,
    FC2,
    PRE_MLP_NORM,
    ModelFamily,
    ModelFamilyError,
)

MOE_PRE_MLP_NORM = "decoder.layers.pre_mlp_layernorm.weight"
ROUTER = "decoder.layers.mlp.router.weight"
EXPERT_FC1 = "decoder.layers.mlp.experts.experts.linear_fc1.weight"
EXPERT_FC2 = "decoder.layers.mlp.experts.experts.linear_fc2.weight"
SHARED_FC1 = "decoder.layers.mlp.shared_experts.linear_fc1.weight"
SHARED_FC2 = "decoder.layers.mlp.shared_experts.linear_fc2.weight"
SHARED_GATE = "decoder.layers.mlp.shared_experts.gate_weight"
EXPERT_KEYS = (EXPERT_FC1, EXPERT_FC2)
GATE_UP_KEYS = (FC1, EXPERT_FC1, SHARED_FC1)  # [gate; up] on the first axis

# The fused per-layer expert tensors of transformers 5 (read on import, never written).
HF_FUSED_GATE_UP = "mlp.experts.gate_up_proj"
HF_FUSED_DOWN = "mlp.experts.down_proj"
_EXPERT_NAME = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")

# llama.cpp's MoE tensors (blk.{i}.<name>): experts stacked [E, ...] in one tensor each.
GGUF_MOE_NAMES = {
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}
GGUF_EXPERT_NAMES = {"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight", "down_proj": "ffn_down_exps.weight"}


def hf_expert(e: int, part: str) -> str:
    return f"mlp.experts.{e}.{part}.weight"


def expert_of(hf_name: str) -> Optional[tuple[int, str]]:
    """(expert index, gate_proj | up_proj | down_proj) of a per-expert HF tensor name, else None."""
    match = _EXPERT_NAME.match(hf_name)
    return (int(match.group(1)), match.group(2)) if match else None


def moe_pattern_from_hf(hf: dict, layers: int, where: str) -> Optional[list]:
    """ModelConfig.moe_layer_pattern from HF's mlp_only_layers and decoder_sparse_step (None: all MoE)."""
    dense = set(int(i) for i in hf.get("mlp_only_layers") or [])
    step = int(hf.get("decoder_sparse_step") or 1)
    if step < 1:
        raise ModelFamilyError(f"{where}: decoder_sparse_step={step}; it must be 1 or more")
    bad = sorted(i for i in dense if not 0 <= i < layers)
    if bad:
        raise ModelFamilyError(f"{where}: mlp_only_layers {bad} are not layers of a {layers}-layer model")
    pattern = [0 if i in dense or (i + 1) % step else 1 for i in range(layers)]
    if not any(pattern):
        raise ModelFamilyError(f"{where}: no layer is a mixture of experts (mlp_only_layers/decoder_sparse_step)")
    return None if all(pattern) else pattern


class MoEFamily(ModelFamily):
    """What a mixture-of-experts family adds to its dense family (experts, router, shared expert).

    Listed first among the bases (class Qwen3MoeFamily(MoEFamily, Qwen3Family)) so that its methods
    run before the dense family's and reach them through super(): the attention, RoPE and HF
    fields are the dense family's, written once there."""

    moe = True
    shared_expert: bool = False  # the family's HF class always has a (gated) shared expert

    # --- Hugging Face config.json <-> ModelConfig -------------------------------------------------
    # The dense family's config mapping calls these, so its fields and refusals come with the MoE ones.
    def _common_from_hf(self, hf: dict, where: str, refused: dict) -> dict:
        fields = super()._common_from_hf(hf, where, refused)
        return {**fields, **self._moe_from_hf(hf, where, fields["num_layers"])}

    def _common_to_hf(self, model: ModelConfig) -> dict:
        return {**super()._common_to_hf(model), **self._moe_to_hf(model)}

    def _moe_from_hf(self, hf: dict, where: str, layers: int) -> dict:
        experts = hf.get("num_experts", hf.get("num_local_experts"))
        if not experts:
            raise ModelFamilyError(f"{where}: {self.hf_architecture} without num_experts is not a mixture of experts")
        # Routers megatron-core would compute differently: refused by field, not converted approximately.
        for field, computed in (("scoring_func", "softmax"), ("topk_method", "greedy")):
            if hf.get(field) not in (None, computed):
                raise ModelFamilyError(
                    f"{where}: {field}={hf[field]!r} is not supported for {self.hf_architecture} (megactllm routes "
                    f"with {field}={computed!r}, as the family's HF class does)"
                )
        for field in ("n_group", "topk_group", "routed_scaling_factor"):
            if hf.get(field) not in (None, 1, 1.0):
                raise ModelFamilyError(f"{where}: {field}={hf[field]!r} (group-limited or scaled routing) is not "
                                       f"supported for {self.hf_architecture}")
        topk = int(hf.get("num_experts_per_tok") or 0)
        if not 1 <= topk <= int(experts):
            raise ModelFamilyError(f"{where}: num_experts_per_tok={topk} must be between 1 and num_experts={experts}")
        fields = dict(
            num_moe_experts=int(experts),
            moe_router_topk=topk,
            moe_ffn_hidden_size=int(hf["moe_intermediate_size"]),
            moe_norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            moe_layer_pattern=moe_pattern_from_hf(hf, layers, where),
            moe_aux_loss_coeff=float(hf.get("router_aux_loss_coef") or 0.0),
        )
        if self.shared_expert:
            fields.update(moe_shared_expert_intermediate_size=int(hf["shared_expert_intermediate_size"]),
                          moe_shared_expert_gate=True)
        return fields

    def _moe_to_hf(self, model: ModelConfig) -> dict:
        pattern = model.moe_layers()
        out = {
            "num_experts": model.num_moe_experts,
            "num_experts_per_tok": model.moe_router_topk,
            "moe_intermediate_size": model.moe_ffn_hidden_size,
            "norm_topk_prob": model.moe_norm_topk_prob,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [i for i, moe in enumerate(pattern) if not moe],
            "router_aux_loss_coef": model.moe_aux_loss_coeff,
            "output_router_logits": False,
        }
        if self.shared_expert:
            out["shared_expert_intermediate_size"] = model.moe_shared_expert_intermediate_size
        return out

    def check(self, model: ModelConfig, where: str) -> None:
        super().check(model, where)
        if not model.is_moe:
            raise ModelFamilyError(f"{where}: family {self.name} needs model.num_moe_experts")
        if model.moe_layer_pattern is not None and len(model.moe_layer_pattern) != model.num_layers:
            raise ModelFamilyError(
                f"{where}: model.moe_layer_pattern has {len(model.moe_layer_pattern)} entries for "
                f"{model.num_layers} layers (one 0/1 per layer)"
            )
        if not 1 <= model.moe_router_topk <= model.num_moe_experts:
            raise ModelFamilyError(
                f"{where}: model.moe_router_topk={model.moe_router_topk} must be between 1 and "
                f"model.num_moe_experts={model.num_moe_experts}"
            )
        if self.shared_expert and not (model.moe_shared_expert_intermediate_size and model.moe_shared_expert_gate):
            raise ModelFamilyError(f"{where}: family {self.name} has a gated shared expert: set "
                                   "model.moe_shared_expert_intermediate_size and model.moe_shared_expert_gate")

    # --- weight names ----------------------------------------------------------------------------
    def moe_mlp_tensors(self, model: ModelConfig) -> dict:
        """An MoE layer's MLP: (megatron key, expert or None) -> HF names (within the layer)."""
        tensors = {
            (MOE_PRE_MLP_NORM, None): ("post_attention_layernorm.weight",),
            (ROUTER, None): ("mlp.gate.weight",),
        }
        for e in range(model.num_moe_experts):
            tensors[(EXPERT_FC1, e)] = (hf_expert(e, "gate_proj"), hf_expert(e, "up_proj"))
            tensors[(EXPERT_FC2, e)] = (hf_expert(e, "down_proj"),)
        if model.moe_shared_expert_intermediate_size:
            tensors[(SHARED_FC1, None)] = ("mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight")
            tensors[(SHARED_FC2, None)] = ("mlp.shared_expert.down_proj.weight",)
            if model.moe_shared_expert_gate:
                tensors[(SHARED_GATE, None)] = ("mlp.shared_expert_gate.weight",)
        return tensors

    def layer_tensors_at(self, model: ModelConfig, i: int) -> dict:
        dense = {(k, None): v for k, v in super().layer_tensors(model).items()}
        if not model.moe_layers()[i]:
            return dense
        attention = {k: v for k, v in dense.items() if k[0] not in (FC1, FC2, PRE_MLP_NORM)}
        return {**attention, **self.moe_mlp_tensors(model)}

    def megatron_layer_shape(self, model: ModelConfig, key: str) -> tuple:
        h, f, s = model.hidden_size, model.moe_ffn_hidden_size, model.moe_shared_expert_intermediate_size
        moe = {
            MOE_PRE_MLP_NORM: (h,), ROUTER: (model.num_moe_experts, h),
            EXPERT_FC1: (2 * f, h), EXPERT_FC2: (h, f),  # one expert's (the expert axis is separate)
            SHARED_FC1: (2 * (s or 0), h), SHARED_FC2: (h, s or 0), SHARED_GATE: (1, h),
        }
        return moe[key] if key in moe else super().megatron_layer_shape(model, key)

    def hf_layer_shape(self, model: ModelConfig, name: str) -> tuple:
        h, f, s = model.hidden_size, model.moe_ffn_hidden_size, model.moe_shared_expert_intermediate_size
        expert = expert_of(name)
        if expert is not None:
            return (h, f) if expert[1] == "down_proj" else (f, h)
        moe = {
            "mlp.gate.weight": (model.num_moe_experts, h),
            "mlp.shared_expert.gate_proj.weight": (s, h), "mlp.shared_expert.up_proj.weight": (s, h),
            "mlp.shared_expert.down_proj.weight": (h, s), "mlp.shared_expert_gate.weight": (1, h),
            HF_FUSED_GATE_UP: (model.num_moe_experts, 2 * f, h), HF_FUSED_DOWN: (model.num_moe_experts, h, f),
        }
        return moe[name] if name in moe else super().hf_layer_shape(model, name)

    # --- llama.cpp -------------------------------------------------------------------------------
    def gguf_tensor_name(self, hf_name: str) -> Optional[str]:
        parts = hf_name.split(".", 3)  # model.layers.{i}.{rest}
        if len(parts) == 4 and parts[1] == "layers":
            if parts[3] in GGUF_MOE_NAMES:
                return f"blk.{int(parts[2])}.{GGUF_MOE_NAMES[parts[3]]}"
            stacked = parts[3].rsplit(".", 1)  # mlp.experts.{part}: the experts stacked (convert.gguf.experts)
            if stacked[0] == "mlp.experts" and stacked[-1] in GGUF_EXPERT_NAMES:
                return f"blk.{int(parts[2])}.{GGUF_EXPERT_NAMES[stacked[-1]]}"
        return super().gguf_tensor_name(hf_name)

    # llama.cpp's graph renormalises the top-k weights in qwen3moe and never in qwen2moe, and
    # builds every layer as MoE: other models are refused rather than run differently.
    gguf_norm_topk_prob: bool = True

    def gguf_problem(self, model: ModelConfig) -> Optional[str]:
        if model.moe_norm_topk_prob != self.gguf_norm_topk_prob:
            return (f"norm_topk_prob={model.moe_norm_topk_prob} (llama.cpp's {self.gguf_architecture} graph "
                    f"computes {self.gguf_norm_topk_prob})")
        if not all(model.moe_layers()):
            return f"dense layers mixed in (llama.cpp's {self.gguf_architecture} graph makes every layer MoE)"
        return super().gguf_problem(model)

    def gguf_metadata(self, model: ModelConfig, writer) -> None:
        writer.add_expert_count(model.num_moe_experts)
        writer.add_expert_used_count(model.moe_router_topk)
        writer.add_expert_feed_forward_length(model.moe_ffn_hidden_size)
        if model.moe_shared_expert_intermediate_size:
            writer.add_expert_shared_feed_forward_length(model.moe_shared_expert_intermediate_size)

    # --- counts ----------------------------------------------------------------------------------
    def _moe_mlp_parameters(self, model: ModelConfig, experts: int) -> int:
        """An MoE MLP's parameters counting `experts` routed experts (all of them, or the top k)."""
        h, f, s = model.hidden_size, model.moe_ffn_hidden_size, model.moe_shared_expert_intermediate_size or 0
        n = model.num_moe_experts * h + experts * 3 * h * f + 3 * h * s
        if model.moe_shared_expert_gate:
            n += h
        return n

    def _count(self, model: ModelConfig, experts_of: callable) -> int:
        h = model.hidden_size
        attention = sum(self._attention_parameters(model))
        total = 0
        for moe in model.moe_layers():
            mlp = self._moe_mlp_parameters(model, experts_of(model)) if moe else 3 * h * model.ffn_hidden_size
            total += attention + mlp
        embeddings = model.vocab_size * h * (1 if model.tie_word_embeddings else 2)
        return total + embeddings + h

    def num_parameters(self, model: ModelConfig) -> int:
        """Every parameter (all experts), the embedding counted once if tied."""
        return self._count(model, lambda m: m.num_moe_experts)

    def num_active_parameters(self, model: ModelConfig) -> int:
        """The parameters one token uses: top-k experts of each MoE layer (the router whole)."""
        return self._count(model, lambda m: m.moe_router_topk)

    def expert_parameters(self, model: ModelConfig) -> int:
        """Parameters in routed experts (split over EP ranks); the rest is split by TP/PP only."""
        return sum(model.moe_layers()) * model.num_moe_experts * 3 * model.hidden_size * model.moe_ffn_hidden_size

    def layer_parameters(self, model: ModelConfig) -> tuple[int, int]:
        """(tensor-parallel-split, replicated) parameters of an average layer, routed experts excluded
        (expert_parameters counts them: they split over EP x expert TP, not TP)."""
        h = model.hidden_size
        layers = model.num_layers
        moe_layers = sum(model.moe_layers())
        s = model.moe_shared_expert_intermediate_size or 0
        split, replicated = self._attention_parameters(model)
        split += ((layers - moe_layers) * 3 * h * model.ffn_hidden_size + moe_layers * 3 * h * s) // layers
        replicated += moe_layers * (model.num_moe_experts * h + (h if model.moe_shared_expert_gate else 0)) // layers
        return split, replicated

    def flops_per_token(self, model: ModelConfig, seq_length: Optional[int] = None) -> float:
        """Training FLOPs per token (3x forward), counting the experts a token is routed to (active)."""
        h = model.hidden_size
        mlps = 0
        for moe in model.moe_layers():
            if moe:
                mlps += model.num_moe_experts * h + model.moe_router_topk * 3 * h * model.moe_ffn_hidden_size
                mlps += 3 * h * (model.moe_shared_expert_intermediate_size or 0)
                mlps += h if model.moe_shared_expert_gate else 0
            else:
                mlps += 3 * h * model.ffn_hidden_size
        return self._training_flops(model, mlps, seq_length)
