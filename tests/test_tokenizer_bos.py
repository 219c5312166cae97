"""What the tokenizer copy says about BOS (megactllm/tokenizer/bos.py): read beside a SentencePiece
model, written by the import; bad files are named errors, not a silent default."""
import json

import pytest

from megactllm.tokenizer.bos import TokenizerConfigError, record_sentencepiece_bos, sentencepiece_adds_bos


def test_no_config_means_no_bos(tmp_path):
    assert sentencepiece_adds_bos(None) is False
    assert sentencepiece_adds_bos(tmp_path / "tokenizer.model") is False  # megactllm's own: nothing beside it


def test_the_record_keeps_the_originals_other_settings(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"legacy": False, "bos_token": "<s>"}), encoding="utf-8")
    record_sentencepiece_bos(tmp_path, True)
    assert sentencepiece_adds_bos(tmp_path / "tokenizer.model") is True
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config == {"legacy": False, "bos_token": "<s>", "add_bos_token": True}
    record_sentencepiece_bos(tmp_path, False)
    assert sentencepiece_adds_bos(tmp_path / "tokenizer.model") is False


@pytest.mark.parametrize("text,message", [('{"add_bos_token": "yes"}', "add_bos_token is 'yes'"),
                                          ('{"add_bos_token": tru', "unreadable"),
                                          ('["add_bos_token"]', "expected a JSON object")])
def test_a_bad_config_is_named(tmp_path, text, message):
    (tmp_path / "tokenizer_config.json").write_text(text, encoding="utf-8")
    with pytest.raises(TokenizerConfigError, match=message) as err:
        sentencepiece_adds_bos(tmp_path / "tokenizer.model")
    assert str(tmp_path / "tokenizer_config.json") in str(err.value)
