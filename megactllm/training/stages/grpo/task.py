"""Stage `grpo`: group relative policy optimisation with verifiable rewards, on the same TP/PP/DP model.

One `train.duration` step reads `grpo.prompts_per_step` prompts (the loop's global batch; each
data-parallel rank its share) and, in `prepare_global_batch`:

1. hands the policy's current weights to the rollout engine in memory: TP shards all-gathered,
   pipeline stages gathered on the first rank of each model-parallel group (megactllm.convert.live);
2. that rank samples `group_size` completions per prompt (megactllm.rl.engine; the sampler's
   seed is a function of the run seed and the prompt's position in the training order, so a
   resumed run, or one at another layout, samples the same) and scores them (megactllm.rl.rewards);
   completions, engine log-probs, rewards and advantages are broadcast to the group;
3. every rank builds the rows (prompt + completion, loss on completion tokens) and recomputes the
   completions' log-probs with the policy through megatron-core's schedule, forward only (the
   "old" log-probs of the ratio, and the number compared with the engine's), and with the
   frozen reference when grpo.kl_coeff > 0.

The loop then runs `updates_per_batch` forward/backward passes and optimizer steps on those rows
(StageCapabilities.updates_per_batch). Log-probs are taken at the sampling temperature (TRL's
definition); the loss is megactllm.training.stages.grpo.loss, equal to TRL's GRPOTrainer.
"""
from __future__ import annotations

import logging
import math
import time
from functools import partial

import torch
import torch.distributed as dist

from megactllm.config import ConfigError
from megactllm.rl.advantages import group_advantages
from megactllm.rl.answers import answers_match
from megactllm.rl.engine import SamplingParams, TransformersEngine
from megactllm.rl.prompts import PromptOrder, load_prompts
from megactllm.rl.rewards import RewardError, RewardSet
from megactllm.training.stages.grpo.loss import grpo_loss_sums, grpo_token_losses
from megactllm.training.stages.task import StageCapabilities

log = logging.getLogger(__name__)

ROLLOUT_STATS = [
    "reward_mean", "reward_std", "accuracy", "rollout_logprob_diff_max", "rollout_logprob_diff_mean",
    "equal_reward_groups", "completion_length", "completion_clipped", "rollout_time", "logprob_time",
]
METRICS = ["grpo loss", "kl", "clip_fraction", *ROLLOUT_STATS]


