"""HF backend == parallel backend: a random megactllm model (real MAP-NEO tokenizer) saved once,
scored at TP=2 x DP=2, PP=2 x DP=2 and TP=2 x PP=2 on 4 gloo processes, and through transformers
after export. Same token ids, same log-likelihoods within 1e-4 (fp32), same greedy tokens."""
import pytest
from convert_testing import tiny_config
from eval_testing import parallel_eval_jobs

from megactllm.config import ParallelConfig
from megactllm.convert import export_to_hf
from megactllm.eval import load_benchmark, prompts
from megactllm.eval.backends.hf import HFBackend
from megactllm.eval.requests import encode_pair
from megactllm.testing import run_distributed

TOL = 1e-4
LAYOUTS = [
    ("tp2-dp2", ParallelConfig(tensor_model_parallel_size=2)),
    ("pp2-dp2", ParallelConfig(pipeline_model_parallel_size=2)),
    ("tp2-pp2", ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data, sp_model_path):
    root = tmp_path_factory.mktemp("eval_parallel")
    subject = load_benchmark("cmmlu", shared_data / "eval" / "cmmlu", ["agronomy"], shots=1)[0]
    texts = []
    for q in subject.questions[:3]:
        context = prompts.context(subject, q, 1)
        texts += [(context, " " + letter) for letter in "ABCD"]
    # multi-token continuations: one row per choice on the parallel side, the cache path on HF's
    texts += [("下面哪个城市在南方？\n答案：", " 广州"), ("下面哪个城市在南方？\n答案：", " 哈尔滨和沈阳"), ("The quick brown fox", " jumps over the lazy dog")]
    gen_contexts = [texts[0][0], "北京是中国的"]
    cfg = tiny_config(64000, 2, 2, num_layers=2, seq_length=512, max_position_embeddings=512,
                      num_query_groups=2, init_method_std=0.3)
    checkpoint = str(root / "ckpt")
    results = run_distributed(parallel_eval_jobs, 4, checkpoint, str(sp_model_path), cfg, LAYOUTS, texts,
                              gen_contexts, timeout=500)[0]
    hf_dir = root / "hf"
    export_to_hf(checkpoint, hf_dir, progress_stream=None)
    hf = HFBackend(hf_dir, batch_size=4)
    hf_requests = [encode_pair(hf.encode, c, x) for c, x in texts]
    hf_answers = hf.loglikelihood(hf_requests)
    hf_generations = hf.greedy_generate([hf.encode(c) for c in gen_contexts], max_new_tokens=4)
    return results, hf_requests, hf_answers, hf_generations


@pytest.mark.parametrize("layout", [name for name, _ in LAYOUTS])
def test_parallel_backend_equals_hf_backend(runs, layout):
    results, hf_requests, hf_answers, hf_generations = runs
    requests, answers, generations = results[layout]
    assert requests == hf_requests  # the checkpoint's tokenizer and the exported one agree
    diffs = [abs(a[0] - b[0]) for a, b in zip(answers, hf_answers)]
    print(f"{layout}: max |loglikelihood diff| = {max(diffs):.3g}")
    assert max(diffs) < TOL
    assert [a[1] for a in answers] == [b[1] for b in hf_answers]
    assert len({round(a[0], 3) for a in answers}) > len(answers) // 2  # the model tells choices apart
    assert generations == hf_generations
