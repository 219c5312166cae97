"""Task files, bad input on purpose, bits per byte against a direct computation, the CLI."""
import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from eval_testing import benchmark_files_without_mapping, save_tiny_llama

from megactllm.eval import EvalDataError, load_benchmark
from megactllm.eval.bpb import bits_per_byte
from megactllm.eval.backends.hf import HFBackend

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
HEADER = ",Question,A,B,C,D,Answer"


def _cmmlu(root, rows, name="agronomy", header=HEADER, newline="\n", bom=False):
    for split in ("test", "dev"):
        (root / split).mkdir(parents=True, exist_ok=True)
        text = newline.join([header] + rows) + newline
        (root / split / f"{name}.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return root


ROWS = ['0,"多行\n问题",甲,乙,丙,丁,B', "1,问题二,a,b,c,d,D", "2,问题三,a,b,c,d,A"]


def test_reads_all_real_layouts(shared_data):
    for benchmark, subject, n_min in (("cmmlu", "agronomy", 100), ("ceval", "accountant", 40), ("mmlu", "business_ethics", 90)):
        (s,) = load_benchmark(benchmark, shared_data / "eval" / benchmark, [subject], shots=5)
        assert len(s.questions) >= n_min and len(s.dev) == 5
        assert all(0 <= q.answer < 4 and len(q.choices) == 4 for q in s.questions)
    every = load_benchmark("cmmlu", shared_data / "eval" / "cmmlu")
    present = sorted(p.stem for p in (shared_data / "eval" / "cmmlu" / "test").glob("*.csv"))
    assert [s.name for s in every] == present  # whatever files exist
    mapping = json.loads((shared_data / "eval" / "cmmlu" / "mapping.json").read_text(encoding="utf-8"))
    assert [s.category for s in every] == [mapping[s.name]["category"] for s in every]
    assert {s.category for s in every} >= {"STEM", "Humanities", "Social Sciences", "Other"}


def test_shipped_subjects_give_lm_eval_descriptions_without_mapping_json(shared_data, tmp_path):
    """CMMLU's own data/{dev,test} (no mapping.json): prompts still say lm-eval's display names."""
    from megactllm.eval import prompts

    root = benchmark_files_without_mapping(shared_data / "eval", tmp_path, extra_test={"cmmlu": ["chinese_driving_rule"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every real subject is known: no fallback warning
        subjects = {(b, s.name): s for b in ("cmmlu", "ceval", "mmlu") for s in load_benchmark(b, root / b)}
    driving = subjects[("cmmlu", "chinese_driving_rule")]
    assert prompts.description(driving) == "以下是关于中国驾驶规则的单项选择题，请直接给出正确答案的选项。\n\n"
    assert driving.category == "Other"
    assert prompts.description(subjects[("ceval", "accountant")]) == "以下是中国关于注册会计师的单项选择题，请选出其中的正确答案。\n\n"
    assert subjects[("mmlu", "business_ethics")].display_name == "business ethics"
    # Categories equal those of the mapping.json files published with the data (MMLU's anatomy aside,
    # which lm-eval's groups put in STEM).
    for (benchmark, name), subject in subjects.items():
        published = json.loads((shared_data / "eval" / benchmark / "mapping.json").read_text(encoding="utf-8"))[name]
        assert subject.display_name == published["name"]
        assert subject.category == published["category"] or (benchmark, name) == ("mmlu", "anatomy")


def test_shipped_tables_hold_every_subject_with_lm_eval_descriptions():
    """67 CMMLU, 52 C-Eval and 57 MMLU subjects; each description equals lm-eval 0.4's task YAML."""
    import lm_eval
    import yaml

    from megactllm.eval import Subject, prompts
    from megactllm.eval.tasks.subject_names import shipped_subjects

    tasks = Path(lm_eval.__file__).parent / "tasks"
    layout = {"cmmlu": ("cmmlu", "cmmlu_"), "ceval": ("ceval", "ceval-valid_"), "mmlu": ("mmlu/default", "mmlu_")}
    counts = {}
    for benchmark, (folder, prefix) in layout.items():
        table = shipped_subjects(benchmark)
        counts[benchmark] = len(table)
        theirs = {p.stem[len(prefix):]: p for p in (tasks / folder).glob(f"{prefix}*.yaml")}
        assert set(table) == set(theirs), benchmark
        for name, info in table.items():
            subject = Subject(benchmark, name, info["name"], info["category"], [])
            expected = yaml.safe_load(theirs[name].read_text(encoding="utf-8"))["description"]
            assert prompts.description(subject) == expected, (benchmark, name)
            assert info["category"] in ("STEM", "Humanities", "Social Sciences", "Other")
    assert counts == {"cmmlu": 67, "ceval": 52, "mmlu": 57}


def test_mapping_json_overrides_and_unknown_subject_warns(tmp_path):
    from megactllm.eval import prompts
    from megactllm.eval.tasks.subject_names import UnknownSubjectWarning

    root = _cmmlu(tmp_path / "a", ROWS, name="agronomy")
    _cmmlu(root, ROWS, name="tea_culture")
    (root / "mapping.json").write_text(json.dumps({"agronomy": {"category": "STEM"}}), encoding="utf-8")
    with pytest.warns(UnknownSubjectWarning, match=r"tea_culture\.csv: subject 'tea_culture' is in neither .*mapping\.json; "
                                                   r"its prompt describes it as 'tea culture' \(from the file name\), category 'Other'"):
        agronomy, tea = load_benchmark("cmmlu", root)
    assert (agronomy.display_name, agronomy.category) == ("农学", "STEM")  # name shipped, category overridden
    assert (tea.display_name, tea.category) == ("tea culture", "Other")
    (root / "mapping.json").write_text(json.dumps({"tea_culture": {"name": "茶文化", "category": "Humanities"}}), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tea = load_benchmark("cmmlu", root, ["tea_culture"])[0]
    assert prompts.description(tea).startswith("以下是关于茶文化的单项选择题") and tea.category == "Humanities"
    (root / "mapping.json").write_text('["agronomy"]', encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"mapping\.json: expected \{subject"):
        load_benchmark("cmmlu", root)


def test_bom_and_crlf_read_like_plain_files(tmp_path):
    plain = load_benchmark("cmmlu", _cmmlu(tmp_path / "plain", ROWS), shots=2)[0]
    odd = load_benchmark("cmmlu", _cmmlu(tmp_path / "odd", ROWS, newline="\r\n", bom=True), shots=2)[0]
    assert [(q.question, q.choices, q.answer) for q in odd.questions] == [(q.question, q.choices, q.answer) for q in plain.questions]
    assert odd.questions[0].question.replace("\r", "") == "多行\n问题" and odd.questions[1].answer == 3


def test_missing_column_is_named(tmp_path):
    root = _cmmlu(tmp_path, ["0,q,a,b,c,d"], header=",Question,A,B,C,D")
    with pytest.raises(EvalDataError, match=r"agronomy\.csv, row 1: missing column\(s\) \['Answer'\]"):
        load_benchmark("cmmlu", root)


def test_answer_outside_a_to_d_names_file_and_row(tmp_path):
    root = _cmmlu(tmp_path, ROWS[1:] + ["3,q,a,b,c,d,E"])
    with pytest.raises(EvalDataError, match=r"test/agronomy\.csv, row 4: answer 'E' is not one of A, B, C, D"):
        load_benchmark("cmmlu", root)


def test_empty_subject_directory_and_missing_dev(tmp_path):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(EvalDataError, match=r"empty/test: no subject files"):
        load_benchmark("cmmlu", tmp_path / "empty")
    root = _cmmlu(tmp_path / "nodev", ROWS)
    shutil.rmtree(root / "dev")
    with pytest.raises(EvalDataError, match=r"dev/agronomy\.csv: 2-shot needs the subject's dev file"):
        load_benchmark("cmmlu", root, shots=2)
    with pytest.raises(EvalDataError, match=r"no file for subject\(s\) \['nope'\]"):
        load_benchmark("cmmlu", root, ["nope"])


def test_headerless_mmlu_row_and_jsonl_record_errors(tmp_path):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "x_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,D\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"x_test\.csv, row 2: expected 6 fields, found 5"):
        load_benchmark("mmlu", tmp_path / "mmlu")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "t.jsonl").write_text('{"question": "q", "choices": ["x", "y"], "answer": 1}\n{"question": "q"}\n')
    with pytest.raises(EvalDataError, match=r"t\.jsonl, row 2: expected \{question, choices, answer\}"):
        load_benchmark("jsonl", tmp_path / "j")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, sp_model_path):
    return save_tiny_llama(tmp_path_factory.mktemp("bpb_model"), sp_model_path, max_position_embeddings=64)


def test_bits_per_byte_equals_direct_computation(tiny_hf):
    from transformers import AutoModelForCausalLM

    docs = ["中文语言模型的评测，按字节计算比特数。", "Bits per byte compare models with different tokenizers."]
    backend = HFBackend(tiny_hf, batch_size=16)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf), dtype=torch.float32).eval()
    window = 8

    def direct(stride_one: bool) -> float:
        nll = 0.0
        for text in docs:
            full = [backend.prefix_token_id] + backend.encode(text)
            with torch.no_grad():
                if stride_one:  # every token with exactly min(position, window) tokens of context
                    for t in range(1, len(full)):
                        ctx = torch.tensor([full[max(0, t - window): t]])
                        nll -= float(torch.log_softmax(model(ctx).logits[0, -1], -1)[full[t]])
                else:  # one pass over the whole document
                    logp = torch.log_softmax(model(torch.tensor([full])).logits[0, :-1], -1)
                    nll -= float(logp.gather(-1, torch.tensor(full[1:]).unsqueeze(-1)).sum())
        return nll / math.log(2) / sum(len(t.encode("utf-8")) for t in docs)

    whole = bits_per_byte(backend, docs, max_length=64, progress_stream=None)
    assert abs(whole.bits_per_byte - direct(False)) < 1e-5
    sliding = bits_per_byte(backend, docs, stride=1, max_length=window, progress_stream=None)
    assert abs(sliding.bits_per_byte - direct(True)) < 1e-5
    assert sliding.tokens == whole.tokens and sliding.bytes == sum(len(t.encode()) for t in docs)
    strided = bits_per_byte(backend, docs, stride=3, max_length=window, progress_stream=None)
    assert strided.tokens == whole.tokens  # every token scored exactly once at any stride


def _cli(argv, capfd):
    """tools/evaluate.py's main in this process (two interpreter starts would cost more than the run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    code = tool.main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def test_cli_writes_results_and_reports_bad_input(tiny_hf, shared_data, tmp_path, capfd):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "你好，世界。"}\n{"text": ""}\nnot json\n{"text": "Hello world."}\n', encoding="utf-8")
    out = tmp_path / "res" / "results.json"
    cmd = ["--model", str(tiny_hf), "--tasks", "cmmlu,ceval,bpb",
           "--data-dir", str(shared_data / "eval"), "--subjects", "cmmlu:agronomy,ceval:accountant", "--limit", "3",
           "--shots", "1", "--corpus", str(corpus), "--output", str(out), "--log-samples"]
    code, stdout, stderr = _cli(cmd, capfd)
    assert code == 0, stderr
    results = json.loads(out.read_text(encoding="utf-8"))
    assert set(results["results"]) == {"cmmlu_agronomy", "ceval-valid_accountant", "bpb_c"}
    assert results["results"]["cmmlu_agronomy"]["n"] == 3 and "acc_norm" in results["results"]["cmmlu_agronomy"]
    assert results["groups"]["cmmlu"]["n"] == 3 and "acc_micro" in results["groups"]["ceval"]
    assert results["results"]["bpb_c"]["documents"] == 2 and results["results"]["bpb_c"]["skipped_records"] == 2  # bad JSON, empty text
    assert len(results["samples"]["cmmlu_agronomy"]) == 3
    assert "| cmmlu_agronomy |" in out.with_suffix(".md").read_text(encoding="utf-8")
    assert "questions/s" in stderr and "skipped" in stderr and "| cmmlu |" in stdout

    bad = tmp_path / "bad"
    _cmmlu(bad, ["0,q,a,b,c,d,Z"])
    code, _, stderr = _cli(cmd[:2] + ["--tasks", "cmmlu", "--data-dir", str(bad)], capfd)
    assert code == 2 and "agronomy.csv, row 2: answer 'Z'" in stderr
