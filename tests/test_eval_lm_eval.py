"""Our multiple-choice scores equal lm-eval 0.4's, request by request.

lm-eval's HFLM runs its own task configs (prompts, descriptions, few-shot sampler read from the
installed package) over the local CSV files; our HF backend runs the same model, CSVs and shots.
Also: letter mode against a next-token computation written here, and the KV-cache path for
multi-token continuations against lm-eval's loglikelihood.
"""
import json

import pytest
import torch
from eval_testing import benchmark_files_without_mapping, save_tiny_llama

from megactllm.eval import evaluate_subjects, load_benchmark, prompts
from megactllm.eval.backends.hf import HFBackend
from megactllm.eval.lm_eval_compat import lm_eval_task_yaml
from megactllm.eval.requests import encode_pair

# chinese_driving_rule (not in the shared CMMLU test split) is read from its dev file.
CASES = [("cmmlu", "agronomy"), ("cmmlu", "chinese_driving_rule"), ("ceval", "accountant"), ("mmlu", "business_ethics")]
LIMIT = 3
TOL = 1e-4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sp_model_path):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), sp_model_path)


@pytest.fixture(scope="module")
def eval_data(shared_data, tmp_path_factory):
    """The real CSV files with no mapping.json beside them (as CMMLU's repository ships data/{dev,test}):
    display names come from the package's own subject tables."""
    return benchmark_files_without_mapping(shared_data / "eval", tmp_path_factory.mktemp("bare_eval"),
                                           extra_test={"cmmlu": ["chinese_driving_rule"]})


@pytest.fixture(scope="module")
def lm_eval_runs(model_dir, eval_data, tmp_path_factory):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks_dir = tmp_path_factory.mktemp("lm_eval_tasks")
    names = {(b, s): lm_eval_task_yaml(tasks_dir, b, eval_data / b, s) for b, s in CASES}
    lm = HFLM(pretrained=str(model_dir), batch_size=4, device="cpu", dtype="float32")
    runs = {}
    for shots in (0, 1):
        out = lm_eval.simple_evaluate(model=lm, tasks=list(names.values()), num_fewshot=shots, limit=LIMIT,
                                      task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True)
        runs[shots] = {key: sorted(out["samples"][name], key=lambda s: s["doc_id"]) for key, name in names.items()}
    return runs, lm


@pytest.mark.parametrize("shots", [0, 1])
def test_loglikelihoods_and_acc_equal_lm_eval(model_dir, eval_data, lm_eval_runs, shots):
    backend = HFBackend(model_dir, batch_size=3)
    subjects = [s for b, name in CASES for s in load_benchmark(b, eval_data / b, [name], shots=shots)]
    ours = evaluate_subjects(backend, subjects, shots=shots, limit=LIMIT, log_samples=True, progress_stream=None)
    for (benchmark, name), subject in zip(CASES, subjects):
        theirs = lm_eval_runs[0][shots][(benchmark, name)]
        mine = ours.samples[subject.task_name]
        assert len(mine) == len(theirs) == LIMIT
        for a, b in zip(mine, theirs):
            their_lls = [r[0][0] for r in b["resps"]]
            assert max(abs(x - y) for x, y in zip(a["response"], their_lls)) < TOL, (subject.task_name, a["source"])
            assert a["acc"] == b["acc"]
            if "acc_norm" in b:  # lm-eval's MMLU reports acc only
                assert a["acc_norm"] == b["acc_norm"]
    assert {s.task for s in ours.scores} == {"cmmlu_agronomy", "cmmlu_chinese_driving_rule", "ceval-valid_accountant",
                                             "mmlu_business_ethics"}
    # The prompts equal (the log-likelihoods above): the description comes from the shipped table.
    assert prompts.description(subjects[1]) == "以下是关于中国驾驶规则的单项选择题，请直接给出正确答案的选项。\n\n"


def test_multi_token_continuations_use_the_cache_and_equal_lm_eval(model_dir, lm_eval_runs):
    """Continuations of several tokens (jsonl choice texts) go through the prefix cache path."""
    from lm_eval.api.instance import Instance

    lm = lm_eval_runs[1]
    backend = HFBackend(model_dir, batch_size=2)
    pairs = [("北京是中国的首都。下面哪个城市在南方？\n答案：", f" {c}") for c in ("广州", "哈尔滨", "沈阳市和大连市")]
    pairs += [("The quick brown fox", " jumps over the lazy dog"), ("The quick brown fox", " sleeps")]
    requests = [encode_pair(backend.encode, c, x) for c, x in pairs]
    assert any(len(r.continuation) > 2 for r in requests)
    ours = backend.loglikelihood(requests)
    instances = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(pairs)]
    theirs = lm.loglikelihood(instances)
    for (ll, greedy), (tll, tgreedy) in zip(ours, theirs):
        assert abs(ll - tll) < TOL and greedy == tgreedy


def test_letter_mode_equals_next_token_probabilities(model_dir, shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megactllm.eval import prompts

    subjects = load_benchmark("cmmlu", shared_data / "eval" / "cmmlu", ["agronomy"], shots=1)
    result = evaluate_subjects(HFBackend(model_dir), subjects, shots=1, mode="letter", limit=6, log_samples=True,
                               progress_stream=None)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    letter_ids = [tok.encode(letter)[-1] for letter in "ABCD"]
    expected = []
    for q in subjects[0].questions[:6]:
        ids = torch.tensor([tok.encode(prompts.context(subjects[0], q, 1))])
        with torch.no_grad():
            probs = torch.log_softmax(model(ids).logits[0, -1], -1)[letter_ids]
        expected.append(float(int(probs.argmax()) == q.answer))
    samples = result.samples["cmmlu_agronomy"]
    assert [s["acc_letter"] for s in samples] == expected
    assert result.scores[0].metrics == {"acc_letter": sum(expected) / 6}
    json.dumps(samples)  # log_samples records are JSON-serialisable
