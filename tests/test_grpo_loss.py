"""The GRPO loss and its gradients equal TRL's GRPOTrainer on a fixed batch (TRL is the reference).

A tiny LLaMA (transformers) is the policy in both: TRL's `_compute_loss` runs its own forward and
loss; ours computes the completion log-probs from the same model and applies
megactllm.training.stages.grpo.loss. Both normalisations (sequence = TRL's "grpo", token = TRL's "dapo"),
with the k3 KL term on and off, and DAPO's asymmetric clip with old log-probs that make it bite.
"""
import copy

import pytest
import torch

from megactllm.rl.advantages import group_advantages
from megactllm.training.stages.grpo.loss import grpo_loss_sums, grpo_token_losses

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

VOCAB, PROMPT, COMPLETION, ROWS, GROUP = 32, 5, 7, 8, 4
TEMPERATURE = 0.7


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", unk_token="t0")


def _model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).float()


def _batch():
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(2, VOCAB, (ROWS, PROMPT), generator=g)
    prompt_mask = torch.ones(ROWS, PROMPT, dtype=torch.long)
    completion_ids = torch.randint(2, VOCAB, (ROWS, COMPLETION), generator=g)
    lengths = torch.tensor([7, 3, 5, 7, 1, 6, 4, 2])  # completions end at different tokens
    completion_mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 0.0, 0.2])
    # Old and reference log-probs near the policy's, off by enough to clip some tokens both ways.
    noise_old = 0.4 * torch.randn(ROWS, COMPLETION, generator=g)
    noise_ref = 0.3 * torch.randn(ROWS, COMPLETION, generator=g)
    return prompt_ids, prompt_mask, completion_ids, completion_mask, rewards, noise_old, noise_ref


def _completion_logps(model, prompt_ids, completion_ids):
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    logits = model(input_ids=ids).logits[:, PROMPT - 1 : -1].float() / TEMPERATURE
    return torch.log_softmax(logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


def _trl_trainer(model, loss_type, beta, correction, tmp_path):
    from datasets import Dataset

    args = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=ROWS, num_generations=GROUP, beta=beta,
        loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, temperature=TEMPERATURE,
        max_completion_length=COMPLETION, report_to=[], use_cpu=True, bf16=False, logging_steps=1,
        gradient_accumulation_steps=1, use_bias_correction_kl=correction, model_init_kwargs={"dtype": torch.float32},
    )
    data = Dataset.from_dict({"prompt": ["t2 t3"] * ROWS})
    return trl.GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                           args=args, train_dataset=data, processing_class=_tokenizer())


@pytest.mark.parametrize("normalization,loss_type", [("sequence", "grpo"), ("token", "dapo")])
@pytest.mark.parametrize("kl_coeff,correction", [(0.0, False), (0.04, False), (0.04, True)])
def test_grpo_loss_and_gradients_equal_trl(normalization, loss_type, kl_coeff, correction, tmp_path):
    base = _model()
    prompt_ids, prompt_mask, completion_ids, completion_mask, rewards, noise_old, noise_ref = _batch()
    advantages = group_advantages(rewards, GROUP)
    with torch.no_grad():
        current = _completion_logps(base, prompt_ids, completion_ids)
    old, ref = current + noise_old, current + noise_ref

    # TRL: its own trainer (loading the policy, and its reference, from disk), forward and loss.
    base.save_pretrained(tmp_path / "policy")
    trainer = _trl_trainer(str(tmp_path / "policy"), loss_type, kl_coeff, correction, tmp_path / "trl")
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by transformers' loop; one batch, no accumulation
    inputs = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
        "num_items_in_batch": completion_mask.sum(),
    }
    if kl_coeff:
        inputs["ref_per_token_logps"] = ref
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_loss.backward()
    trl_grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}

    # Ours: the same model's log-probs through megactllm's GRPO loss, normalised by the (sum, count) pair.
    ours = copy.deepcopy(base)
    ours.train()
    logps = _completion_logps(ours, prompt_ids, completion_ids)
    terms = grpo_token_losses(logps, old, advantages, ref if kl_coeff else None, clip_low=0.2, clip_high=0.28, kl_coeff=kl_coeff,
                              kl_ratio_correction=correction)
    total, count = grpo_loss_sums(terms.per_token_loss, completion_mask, normalization)
    loss = total / count
    loss.backward()

    names = {n.replace("module.", ""): p for n, p in ours.named_parameters()}
    worst = max(float((names[n.replace("module.", "")].grad - g).abs().max()) for n, g in trl_grads.items())
    print(f"grpo vs TRL ({normalization}, kl {kl_coeff}, ratio correction {correction}): "
          f"|loss diff| {abs(float(loss) - float(trl_loss)):.1e}, max |grad diff| {worst:.1e}")
    assert terms.clipped[completion_mask.bool()].sum() > 0, "the batch should clip some tokens"
    assert float(loss) == pytest.approx(float(trl_loss), abs=1e-5)
    for name, grad in trl_grads.items():
        name = name.replace("module.", "")
        torch.testing.assert_close(names[name].grad, grad, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_group_advantages_are_trls():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4)
    # All-equal groups carry no signal; a lone success gets (1 - 0.25) / (std 0.5 + 1e-4).
    assert torch.allclose(adv[4:], torch.zeros(4))
    assert float(adv[0]) == pytest.approx(0.75 / (0.5 + 1e-4))
