"""Document-boundary options that would silently do nothing are refused with the reason."""
import pytest

from megactllm.config import ConfigError, load_config
from megactllm.training.stages.pretrain import check_document_resets


def test_position_reset_alone_is_refused():
    with pytest.raises(ConfigError, match="data.reset_position_ids=true: needs data.reset_attention_mask"):
        load_config(None, ["data.reset_position_ids=true"])


def test_position_and_attention_reset_together_are_accepted_on_the_local_spec():
    cfg = load_config(None, ["data.reset_position_ids=true", "data.reset_attention_mask=true"])
    check_document_resets(cfg)  # no Transformer Engine on a CPU machine: the local spec takes the mask
