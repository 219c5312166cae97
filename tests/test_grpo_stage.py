"""train.stage=grpo through the real loop: rollouts from the transformers engine with the policy's
weights handed over in memory, log-prob agreement at TP2 and PP2, TP2 following TP1, resume, bad input.

The model is tiny and so is its vocabulary (a 1000-piece SentencePiece model trained here on GSM8K's
questions, with the chat pieces), so each run takes seconds; the prompts are GSM8K's shortest.
"""
import json
import shutil

import pytest
from grpo_parallel import VOCAB, grpo_run

from megactllm.testing import run_distributed

SEQ = 64
REWARD = ("grpo.rewards=[grpo_rewards:band_tokens]", "grpo.max_completion_tokens=8")


@pytest.fixture(scope="module")
def tiny_tokenizer(shared_data, tmp_path_factory):
    from megactllm.tokenizer.train import TokenizerTrainingSettings, train_sentencepiece

    out = tmp_path_factory.mktemp("grpo_tok")
    questions = [json.loads(line)["question"] for line in (shared_data / "rl" / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()]
    (out / "q.txt").write_text("\n".join(questions), encoding="utf-8")
    return train_sentencepiece(TokenizerTrainingSettings(input=[str(out / "q.txt")], model_prefix=str(out / "sp"),
                                                         vocab_size=VOCAB, input_format="text", num_threads=1))


@pytest.fixture(scope="module")
def prompts(shared_data, tiny_tokenizer, tmp_path_factory):
    from megactllm.tokenizer import load_tokenizer
    from megactllm.tokenizer.chat_template import generation_prompt_tokens

    tok = load_tokenizer("sentencepiece", tiny_tokenizer)
    records = [json.loads(line) for line in (shared_data / "rl" / "gsm8k_test.jsonl").read_text(encoding="utf-8").splitlines()]
    records.sort(key=lambda r: len(generation_prompt_tokens(tok, [{"role": "user", "content": r["question"]}])))
    path = tmp_path_factory.mktemp("grpo_prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:16]), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tp1_run(tiny_tokenizer, prompts, tmp_path_factory):
    work = tmp_path_factory.mktemp("grpo_tp1")
    (records,) = run_distributed(grpo_run, 1, str(work), tiny_tokenizer, prompts, SEQ, 1, 1,
                                 ("train.duration=2 iterations", *REWARD, f"checkpoint.save={work}/ckpt", "checkpoint.interval=2"), timeout=600)
    return {"records": records, "checkpoint": work / "ckpt"}


def test_evaluate_math_on_both_backends(tp1_run, prompts, tmp_path, monkeypatch):
    """`evaluate --tasks math` (greedy, chat template, the GRPO answer checker) on the GRPO checkpoint
    (parallel backend) and its HF export (transformers): the same answers and the same accuracy."""
    from megactllm.convert import export_to_hf
    from megactllm.eval.evaluate import EvalOptions, evaluate

    export_to_hf(tp1_run["checkpoint"], tmp_path / "hf", progress_stream=None)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    answers, accuracy = {}, {}
    for name, model in (("hf", tmp_path / "hf"), ("parallel", tp1_run["checkpoint"])):
        out = tmp_path / f"results_{name}"
        out.mkdir()
        opts = EvalOptions(model=str(model), tasks=["math"], math_file=prompts, limit=4, max_new_tokens=8,
                           output=str(out / "results.json"), batch_size=4)
        results = evaluate(opts, stream=None)
        assert results["config"]["backend"] == name
        summary = results["results"]["math_prompts"]
        accuracy[name] = summary["accuracy"]
        records = [json.loads(line) for line in open(summary["answers_file"], encoding="utf-8")]
        assert len(records) == 4 and all(r["correct"] in (True, False) for r in records)
        answers[name] = [r["completion"] for r in records]
    assert answers["hf"] == answers["parallel"]
    assert accuracy["hf"] == accuracy["parallel"]


def _metrics(records):
    return {r["iteration"]: r["metrics"] for r in records}


@pytest.mark.parametrize("tp,name,extra", [(2, "TP2", ()), (2, "TP2+SP", ("parallel.sequence_parallel=true",)), (1, "DP2", ())])
def test_tp2_and_dp2_follow_tp1_and_the_engine_agrees_with_the_trainer(tp1_run, tiny_tokenizer, prompts, tmp_path, tp, name, extra):
    tp1 = _metrics(tp1_run["records"])
    # One process: the engine (transformers, weights exported in memory) and megatron agree in fp32.
    assert tp1[1]["rollout_logprob_diff_max"] < 1e-4
    assert 0.0 < tp1[1]["reward_mean"] < 0.3  # a random model: a little signal, far from the goal
    records = run_distributed(grpo_run, 2, str(tmp_path), tiny_tokenizer, prompts, SEQ, tp, 1,
                              ("train.duration=2 iterations", *REWARD, *extra), timeout=600)[0]
    other = _metrics(records)
    print(f"grpo log-prob agreement TP1/{name}:", {s: (tp1[s]["rollout_logprob_diff_max"], other[s]["rollout_logprob_diff_max"],
                                                      other[s]["rollout_logprob_diff_mean"]) for s in (1, 2)})
    for step in (1, 2):
        assert other[step]["rollout_logprob_diff_max"] < 1e-4, other[step]
        assert other[step]["rollout_logprob_diff_mean"] < 1e-5
    # The sampler's seed is the prompt's position: the same completions, rewards and loss at TP2 and
    # with the prompts split over two data-parallel ranks.
    assert other[1]["reward_mean"] == pytest.approx(tp1[1]["reward_mean"], abs=1e-9)
    assert other[1]["completion_length"] == pytest.approx(tp1[1]["completion_length"], abs=1e-9)
    assert other[1]["grpo loss"] == pytest.approx(tp1[1]["grpo loss"], abs=1e-5)
    assert other[2]["reward_mean"] == pytest.approx(tp1[2]["reward_mean"], abs=0.02)


def test_pp2_from_a_checkpoint_with_a_reference_token_normalisation_and_two_updates(tp1_run, tiny_tokenizer, prompts, tmp_path):
    # The policy and the frozen reference both start from the TP1 run's checkpoint, loaded at PP2.
    extra = ("train.duration=2 iterations", *REWARD, "grpo.kl_coeff=0.05", "grpo.loss_normalization=token",
             "grpo.updates_per_batch=2", "grpo.clip_high=0.28", f"checkpoint.pretrained={tp1_run['checkpoint']}")
    records = run_distributed(grpo_run, 2, str(tmp_path), tiny_tokenizer, prompts, SEQ, 1, 2, extra, timeout=600)[0]
    m = _metrics(records)
    print("grpo log-prob agreement PP2:", {s: (m[s]["rollout_logprob_diff_max"], m[s]["rollout_logprob_diff_mean"], m[s]["kl"]) for s in (1, 2)})
    for step in (1, 2):
        assert m[step]["rollout_logprob_diff_max"] < 1e-4, m[step]
    # The reference is the initial policy: no KL before the first update; after two, the policy has moved.
    assert m[2]["kl"] > 0.0
    assert all(k in m[1] for k in ("clip_fraction", "equal_reward_groups", "rollout_time", "logprob_time", "accuracy"))


def test_resume_after_a_stop_gives_the_same_next_step(tp1_run, tiny_tokenizer, prompts, tmp_path):
    save = ("checkpoint.save=" + str(tmp_path / "ckpt"), "checkpoint.interval=1")
    run_distributed(grpo_run, 1, str(tmp_path / "a"), tiny_tokenizer, prompts, SEQ, 1, 1,
                    ("train.duration=1 iterations", *REWARD, *save), timeout=600)
    resumed = run_distributed(grpo_run, 1, str(tmp_path / "b"), tiny_tokenizer, prompts, SEQ, 1, 1,
                              ("train.duration=2 iterations", *REWARD, *save, "checkpoint.load=" + str(tmp_path / "ckpt")), timeout=600)[0]
    again, straight = _metrics(resumed)[2], _metrics(tp1_run["records"])[2]
    for key in ("reward_mean", "reward_std", "completion_length"):
        assert again[key] == straight[key], key
    assert again["grpo loss"] == pytest.approx(straight["grpo loss"], abs=1e-6)


def test_a_raising_reward_stops_every_rank_naming_the_prompt(tiny_tokenizer, prompts, tmp_path):
    from megactllm.rl.rewards import RewardError

    extra = ("train.duration=2 iterations", "grpo.max_completion_tokens=8", "grpo.rewards=[grpo_rewards:fails_on_long_questions]")
    with pytest.raises(Exception) as failure:
        run_distributed(grpo_run, 2, str(tmp_path), tiny_tokenizer, prompts, SEQ, 1, 2, extra, timeout=600)
    text = str(failure.value) + "".join(getattr(failure.value, "__notes__", []))
    print("grpo raising reward:", text[-400:])
    assert RewardError.__name__ in text or "raised ValueError" in text
    assert "reward 'grpo_rewards:fails_on_long_questions' raised ValueError: question too long" in text
    assert "prompts.jsonl:" in text  # the record's file and line


# ---------------------------------------------------------------- bad input: one clear error each
def test_bad_input_is_one_clear_error(tiny_tokenizer, prompts, tmp_path):
    from megactllm.config import ConfigError, load_config
    from megactllm.rl.prompts import PromptFileError, load_prompts
    from megactllm.rl.rewards import RewardError
    from megactllm.tokenizer import load_tokenizer
    from megactllm.training.stages.grpo.task import GRPOTask

    tok = load_tokenizer("sentencepiece", tiny_tokenizer)
    no_answers = tmp_path / "no_answers.jsonl"
    no_answers.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "And 3 + 3?"}\n', encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"no_answers.jsonl:2: no `answer`"):
        load_prompts(str(no_answers), tok, need_answers=True, max_prompt_tokens=56)
    with pytest.raises(PromptFileError, match=r"prompts.jsonl:1: the prompt is \d+ tokens .* must fit model.seq_length"):
        load_prompts(prompts, tok, need_answers=True, max_prompt_tokens=10)
    inputs = ["train.stage=grpo", "data.prompts_path=prompts.jsonl"]
    with pytest.raises(ConfigError, match=r"grpo.group_size=1: must be at least 2"):
        load_config(None, inputs + ["grpo.group_size=1"])
    with pytest.raises(ConfigError, match=r"grpo.max_completion_tokens=64: leaves no room"):
        load_config(None, inputs + [f"model.seq_length={SEQ}", "grpo.max_completion_tokens=64"])
    with pytest.raises(ConfigError, match=r"data.prompts_path=null: is needed by train.stage=grpo"):
        load_config(None, ["train.stage=grpo", "grpo.max_completion_tokens=8"])
    with pytest.raises(RewardError, match=r"cannot import module 'no_such_rewards'"):
        GRPOTask(load_config(None, inputs + ["grpo.max_completion_tokens=8", "grpo.rewards=[no_such_rewards:score]"]))
