"""Shared test fixtures: where the real data lives, and skipping cleanly when it is absent."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEGACTLLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real corpus, SFT/DPO sets, CMMLU, tokenizers); tests skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data directory {SHARED_DATA} is absent (set MEGACTLLM_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sp_model_path(shared_data) -> Path:
    """The MAP-NEO SentencePiece model (64,000 pieces), the default real tokenizer for tests."""
    path = shared_data / "tokenizers" / "map_neo_sp.model"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def qwen_style_bpe_dir(shared_data, tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer directory in Qwen2's shape, trained on the real corpus (once a session)."""
    from bpe_fixtures import build_qwen_style_bpe

    return build_qwen_style_bpe(shared_data, tmp_path_factory.mktemp("bpe") / "base", vocab_size=6000, max_lines=900)


_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _launch_variables_restored():
    """A test that runs a stage in-process must not hand its rendezvous port to the tests after it."""
    before = {k: os.environ.get(k) for k in _LAUNCH_VARIABLES}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
