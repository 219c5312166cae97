"""The math answer checker and the reward functions (built in and a user's, with TRL's signature)."""
import json
import random
import sys

import pytest

from megactllm.rl.answers import answers_match, extract_answer
from megactllm.rl.rewards import RewardError, RewardSet, format_reward, math_reward


@pytest.mark.parametrize("completion,reference", [
    ("答案是 (11/20)", "(11/20)"),
    ("所以还剩 \\boxed{\\frac{11}{20}}", "(11/20)"),
    ("0.55", "(11/20)"),
    ("She makes 9 * 2 = $18 a day.\n#### 18", "Janet sells 9 eggs.\n#### 18"),
    ("The house cost $80,000.", "80000"),
    ("占全班的25%", "25%"),
    ("25", "25%"),
    ("0.25", "25%"),
    ("7/3", "2(1/3)"),
    ("答：每班４５本。", "45"),
    ("(1/5)/(3/4)", "(4/15)"),
    ("<answer>3.50</answer>", "3.5"),
])
def test_matching_answers(completion, reference):
    assert answers_match(completion, reference)


@pytest.mark.parametrize("completion,reference", [
    ("44", "45"), ("no number here", "3"), ("答案是 (11/21)", "(11/20)"), ("the answer is 4, not 5. #### 5", "4"),
])
def test_wrong_answers(completion, reference):
    assert not answers_match(completion, reference)


def test_the_last_boxed_and_hash_answers_win():
    assert extract_answer("first \\boxed{3}, then \\boxed{{5}}") == "{5}"
    assert answers_match("I think 7.\n#### 9", "9")


@pytest.mark.parametrize("name", ["ape210k_valid", "gsm8k_test"])
def test_reference_answers_score_one_shuffled_about_zero(shared_data, name):
    records = [json.loads(line) for line in (shared_data / "rl" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [r["answer"] for r in records]
    shuffled = answers[:]
    random.Random(0).shuffle(shuffled)
    assert math_reward(None, answers, answer=answers) == [1.0] * len(answers)
    wrong = sum(math_reward(None, shuffled, answer=answers)) / len(answers)
    assert wrong < 0.03, wrong  # equal answers by chance only (small integers repeat)


def test_format_reward():
    assert format_reward(None, ["so \\boxed{4}", "#### 4", "<answer>4</answer>", "4", "\\boxed{}"]) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_a_users_function_with_trls_signature(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length_penalty(prompts, completions, answer, **kwargs):\n"
        "    return [-len(c) / 100 if c != '5' else None for c in completions]\n"
        "def broken(prompts, completions, **kwargs):\n"
        "    return [1 / (len(c) - 3) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = RewardSet.from_specs(["math", "my_rewards:length_penalty"], [1.0, 0.5])
    totals, per_function = rewards.score(["q1", "q2"], ["#### 4", "5"], {"answer": ["4", "6"]}, ["prompt 0", "prompt 1"])
    assert per_function[0] == [1.0, 0.0]
    assert totals[0] == pytest.approx(1.0 - 0.5 * 6 / 100)
    assert totals[1] == 0.0  # the user's None adds nothing
    broken = RewardSet.from_specs(["my_rewards:broken"])
    with pytest.raises(RewardError, match=r"'my_rewards:broken' raised ZeroDivisionError.*record 7 of p.jsonl.*'q2'"):
        broken.score(["q1", "q2"], ["abcde", "abc"], {}, ["record 3 of p.jsonl", "record 7 of p.jsonl"])
    sys.modules.pop("my_rewards", None)


def test_unimportable_rewards_are_one_line_errors():
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        RewardSet.from_specs(["no_such_module_xyz:f"])
    with pytest.raises(RewardError, match="has no function 'nope'"):
        RewardSet.from_specs(["json:nope"])
    with pytest.raises(RewardError, match="neither a built-in"):
        RewardSet.from_specs(["mathh"])
    with pytest.raises(RewardError, match="2 values for 1 rewards"):
        RewardSet.from_specs(["math"], [1.0, 2.0])
