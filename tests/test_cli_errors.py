"""`megactllm evaluate` and `megactllm train-tokenizer` keep the project's error rule: a user's
mistake (a task, flag, data file or tokenizer file that cannot work) is one `error:` line naming
the file or record, exit code 2; a bug (any other exception, ValueError included) keeps its
traceback instead of being dressed up as the user's mistake."""
import pytest
from eval_testing import save_tiny_llama

from megactllm.eval.cli import main as evaluate_main
from megactllm.tokenizer.cli import main as tokenizer_main

CSV_HEADER = ",Question,A,B,C,D,Answer\n"


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert str(needle) in lines[0], (needle, err)
    assert "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, sp_model_path):
    return save_tiny_llama(tmp_path_factory.mktemp("cli_errors") / "hf", sp_model_path, max_position_embeddings=64)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "你好世界，这是一个测试。hello world 123"}\n{"text": "今天天气很好，我们去公园散步吧。"}\n',
                    encoding="utf-8")
    return path


def _not_utf8(path):
    path.write_bytes(b'{"question": "\xff\xfe"}\n')
    return path


# ----------------------------------------------------------------------------------------------- evaluate
def test_evaluate_option_mistakes_are_one_line_before_the_model_loads(tmp_path, capsys):
    model = tmp_path / "not_loaded"  # never read: the options are checked first
    model.mkdir()
    cases = [
        (["--tasks", "cmmlu,nope"], "unknown task(s) ['nope']"),
        (["--tasks", "cmmlu"], "task cmmlu needs --data-dir"),
        (["--tasks", "bpb"], "task bpb needs --corpus"),
        (["--tasks", "math"], "task math needs --math-file"),
        (["--tasks", "gen", "--questions-file", str(tmp_path), "--judge-url", "http://127.0.0.1:1/v1"],
         "--judge-url and --judge-model go together"),
        (["--tasks", "cmmlu", "--batch-size", "0"], "argument --batch-size: must be 1 or more, got 0"),
        (["--tasks", "cmmlu", "--all-checkpoints"], f"{model} holds no iter_* checkpoints"),
    ]
    for args, expected in cases:
        assert evaluate_main(["--model", str(model), *args]) == 2, args
        _one_error_line(capsys, expected)


def test_evaluate_data_mistakes_name_the_file_and_record(tiny_model, tmp_path, corpus, capsys):
    bench = tmp_path / "eval" / "cmmlu" / "test"
    bench.mkdir(parents=True)
    (bench / "agronomy.csv").write_text(CSV_HEADER + "0,问题,甲,乙,丙,丁,B\n1,问题二,甲,乙,丙,丁,E\n", encoding="utf-8")
    math_file = tmp_path / "math.jsonl"
    math_file.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "no answer"}\n', encoding="utf-8")
    base = ["--model", str(tiny_model)]
    cases = [
        (["--tasks", "ceval,cmmlu", "--data-dir", str(tmp_path / "eval")], f"{tmp_path / 'eval' / 'ceval'} does not exist"),
        (["--tasks", "cmmlu", "--data-dir", str(tmp_path / "eval"), "--shots", "7"], "shots must be 0-5"),
        (["--tasks", "cmmlu", "--data-dir", str(tmp_path / "eval")], "agronomy.csv, row 3: answer 'E' is not one of"),
        (["--tasks", "math", "--math-file", str(math_file)], f"{math_file}, row 2: expected"),
        (["--tasks", "math", "--math-file", str(_not_utf8(tmp_path / "bytes.jsonl"))], "bytes.jsonl: not UTF-8 text"),
        (["--tasks", "gen", "--questions-file", str(_not_utf8(tmp_path / "q.jsonl"))], "q.jsonl: not UTF-8 text"),
        (["--tasks", "bpb", "--corpus", str(corpus), "--stride", "65"], "stride must be in 1..max_length (64), got 65"),
        (["--tasks", "bpb", "--corpus", str(corpus), "--text-key", "body"], f"{corpus}: no non-empty document under key 'body'"),
    ]
    for args, expected in cases:
        assert evaluate_main(base + args) == 2, args
        _one_error_line(capsys, expected)


