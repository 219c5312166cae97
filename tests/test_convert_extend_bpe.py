"""Import with an extended byte-level BPE tokenizer: old rows bit-identical, new rows the mean of
their old sub-token rows (embedding and output layer, tied or not), padding rows used before growing."""
import json

import pytest
import torch
from bpe_fixtures import corpus_lines
from convert_testing import read_hf_weights
from family_testing import tiny_hf_model

from megactllm.convert import export_to_hf, import_from_hf
from megactllm.tokenizer.extend_bpe import extend_bpe, frequent_new_words, to_byte_level
from megactllm.tokenizer.vocab_fit import ROW_MULTIPLE

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def _hf_dir(path, family, rows, tokenizer_dir):
    tiny_hf_model(family, rows, **SMALL).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((tokenizer_dir / name).read_bytes())
    return path


@pytest.mark.parametrize("family,padding,top_k", [
    ("qwen2", 37, 20),    # tied, padded: the new ids fit in the padding rows
    ("qwen2", 37, 120),   # tied, padded: more new ids than padding rows, grows to a multiple of 128
    ("mistral", 0, 60),   # untied, unpadded: grows to exactly the new ids
])
def test_new_rows_are_the_mean_of_their_old_subtokens(tmp_path, qwen_style_bpe_dir, shared_data, family, padding, top_k):
    from tokenizers import Tokenizer

    old = Tokenizer.from_file(str(qwen_style_bpe_dir / "tokenizer.json"))
    old_ids = old.get_vocab_size(with_added_tokens=True)
    source = _hf_dir(tmp_path / "hf_in", family, old_ids + padding, qwen_style_bpe_dir)
    words = frequent_new_words(corpus_lines(shared_data, "heldout")[:600], str(qwen_style_bpe_dir / "tokenizer.json"), top_k)
    result = extend_bpe(str(qwen_style_bpe_dir), str(tmp_path / "tok"), pieces=words, user_defined=["<tool_call>"])
    new_ids = result.new_size
    imported = import_from_hf(source, tmp_path / "ckpt", tokenizer_file=tmp_path / "tok" / "tokenizer.json",
                              progress_stream=None)
    rows = old_ids + padding if new_ids <= old_ids + padding else (
        -(-new_ids // ROW_MULTIPLE) * ROW_MULTIPLE if padding else new_ids)
    assert imported.model_config.vocab_size == rows
    export_to_hf(imported.checkpoint, tmp_path / "hf_out", progress_stream=None)
    assert json.loads((tmp_path / "hf_out" / "config.json").read_text())["vocab_size"] == rows
    before, after = read_hf_weights(source), read_hf_weights(tmp_path / "hf_out")
    names = ["model.embed_tokens.weight"] + (["lm_head.weight"] if "lm_head.weight" in before else [])
    assert family == "qwen2" or len(names) == 2
    for name in names:
        assert after[name].shape[0] == rows
        assert torch.equal(after[name][:old_ids], before[name][:old_ids])
        for word in words:  # the test's own view of a word's sub-tokens: the old tokenizer on its text
            sub = old.encode(word, add_special_tokens=False).ids
            token_id = result_id(result, word)
            assert torch.equal(after[name][token_id], before[name][sub].float().mean(dim=0).to(before[name].dtype)), word
        tool = old.encode("<tool_call>", add_special_tokens=False).ids
        assert torch.equal(after[name][old_ids], before[name][tool].float().mean(dim=0).to(before[name].dtype))
        if new_ids <= old_ids + padding:  # unused padding rows kept as they were
            assert torch.equal(after[name][new_ids:], before[name][new_ids:])
    exported = Tokenizer.from_file(str(tmp_path / "hf_out" / "tokenizer.json"))
    assert exported.encode(words[0] + words[1], add_special_tokens=False).ids == [result_id(result, w) for w in words[:2]]


def result_id(result, word):
    return next(i for i, token, _ in result.added if token == to_byte_level(word))
