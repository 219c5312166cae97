"""Fixtures shared by the SFT/DPO tests: the real tokenizer extended with the chat tokens, and
small preprocessed SFT/DPO datasets built from ../shared/data.

Import the fixtures into a test module with `from chat_fixtures import *`.
"""
from pathlib import Path

import pytest

from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.chat_template import CHAT_SPECIAL_TOKENS

__all__ = [
    "chat_sp_model", "chat_tokenizer", "dpo_batch", "dpo_prefix", "extend_with_chat_tokens", "layout_reports",
    "policy_checkpoint", "sft_batch", "sft_prefixes", "tiny_checkpoint",
]


def extend_with_chat_tokens(base_model: Path, out_model: Path) -> Path:
    """base_model plus <|im_start|>/<|im_end|> as single (user-defined) pieces, via the project's
    vocabulary extension."""
    from megactllm.tokenizer.extend import extend_sentencepiece

    extend_sentencepiece(str(base_model), user_defined=list(CHAT_SPECIAL_TOKENS), output_path=str(out_model))
    return out_model


@pytest.fixture(scope="session")
def chat_sp_model(sp_model_path, tmp_path_factory) -> Path:
    return extend_with_chat_tokens(Path(sp_model_path), tmp_path_factory.mktemp("tok") / "chat_sp.model")


@pytest.fixture(scope="session")
def chat_tokenizer(chat_sp_model):
    return load_tokenizer("sentencepiece", str(chat_sp_model))


SEQ = 64  # training positions in the tests: short rows keep the 2-core CI fast


@pytest.fixture(scope="session")
def sft_prefixes(shared_data, chat_tokenizer, tmp_path_factory):
    """{"zh": prefix, "en": prefix}: the first 40 records of each alpaca demo set, preprocessed."""
    import json

    from megactllm.data.chat.sft_preprocess import preprocess_sft

    out = tmp_path_factory.mktemp("sft")
    prefixes = {}
    for lang in ("zh", "en"):
        records = json.loads((shared_data / "sft" / f"alpaca_{lang}_demo.json").read_text(encoding="utf-8"))[:40]
        src = out / f"{lang}.json"
        src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        prefixes[lang] = str(out / f"sft_{lang}")
        preprocess_sft([str(src)], prefixes[lang], chat_tokenizer, seq_length=SEQ, language=lang)
    return prefixes


@pytest.fixture(scope="session")
def dpo_prefix(shared_data, chat_tokenizer, tmp_path_factory):
    """16 English and 16 Chinese real preference pairs, preprocessed for rows of SEQ positions."""
    import json

    from megactllm.data.chat.dpo_preprocess import preprocess_dpo

    out = tmp_path_factory.mktemp("dpo")
    records = []
    for lang in ("en", "zh"):
        records += json.loads((shared_data / "dpo" / f"dpo_{lang}_demo.json").read_text(encoding="utf-8"))[:16]
    src = out / "pairs.json"
    src.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    prefix = str(out / "dpo")
    preprocess_dpo([str(src)], prefix, chat_tokenizer, seq_length=SEQ)
    return prefix


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised tiny model (chat vocabulary), saved once, loaded at every layout."""
    from chat_parallel import save_tiny_checkpoint

    from megactllm.testing import run_distributed

    (path,) = run_distributed(save_tiny_checkpoint, 1, str(tmp_path_factory.mktemp("ckpt")), SEQ, timeout=300)
    return path


@pytest.fixture(scope="session")
def policy_checkpoint(tmp_path_factory):
    """A second tiny model (another seed): a DPO policy that differs from the reference."""
    from chat_parallel import save_tiny_checkpoint

    from megactllm.testing import run_distributed

    (path,) = run_distributed(save_tiny_checkpoint, 1, str(tmp_path_factory.mktemp("policy")), SEQ, 8, timeout=300)
    return path


@pytest.fixture(scope="session")
def sft_batch(chat_tokenizer, sft_prefixes):
    """8 SFT rows of the zh:en = 4:1 mixture."""
    from megactllm.config import load_config
    from megactllm.data.chat.sft_dataset import build_sft_datasets

    cfg = load_config(None, [f"model.seq_length={SEQ}",
                             f"data.train_data_path=['4', '{sft_prefixes['zh']}', '1', '{sft_prefixes['en']}']"])
    train = build_sft_datasets(cfg, chat_tokenizer)[0]
    return [train[i] for i in range(8)]


@pytest.fixture(scope="session")
def dpo_batch(chat_tokenizer, dpo_prefix):
    """8 real preference pairs."""
    from megactllm.config import load_config
    from megactllm.data.chat.dpo_dataset import build_dpo_datasets

    cfg = load_config(None, [f"model.seq_length={SEQ}", f"data.train_data_path=['{dpo_prefix}']"])
    train = build_dpo_datasets(cfg, chat_tokenizer)[0]
    return [train[i] for i in range(8)]


@pytest.fixture(scope="session")
def layout_reports(tiny_checkpoint, policy_checkpoint, sft_batch, dpo_batch):
    """get(tp, pp, world) -> [sft result, dpo result] per rank, one spawn per layout shared by the
    SFT and DPO tests. DPO's policy and reference differ, so its rewards are not trivially zero."""
    from chat_parallel import layout_reports as run_layout

    from megactllm.testing import run_distributed

    jobs = [("sft", tiny_checkpoint, sft_batch, 2, None), ("dpo", policy_checkpoint, dpo_batch, 2, tiny_checkpoint)]
    cache = {}

    def get(tp: int, pp: int, world: int) -> list:
        if (tp, pp, world) not in cache:
            cache[tp, pp, world] = run_distributed(run_layout, world, tp, pp, jobs, SEQ, timeout=300)
        return cache[tp, pp, world]

    return get
