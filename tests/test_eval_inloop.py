"""In-loop benchmark evaluation: a tiny pretraining run (DP=2) scores CMMLU subjects every 2
iterations on the live model and logs them; scoring its saved checkpoints afterwards (at TP=2)
gives the same numbers; the metrics module plots accuracy against consumed tokens."""
import json
import subprocess
import sys

from eval_testing import train_then_score_checkpoints
from train_utils import tiny_overrides, write_corpus

from megactllm.training.run.metrics import read_benchmarks, read_metrics
from megactllm.testing import run_distributed


def test_inloop_eval_logs_and_matches_checkpoint_evals(tmp_path, shared_data, sp_model_path):
    data = write_corpus(str(tmp_path / "corpus"), seed=0, documents=120)
    # The synthetic ids (< 512, EOD 2) are valid MAP-NEO ids: declare the real tokenizer in the sidecar.
    (tmp_path / "corpus.json").write_text(json.dumps({"eod_id": 2, "vocab_size": 64000}))
    run = tmp_path / "run"
    overrides = tiny_overrides(
        data, str(tmp_path), **{
            "model.vocab_size": 64000, "model.max_position_embeddings": 256, "train.duration": "4 iterations",
            "checkpoint.save": str(run), "checkpoint.interval": 2, "logging.dir": str(run),
            "data.tokenizer_model": str(sp_model_path), "optim.lr": 3e-2,
            "eval.interval": 2, "eval.data_dir": str(shared_data / "eval"),
            "eval.tasks": "[cmmlu, ceval]", "eval.subjects": "[cmmlu:agronomy, cmmlu:astronomy, ceval:accountant]",
            "eval.max_questions": 4, "eval.shots": 1, "eval.batch_size": 4,
        })
    records = run_distributed(train_then_score_checkpoints, 2, overrides, str(run), 2, timeout=500)[0]

    logged = read_benchmarks(run / "metrics.jsonl")
    assert [r["iteration"] for r in logged] == [2, 4]
    metrics = logged[0]["metrics"]
    for key in ("cmmlu_agronomy/acc", "cmmlu_astronomy/acc_norm", "ceval-valid_accountant/acc", "cmmlu/acc_micro", "cmmlu/STEM/acc_macro"):
        assert 0.0 <= metrics[key] <= 1.0, key
    train, _ = read_metrics(run)
    assert len(train) == 4  # bench records do not disturb the loss records

    assert [r["iteration"] for r in records] == [2, 4]
    for live, saved in zip(logged, records):
        assert saved["consumed_tokens"] == live["consumed_tokens"]
        assert saved["metrics"].keys() == live["metrics"].keys()
        for k, v in live["metrics"].items():
            assert abs(saved["metrics"][k] - v) < 1e-9, k
    assert read_benchmarks(run / "checkpoint_evals.jsonl") == records

    out = subprocess.run([sys.executable, "-m", "megactllm.training.run.metrics", str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (run / "loss_curve.png").stat().st_size > 0
    json.dumps(records)
