"""data.tokenizer_model may be a Hugging Face tokenizer directory, as `megactllm tokenize
--tokenizer-model DIR` takes it (issue 31): the preflight accepts what the tokenizer loader accepts
and says precisely what is missing otherwise; the checkpoint copies the directory's tokenizer.json
with the files naming its special tokens."""
import json
import shutil

import pytest
from train_utils import tiny_overrides, write_corpus

from megactllm.train import main


def _run(capsys, *overrides):
    code = main(list(overrides))
    return code, capsys.readouterr().err


@pytest.fixture
def hf_dir(qwen_style_bpe_dir, tmp_path):
    out = tmp_path / "tok"
    shutil.copytree(qwen_style_bpe_dir, out)
    return out


def test_training_takes_a_tokenizer_directory_and_its_checkpoint_copies_it(hf_dir, tmp_path, capsys):
    from megactllm.tokenizer import load_tokenizer

    tok = load_tokenizer("huggingface", str(hf_dir))
    data = write_corpus(str(tmp_path / "corpus"), seed=1)
    with open(data + ".json", "w") as f:  # the synthetic ids, recorded as this tokenizer's
        json.dump({"eod_id": tok.eod_id, "vocab_size": tok.vocab_size}, f)
    overrides = tiny_overrides(data, str(tmp_path), **{"train.duration": "2 iterations", "checkpoint.save": str(tmp_path / "run"),
                                                       "checkpoint.interval": 2, "model.vocab_size": tok.vocab_size})
    code, err = _run(capsys, *overrides, "data.tokenizer_type=huggingface", f"data.tokenizer_model={hf_dir}")
    assert code == 0, err[-3000:]
    copies = sorted((tmp_path / "run").glob("iter_*/tokenizer"))
    assert copies and {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in copies[-1].iterdir()}


@pytest.mark.parametrize("case", ["empty", "sentencepiece_type", "missing"])
def test_a_tokenizer_directory_that_cannot_load_is_named_precisely(hf_dir, tmp_path, capsys, case):
    common = ["--dry-run", "model.arch=tiny", "model.seq_length=32", "train.duration=1 iterations",
              f"data.data_path=[{write_corpus(str(tmp_path / 'corpus'), seed=1)}]"]
    if case == "empty":
        (hf_dir / "tokenizer.json").unlink()
        args, expected = ["data.tokenizer_type=huggingface", f"data.tokenizer_model={hf_dir}"], \
            f"data.tokenizer_model {hf_dir} is a directory without tokenizer.json (it holds tokenizer_config.json"
    elif case == "sentencepiece_type":
        args, expected = ["data.tokenizer_type=sentencepiece", f"data.tokenizer_model={hf_dir}"], \
            "it holds tokenizer.json: set the tokenizer type to huggingface"
    else:
        args, expected = ["data.tokenizer_type=huggingface", f"data.tokenizer_model={tmp_path}/nope"], \
            f"data.tokenizer_model {tmp_path}/nope does not exist"
    code, err = _run(capsys, *common, *args)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and expected in errors[0], err[-2000:]
