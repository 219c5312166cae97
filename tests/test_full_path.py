"""The full path (tools/full_path.py --quick): every stage starts from the previous one's output with
one tokenizer, each output makes sense, and a rerun skips what is finished. Plus the stage runner's
bookkeeping (markers written only after success, later stages redone after an earlier one)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megactllm.walkthrough.runner import DONE_FILE, Stage, StageFailed, StageResult, format_table, run_stages

REPO = Path(__file__).resolve().parents[1]
STAGES = ["clean", "tokenizer", "tokenize", "pretrain", "evaluate", "sft", "dpo", "export", "gguf", "serve"]
sys.path.insert(0, str(REPO / "examples" / "data"))
import make_raw_sample  # noqa: E402


def run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "tools" / "full_path.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("full_path")
    proc = run_cli("--quick", "--out", out, "--shared-data", shared_data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = {s: json.loads((out / s / DONE_FILE).read_text(encoding="utf-8")) for s in STAGES}
    return out, proc.stdout, done, shared_data


def test_raw_sample_is_what_its_script_writes():
    shipped = (REPO / "examples" / "data" / "raw_sample.jsonl").read_text(encoding="utf-8").splitlines()
    assert shipped == make_raw_sample.make_raw()


def test_one_line_per_stage_and_the_table(quick):
    out, stdout, done, _ = quick
    for number, stage in enumerate(STAGES, 1):
        finished = [l for l in stdout.splitlines() if l.startswith(f"[{number}/{len(STAGES)}] {stage}") and " s: " in l]
        assert len(finished) == 1, stdout
    table = [l for l in stdout.splitlines() if l.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table] == ["stage", *STAGES, "total"]
    for stage in STAGES:
        output = done[stage]["output"]
        assert output in stdout and (Path(output).exists() or Path(output + ".bin").exists()), output


def test_cleaning_found_what_was_planted(quick):
    clean = quick[2]["clean"]["details"]
    assert clean["exact_dup"] == make_raw_sample.EXACT_COPIES
    assert clean["near_dup"] >= make_raw_sample.NEAR_COPIES
    assert clean["filtered"] == len(make_raw_sample.JUNK)
    assert clean["bad_records"] == 2
    assert clean["balanced"] and clean["kept"] + clean["exact_dup"] + clean["near_dup"] + clean["filtered"] + 2 == clean["input"]
    kept = [json.loads(l)["text"] for l in Path(quick[2]["clean"]["output"]).read_text(encoding="utf-8").splitlines()]
    tokenized = quick[2]["tokenize"]["details"]
    assert len(kept) == clean["kept"] == tokenized["documents"] + tokenized["heldout_documents"]
    assert not any("Lorem ipsum" in t or "document.getElementById" in t for t in kept)


def test_one_tokenizer_throughout(quick):
    import sentencepiece as spm

    out = quick[0]
    model = out / "tokenizer" / "zh_sample.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert [len(sp.encode(p)) for p in ("<|im_start|>", "<|im_end|>")] == [1, 1]
    copies = [next((out / stage / "checkpoints").glob("iter_*/tokenizer/zh_sample.model")) for stage in ("pretrain", "sft", "dpo")]
    copies.append(out / "export" / "hf" / "tokenizer.model")
    for copy in copies:
        assert copy.read_bytes() == model.read_bytes(), copy
    meta = json.loads((out / "tokenize" / "sample_text_document.json").read_text(encoding="utf-8"))
    assert Path(meta["model_path"]).resolve() == model.resolve()


def test_training_chains_and_learns(quick):
    out, _, done, _ = quick
    pre = json.loads(next((out / "pretrain" / "checkpoints").glob("iter_*/megactllm.json")).read_text())
    assert (pre["parallel"]["tensor_model_parallel_size"], pre["parallel"]["pipeline_model_parallel_size"]) == (2, 2)
    assert done["pretrain"]["details"]["last_loss"] < done["pretrain"]["details"]["first_loss"] - 1.0
    assert done["sft"]["details"]["last_loss"] < done["sft"]["details"]["first_loss"]
    # Each chat stage starts from the previous stage's weights, at another layout (TP1 x PP1).
    for stage, parent in (("sft", "pretrain"), ("dpo", "sft")):
        log = (out / stage / "log.txt").read_text(encoding="utf-8")
        assert f"initialised weights from {out / parent / 'checkpoints'}/iter_" in log
    valid = done["dpo"]["details"]["valid"]
    assert 0.0 <= valid["rewards/accuracy"] <= 1.0 and valid["dpo loss"] == pytest.approx(valid["dpo loss"])


def test_evaluation_of_the_pretrained_model(quick):
    out, _, done, _ = quick
    heldout = (out / "tokenize" / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
    trained = set((out / "tokenize" / "train.jsonl").read_text(encoding="utf-8").splitlines())
    assert heldout and not trained.intersection(heldout)
    results = json.loads((out / "evaluate" / "results.json").read_text(encoding="utf-8"))
    assert str(out / "pretrain" / "checkpoints") in results["config"]["model"]
    bpb = results["results"]["bpb_heldout"]
    assert 0 < bpb["bits_per_byte"] < 8 and bpb["bits_per_byte"] == done["evaluate"]["details"]["bits_per_byte"]
    cmmlu = {k: v for k, v in results["results"].items() if k.startswith("cmmlu_")}
    assert sorted(cmmlu) == ["cmmlu_chinese_food_culture", "cmmlu_elementary_chinese", "cmmlu_high_school_geography"]
    assert all(v["n"] == 10 and 0 <= v["acc"] <= 1 for v in cmmlu.values())


def test_gguf_and_the_server_answered(quick):
    import socket
    from urllib.parse import urlparse

    from gguf import GGUFReader

    out, _, done, _ = quick
    reader = GGUFReader(str(out / "gguf" / "zh_sample-q4_0.gguf"))
    assert "Q4_0" in {t.tensor_type.name for t in reader.tensors}
    serve = done["serve"]["details"]
    assert serve["question"] and isinstance(serve["answer"], str) and serve["completion_tokens"] >= 1
    assert serve["finish_reason"] in ("stop", "length") and serve["server_exit"] is not None
    log = (out / "serve" / "log.txt").read_text(encoding="utf-8")
    assert "--port 0" in log and "listening on http://127.0.0.1:" in log
    url = urlparse(serve["url"])
    with pytest.raises(OSError):  # the server is gone
        socket.create_connection((url.hostname, url.port), timeout=2).close()


def test_hf_export_loads_in_transformers(quick):
    import sentencepiece as spm
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = quick[0]
    hf = out / "export" / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(hf, local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer" / "zh_sample.model"))
    assert model.config.vocab_size >= sp.get_piece_size()
    text = "今天早上起了大雾，路上的车都开得很慢。"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == sp.encode(text)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()
    assert quick[2]["export"]["details"]["parameters"] == sum(p.numel() for p in model.parameters())


def test_rerun_skips_every_finished_stage(quick):
    out, _, done, shared = quick
    before = {s: (out / s / DONE_FILE).stat().st_mtime_ns for s in STAGES}
    proc = run_cli("--quick", "--out", out, "--shared-data", shared, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("done before") == len(STAGES), proc.stdout
    assert {s: (out / s / DONE_FILE).stat().st_mtime_ns for s in STAGES} == before


def test_missing_raw_input_is_a_clear_error(tmp_path, shared_data):
    proc = run_cli("--quick", "--out", tmp_path / "run", "--raw", tmp_path / "absent.jsonl", "--shared-data", shared_data,
                   timeout=300)
    assert proc.returncode == 2  # a user's mistake: one line, before any stage runs
    assert proc.stderr.strip() == f"error: --raw {tmp_path / 'absent.jsonl'} does not exist"
    assert not (tmp_path / "run" / "clean" / DONE_FILE).exists()


# The stage runner on its own: plain Python stages that write a file.

def _stages(calls, fail=None):
    def make(name):
        def run(d):
            calls.append(name)
            if name == fail:
                (d / "partial").write_text("half")
                raise OSError(f"{name} broke")
            (d / "out.txt").write_text(name)
            return StageResult(f"{name} ok", str(d / "out.txt"))
        return Stage(name, f"stage {name}", run)
    return [make(n) for n in ("a", "b", "c")]


def test_runner_marks_only_success_and_redoes_what_follows(tmp_path):
    calls, lines = [], []
    with pytest.raises(StageFailed, match="stage b failed: OSError: b broke"):
        run_stages(_stages(calls, fail="b"), tmp_path, {"k": 1}, say=lines.append)
    assert calls == ["a", "b"]
    assert (tmp_path / "a" / DONE_FILE).exists() and not (tmp_path / "b" / DONE_FILE).exists()
    assert (tmp_path / "b" / "partial").exists()

    calls.clear()
    records = run_stages(_stages(calls), tmp_path, {"k": 1}, say=lines.append)
    assert calls == ["b", "c"] and [r.skipped for r in records] == [True, False, False]
    assert not (tmp_path / "b" / "partial").exists()  # a failed attempt's leftovers are cleared
    assert "total" in format_table(records)

    calls.clear()
    run_stages(_stages(calls), tmp_path, {"k": 1}, force=["b"])
    assert calls == ["b", "c"]  # redoing b redoes c, which reads b's output
    calls.clear()
    run_stages(_stages(calls), tmp_path, {"k": 2})
    assert calls == ["a", "b", "c"]  # other settings: nothing counts as done
    calls.clear()
    (tmp_path / "c" / DONE_FILE).write_text("{trunc")  # a damaged marker is no marker
    run_stages(_stages(calls), tmp_path, {"k": 2})
    assert calls == ["c"]


def test_runner_redoes_from_the_stage_whose_own_settings_changed(tmp_path):
    calls = []

    def stages(b_setting):
        out = _stages(calls)
        out[1].settings = {"iters": b_setting}
        return out

    run_stages(stages(1), tmp_path, {})
    calls.clear()
    run_stages(stages(2), tmp_path, {})
    assert calls == ["b", "c"]
    calls.clear()
    run_stages(stages(("x", "y")), tmp_path, {})  # a tuple is stored as a JSON list: still equal on rerun
    calls.clear()
    run_stages(stages(("x", "y")), tmp_path, {})
    assert calls == []


def test_a_failed_command_names_its_cause_and_keeps_its_log(tmp_path):
    from megactllm.walkthrough.subprocesses import run_logged

    script = "import sys; print('working'); print('[rank0]: ValueError: record 7 of x.jsonl is bad', flush=True); sys.exit(3)"
    with pytest.raises(StageFailed) as info:
        run_logged([sys.executable, "-c", script], tmp_path / "log.txt", say=lambda s: None)
    message = str(info.value)
    assert message.startswith("ValueError: record 7 of x.jsonl is bad") and "status 3" in message
    assert str(tmp_path / "log.txt") in message
    assert "working" in (tmp_path / "log.txt").read_text()
