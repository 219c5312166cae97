"""One blend parser for pretraining, SFT and DPO: the same syntax, the same checks, errors naming
the field and the entry."""
import pytest
from train_utils import write_corpus

from megactllm.config import load_config
from megactllm.data.blend import Blend, BlendError, check_files, parse_blend, require_blend
from megactllm.data.chat.sft_dataset import split_blends
from megactllm.data.pretrain.indexed import DatasetFormatError


def test_one_type_for_every_stage():
    pretrain = parse_blend(["4", "zh", "1", "en"], "data.data_path")
    chat = require_blend("4 zh 1 en", "data.train_data_path")  # one string, as pretraining always took
    assert pretrain == chat == Blend(("zh", "en"), (4.0, 1.0))
    assert parse_blend(["4 zh", "1 en"]) == pretrain
    assert pretrain.as_megatron() == (["zh", "en"], [4.0, 1.0])


@pytest.mark.parametrize("spec, message", [
    (["0.5"], "odd count"),                                   # a lone weight is no prefix
    (["nan", "zh", "1", "en"], "the weight of 'zh' is 'nan'"),  # float() reads it, a blend cannot use it
    (["inf", "zh"], "the weight of 'zh' is 'inf'"),
    (["1", "zh", "-2", "en"], r"weights must be >= 0 .*'en' has -2.0"),
    (["0", "zh", "0", "en"], "positive sum"),
    (["zh", "1", "en", "2"], "expected a weight before prefix '1'"),
    (["1", "zh", "2", "3"], "got the number '3'"),
    (["zh", "1", "en"], "odd count"),
])
def test_bad_entries_are_named(spec, message):
    with pytest.raises(BlendError, match=message) as info:
        parse_blend(spec, "data.valid_data_path")
    assert str(info.value).startswith("data.valid_data_path: ")


def test_empty_is_none_or_a_named_error():
    assert parse_blend([]) is None and parse_blend(None) is None and parse_blend(" ") is None
    with pytest.raises(BlendError, match="data.data_path is empty"):
        require_blend([" "], "data.data_path")


def test_missing_files_name_the_field_and_the_entry(tmp_path):
    real = write_corpus(str(tmp_path / "real"), seed=1, documents=4)
    blend = parse_blend(["1", real, "1", str(tmp_path / "gone")])
    with pytest.raises(DatasetFormatError, match=rf"data.data_path: dataset prefix '{tmp_path}/gone' has no"):
        check_files(blend, "data.data_path")
    check_files(parse_blend([real]), "data.data_path")
    # The chat side names the field too (it used to fail deep inside the reader).
    cfg = load_config(None, [f"data.train_data_path=[{real}, {tmp_path}/absent_sft]"])
    with pytest.raises(BlendError, match=r"data.train_data_path: dataset prefix .*absent_sft"):
        split_blends(cfg.data)