def test_evaluate_a_model_directory_transformers_cannot_load_is_one_line(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("not json", encoding="utf-8")
    assert evaluate_main(["--model", str(broken), "--tasks", "bpb", "--corpus", str(broken / "config.json")]) == 2
    _one_error_line(capsys, f"{broken}: transformers cannot load this model directory")


@pytest.mark.parametrize("error", [ValueError, FileNotFoundError, RuntimeError])
def test_evaluate_a_bug_keeps_its_traceback(error, tmp_path, monkeypatch, capsys):
    import megactllm.eval.evaluate as evaluate_module

    def broken_backend(opts):
        raise error("a bug inside evaluation")

    monkeypatch.setattr(evaluate_module, "build_backend", broken_backend)
    (tmp_path / "eval").mkdir()
    with pytest.raises(error, match="a bug inside evaluation"):
        evaluate_main(["--model", str(tmp_path), "--tasks", "cmmlu", "--data-dir", str(tmp_path / "eval")])
    assert "error:" not in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- train-tokenizer
def test_tokenizer_training_mistakes_are_one_line(tmp_path, corpus, capsys):
    prefix = ["train", "--input", str(corpus), "--model-prefix", str(tmp_path / "tok" / "t")]
    cases = [
        (["--vocab-size", "5"], "vocab_size 5 leaves no room for learned pieces"),
        (["--vocab-size", "50"], "vocab_size 50 cannot hold every character"),
        (["--character-coverage", "1.5"], "character_coverage 1.5 must be in 0.98..1.0"),
        (["--json-keys", "body"], "no text found in"),
    ]
    for args, expected in cases:
        assert tokenizer_main(prefix + args) == 2, args
        _one_error_line(capsys, expected)
    assert tokenizer_main(["train", "--input", str(tmp_path / "gone.jsonl"), "--model-prefix", str(tmp_path / "t")]) == 2
    _one_error_line(capsys, tmp_path / "gone.jsonl")


def test_tokenizer_extension_mistakes_name_the_file(tmp_path, corpus, sp_model_path, capsys):
    pieces = tmp_path / "pieces.txt"
    pieces.write_bytes("鲲鹏\n".encode("gbk"))
    no_tokenizer = tmp_path / "hf_dir"
    no_tokenizer.mkdir()
    cases = [
        (["--model", str(sp_model_path), "--pieces-file", str(pieces), "--output", str(tmp_path / "x.model")],
         f"pieces file {pieces} is not UTF-8 text"),
        (["--model", str(sp_model_path), "--pieces", "大 模型", "--output", str(tmp_path / "x.model")],
         "pieces must not contain whitespace"),
        (["--model", str(corpus), "--pieces", "鲲鹏", "--output", str(tmp_path / "x.model")],
         f"{corpus} is not a SentencePiece model"),
        (["--model", str(no_tokenizer), "--output", str(tmp_path / "out"), "--from-corpus", str(corpus)],
         f"{no_tokenizer} holds no tokenizer.json"),
        (["--model", str(no_tokenizer), "--pieces", "鲲鹏"], "--output DIR is required"),
    ]
    for args, expected in cases:
        assert tokenizer_main(["extend", *args]) == 2, args
        _one_error_line(capsys, expected)


@pytest.mark.parametrize("error", [ValueError, RuntimeError])
def test_tokenizer_training_bug_keeps_its_traceback(error, tmp_path, corpus, monkeypatch, capsys):
    import megactllm.tokenizer.train as train_module

    def broken_train(config, sentences):
        raise error("a bug inside training")

    monkeypatch.setattr(train_module, "_train", broken_train)
    with pytest.raises(error, match="a bug inside training"):
        tokenizer_main(["train", "--input", str(corpus), "--model-prefix", str(tmp_path / "t"), "--vocab-size", "300"])
    assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize("error", [ValueError, FileNotFoundError])
def test_tokenizer_extension_bug_keeps_its_traceback(error, tmp_path, sp_model_path, monkeypatch, capsys):
    import megactllm.tokenizer.extend as extend_module

    def broken_extend(*args, **kwargs):
        raise error("a bug inside extension")

    monkeypatch.setattr(extend_module, "extend_sentencepiece", broken_extend)
    with pytest.raises(error, match="a bug inside extension"):
        tokenizer_main(["extend", "--model", str(sp_model_path), "--pieces", "鲲鹏", "--output", str(tmp_path / "x.model")])
    assert "error:" not in capsys.readouterr().err
