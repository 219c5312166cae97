"""README's tokenize path on the shipped sample corpus: needs no ../shared/data."""
import json
import subprocess
import sys
from pathlib import Path

from megatron.core.datasets.indexed_dataset import IndexedDataset

from megactllm.data.pretrain.preprocess import PreprocessConfig, preprocess
from megactllm.tokenizer import load_tokenizer
from megactllm.tokenizer.train import TokenizerTrainingSettings, train_sentencepiece

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "data" / "sample_corpus.jsonl"


def test_sample_corpus_is_what_its_script_writes(tmp_path):
    sys.path.insert(0, str(SAMPLE.parent))
    try:
        import make_sample_corpus
    finally:
        sys.path.pop(0)
    docs = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert docs == make_sample_corpus.make_documents()
    assert 150 <= len(docs) <= 400
    zh = sum(d["lang"] == "zh" for d in docs)
    assert zh > len(docs) // 2 and zh < len(docs)


def test_train_preprocess_inspect_on_the_sample(tmp_path):
    model = train_sentencepiece(TokenizerTrainingSettings(input=[str(SAMPLE)], model_prefix=str(tmp_path / "tok" / "sample"),
                                            vocab_size=1200, num_threads=1))
    tok = load_tokenizer("sentencepiece", model)
    assert tok.vocab_size == 1200 and tok.eod_id == 2
    summary = preprocess(PreprocessConfig(input=[str(SAMPLE)], output_prefix=str(tmp_path / "data" / "sample"),
                                          tokenizer_type="sentencepiece", tokenizer_model=model, append_eod=True))
    prefix = str(tmp_path / "data" / "sample_text_document")
    assert summary.outputs == [prefix] and summary.documents == 300 and not summary.skipped
    ds = IndexedDataset(prefix)
    first = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])["text"]
    assert ds[0].tolist() == tok.encode(first) + [tok.eod_id]
    out = subprocess.run([sys.executable, str(REPO / "tools" / "inspect_dataset.py"), prefix, "--samples", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "documents 300" in out.stdout