def token_logps(model, rows: dict, temperature: float) -> torch.Tensor:
    """Per-token log-probs [b, s] of the labels at `temperature` on the last stage; hidden states elsewhere."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    output = model(rows["tokens"], rows["position_ids"], None)
    if not ps.is_pipeline_last_stage(ignore_virtual=False):
        return output
    logits = output.float() / temperature  # [b, s, vocab / TP]
    return -vocab_parallel_cross_entropy(logits, rows["labels"])


def _forward_only_logps(chunks, microbatches, seq_length, rows, temperature) -> list | None:
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output = token_logps(model, batch, temperature)
        return output, lambda out: (out.new_zeros(()), {"logps": out.detach()})

    with torch.no_grad():
        results = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=[iter(microbatches) for _ in chunks], model=chunks,
            num_microbatches=len(microbatches), seq_length=seq_length, micro_batch_size=rows, forward_only=True,
        )
    return [r["logps"] for r in results] if ps.is_pipeline_last_stage() else None


class GRPOTask:
    name = "grpo"

    def __init__(self, cfg):
        self.cfg = cfg
        g = cfg.grpo  # the recipe checked CP, MoE, the batch (= prompts_per_step) and the completion length
        self.provides = StageCapabilities(sequences_per_sample=g.group_size, updates_per_batch=g.updates_per_batch)
        self.rewards = RewardSet.from_specs(g.rewards, g.reward_weights)  # an unimportable one fails here
        self.prompts = None
        self.tokenizer = None
        self.engine = None
        self.reference_chunks = None

    # ---------------------------------------------------------------- data
    def build_datasets(self, cfg, tokenizer):
        if tokenizer is None:  # neither data.tokenizer_model nor the checkpoint's copy
            raise ConfigError("train.stage=grpo needs data.tokenizer_model (prompts are rendered with its chat template)")
        from megactllm.tokenizer.chat_template import stop_token_id

        self.tokenizer = tokenizer
        self.stop_id = stop_token_id(tokenizer)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eod_id
        g = cfg.grpo
        self.prompts = load_prompts(cfg.data.prompts_path, tokenizer, "math" in g.rewards,
                                    cfg.model.seq_length - g.max_completion_tokens)
        steps = cfg.known_train_iters()  # train.duration in iterations (the recipe refuses epochs and tokens)
        if steps is None:
            raise ConfigError("train.duration=null: train.stage=grpo counts steps: set it to 'N iterations'")
        return PromptOrder(len(self.prompts), steps * g.prompts_per_step, cfg.train.seed), None, None

    # ---------------------------------------------------------------- rollouts
    def _rollouts(self, model_chunks, positions: list[int], prompt_ids: list[int]):
        """On every rank of the model-parallel group: (completions, engine logps, rewards, per-function values)."""
        from megatron.core import parallel_state as ps

        from megactllm.convert.hf_config import hf_config_from_model
        from megactllm.convert.live import hf_state_dict_from_chunks

        g = self.cfg.grpo
        state = hf_state_dict_from_chunks(model_chunks, self.cfg.model)
        group = ps.get_model_parallel_group()
        leader = dist.get_process_group_ranks(group)[0]
        payload = [None]
        if dist.get_rank() == leader:
            try:
                if self.engine is None:
                    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
                    self.engine = TransformersEngine(hf_config_from_model(self.cfg.model, torch.float32), device=device)
                self.engine.load_weights(state)
                params = SamplingParams(g.group_size, g.max_completion_tokens, g.temperature, g.top_p,
                                        (self.stop_id,), self.pad_id)
                seeds = [self.cfg.train.seed * 1_000_003 + p for p in positions]
                rollouts = self.engine.generate([self.prompts.token_ids[i] for i in prompt_ids], params, seeds)
                payload = [("ok", self._score(rollouts, prompt_ids))]
            except RewardError as e:
                payload = [("error", str(e))]
        del state
        if dist.get_world_size(group) > 1:
            dist.broadcast_object_list(payload, src=leader, group=group)
        # A failing reward on one replica stops every rank with its message (no rank left waiting).
        message = payload[0][1] if payload[0][0] == "error" else None
        messages = [None] * dist.get_world_size()
        dist.all_gather_object(messages, message)
        failed = next((m for m in messages if m), None)
        if failed:
            raise RewardError(failed)
        return payload[0][1]

    def _score(self, rollouts, prompt_ids: list[int]) -> dict:
        g = self.cfg.grpo
        rows = [prompt_ids[r.prompt] for r in rollouts]
        completions = [self.tokenizer.decode([t for t in r.completion_ids if t != self.stop_id]) for r in rollouts]
        columns = self.prompts.columns_of(rows)
        columns["completion_ids"] = [list(r.completion_ids) for r in rollouts]
        totals, per_function = self.rewards.score([self.prompts.questions[i] for i in rows], completions, columns,
                                                  [self.prompts.where(i) for i in rows])
        rewards = torch.tensor([0.0 if math.isnan(v) else v for v in totals])
        if "math" in self.rewards.names:
            correct = per_function[self.rewards.names.index("math")]
        elif "answer" in columns:
            correct = [float(answers_match(c, a)) for c, a in zip(completions, columns["answer"])]
        else:
            correct = [math.nan] * len(rollouts)
        return {
            "completion_ids": [r.completion_ids for r in rollouts],
            "engine_logps": [r.logprobs for r in rollouts],
            "finished": [r.finished for r in rollouts],
            "rewards": rewards,
            "advantages": group_advantages(rewards, g.group_size, g.scale_rewards),
            "correct": correct,
        }

    def _rows(self, prompt_ids: list[int], out: dict, start: int, count: int, device) -> dict:
        s = self.cfg.model.seq_length
        tokens = torch.full((count, s), self.pad_id, dtype=torch.long)
        labels = torch.full((count, s), self.pad_id, dtype=torch.long)
        mask = torch.zeros(count, s)
        engine = torch.zeros(count, s)
        for k in range(count):
            row = start + k
            prompt = self.prompts.token_ids[prompt_ids[row // self.cfg.grpo.group_size]]
            completion = out["completion_ids"][row]
            ids = torch.tensor(list(prompt) + list(completion), dtype=torch.long)
            n, p = len(ids), len(prompt)
            tokens[k, :n] = ids
            labels[k, : n - 1] = ids[1:]
            # Label position t predicts token t + 1: the completion's tokens sit at p - 1 .. n - 2.
            mask[k, p - 1 : n - 1] = 1.0
            engine[k, p - 1 : n - 1] = torch.tensor(out["engine_logps"][row], dtype=torch.float)
        positions = torch.arange(s, dtype=torch.long).expand(count, s).contiguous()
        return {
            "tokens": tokens.to(device), "labels": labels.to(device), "loss_mask": mask.to(device),
            "position_ids": positions.to(device), "engine_logps": engine.to(device),
            "advantages": out["advantages"][start : start + count].to(device),
        }

    def prepare_global_batch(self, microbatches, model_chunks):
        from megatron.core import parallel_state as ps

        g, device = self.cfg.grpo, microbatches[0]["prompt"].device
        prompt_ids = [int(i) for mb in microbatches for i in mb["prompt"].reshape(-1)]
        positions = [int(i) for mb in microbatches for i in mb["position"].reshape(-1)]
        started = time.perf_counter()
        for chunk in model_chunks:
            chunk.eval()
        out = self._rollouts(model_chunks, positions, prompt_ids)
        rollout_time = time.perf_counter() - started
        per_mb = microbatches[0]["prompt"].numel() * g.group_size
        rows = [self._rows(prompt_ids, out, m * per_mb, per_mb, device) for m in range(len(microbatches))]
        started = time.perf_counter()
        old = _forward_only_logps(model_chunks, rows, self.cfg.model.seq_length, per_mb, g.temperature)
        if g.kl_coeff > 0:
            if self.reference_chunks is None:
                from megactllm.training.stages.dpo.task import build_reference_model

                self.reference_chunks = build_reference_model(self.cfg, model_chunks)
            ref = _forward_only_logps(self.reference_chunks, rows, self.cfg.model.seq_length, per_mb, g.temperature)
        for chunk in model_chunks:
            chunk.train()
        logprob_time = time.perf_counter() - started
        if not ps.is_pipeline_last_stage():
            return rows
        for m, mb in enumerate(rows):
            mb["old_logps"] = old[m]
            if g.kl_coeff > 0:
                mb["ref_logps"] = ref[m]
        rows[0]["rollout_stats"] = self._stats(rows, out, rollout_time, logprob_time, device)
        return rows

    def _stats(self, rows, out, rollout_time, logprob_time, device) -> torch.Tensor:
        """The ROLLOUT_STATS over every data-parallel rank (each rank reports the global values)."""
        from megatron.core import parallel_state as ps

        g = self.cfg.grpo
        rewards = out["rewards"].double()
        groups = rewards.view(-1, g.group_size)
        correct = torch.tensor(out["correct"], dtype=torch.float64)
        diff = torch.cat([((mb["old_logps"] - mb["engine_logps"]).abs() * mb["loss_mask"]).reshape(-1) for mb in rows])
        tokens = sum(float(mb["loss_mask"].sum()) for mb in rows)
        sums = torch.tensor([
            len(rewards), float(rewards.sum()), float((rewards**2).sum()), float(correct.nansum()), float((~correct.isnan()).sum()),
            len(groups), float((groups == groups[:, :1]).all(dim=1).sum()),
            float(sum(len(c) for c in out["completion_ids"])), float(sum(not f for f in out["finished"])),
            float(diff.sum()), tokens, rollout_time, logprob_time,
        ], dtype=torch.float64, device=device)
        top = diff.max().double().reshape(1).to(device) if diff.numel() else torch.zeros(1, dtype=torch.float64, device=device)
        group = ps.get_data_parallel_group()
        dist.all_reduce(sums, group=group)
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        n, rsum, rsq, csum, cn, ng, neq, length, clipped, dsum, ntok, rt, lt = sums.tolist()
        dp = ps.get_data_parallel_world_size()
        mean = rsum / n
        return torch.tensor([
            mean, math.sqrt(max(rsq / n - mean * mean, 0.0) * n / max(n - 1, 1)), csum / cn if cn else math.nan,
            float(top), dsum / max(ntok, 1.0), neq / ng, length / n, clipped / n, rt / dp, lt / dp,
        ], dtype=torch.float64, device=device)

    # ---------------------------------------------------------------- the loss
    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        output = token_logps(model, batch, self.cfg.grpo.temperature)
        return output, partial(self._loss, batch)

    def _loss(self, batch: dict, logps: torch.Tensor):
        g = self.cfg.grpo
        mask = batch["loss_mask"]
        terms = grpo_token_losses(logps, batch["old_logps"], batch["advantages"], batch.get("ref_logps"),
                                  g.clip_low, g.clip_high, g.kl_coeff, g.kl_ratio_correction)
        loss_sum, count = grpo_loss_sums(terms.per_token_loss, mask, g.loss_normalization)
        tokens = mask.sum()
        report = {
            "grpo loss": torch.stack([loss_sum.detach(), count.float().to(loss_sum.device)]),
            "clip_fraction": torch.stack([(terms.clipped * mask).sum(), tokens]),
        }
        if terms.kl is not None:
            report["kl"] = torch.stack([(terms.kl.detach() * mask).sum(), tokens])
        if "rollout_stats" in batch:
            for name, value in zip(ROLLOUT_STATS, batch["rollout_stats"]):
                report[name] = torch.stack([value.to(loss_sum.device, torch.float32), torch.ones((), device=loss_sum.device)])
        return loss_sum, count.to(loss_sum.device), report

    def metric_names(self) -> list[str]:
        return [m for m in METRICS if m != "kl" or self.cfg.grpo.kl_coeff > 0]
