"""Real tokenizers, not ones trained in a test: Qwen2's and Llama-3's byte-level BPE vocabularies
rebuilt from the vocab-only GGUFs that llama.cpp ships in its source (vendored by llama-cpp-python's
source package, which CI builds from source), with llama.cpp's reference tokenizations beside them.

The source package is found, in this order: $MEGACTLLM_LLAMA_CPP_SDIST (a path to the .tar.gz),
the files already extracted into $MEGACTLLM_TEST_CACHE (default ~/.cache/megactllm-tests), pip's
HTTP cache, or `pip download` (once; the extracted files are kept). Without any, the tests skip.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import pytest

LLAMA_CPP_PYTHON = "0.3.36"  # setup.py's serve extra pins the same version
VOCABS = ("qwen2", "llama-bpe")
MEMBER = "llama_cpp_python-{v}/vendor/llama.cpp/models/ggml-vocab-{name}.gguf{suffix}"
SUFFIXES = ("", ".inp", ".out")

# The split regexes of Qwen2's and Llama-3's tokenizer.json (their pre_tokenizer's Split).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")

def cache_dir() -> Path:
    return Path(os.environ.get("MEGACTLLM_TEST_CACHE") or Path.home() / ".cache" / "megactllm-tests") / \
        f"llama-cpp-vocab-{LLAMA_CPP_PYTHON}"


def _is_sdist(path: Path) -> bool:
    try:
        with gzip.open(path) as f:
            head = f.read(512)
    except (OSError, EOFError):
        return False
    return head[:100].rstrip(b"\0").decode("utf-8", "replace").startswith(f"llama_cpp_python-{LLAMA_CPP_PYTHON}/")


def _in_pip_cache() -> Optional[Path]:
    """The source package as pip's HTTP cache holds it (a body file), if pip fetched it here."""
    roots = [Path(os.environ["PIP_CACHE_DIR"])] if os.environ.get("PIP_CACHE_DIR") else []
    roots.append(Path.home() / ".cache" / "pip")
    for root in roots:
        for sub in ("http-v2", "http"):
            base = root / sub
            if not base.is_dir():
                continue
            for path in base.rglob("*"):
                if path.is_file() and 60e6 < path.stat().st_size < 120e6 and _is_sdist(path):
                    return path
    return None


def _download(into: Path) -> Optional[Path]:
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                           "-d", str(into), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
                          capture_output=True, text=True, timeout=900)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    return found[0] if done.returncode == 0 and found else None


def _extract(sdist: Path, out: Path) -> None:
    wanted = {MEMBER.format(v=LLAMA_CPP_PYTHON, name=n, suffix=s): f"ggml-vocab-{n}.gguf{s}"
              for n in VOCABS for s in SUFFIXES}
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            if member.name in wanted and member.isfile():
                target = out / wanted.pop(member.name)
                tmp = target.with_suffix(target.suffix + ".tmp")
                tmp.write_bytes(tar.extractfile(member).read())
                tmp.replace(target)
    if wanted:
        raise RuntimeError(f"{sdist} lacks {sorted(wanted)}")


def vocab_files() -> Path:
    """The directory holding ggml-vocab-{qwen2,llama-bpe}.gguf with their .inp/.out; skips without."""
    out = cache_dir()
    if all((out / f"ggml-vocab-{n}.gguf{s}").is_file() for n in VOCABS for s in SUFFIXES):
        return out
    sdist = Path(os.environ["MEGACTLLM_LLAMA_CPP_SDIST"]) if os.environ.get("MEGACTLLM_LLAMA_CPP_SDIST") else None
    sdist = sdist or _in_pip_cache()
    with tempfile.TemporaryDirectory(prefix="megactllm-sdist-") as tmp:
        sdist = sdist or _download(Path(tmp))
        if sdist is None or not sdist.is_file():
            pytest.skip(f"llama-cpp-python {LLAMA_CPP_PYTHON}'s source package is not here and pip could not fetch it "
                        "(set MEGACTLLM_LLAMA_CPP_SDIST)")
        _extract(sdist, out)
    return out


def reference_tokenizations(files: Path, name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test-tokenizer-0 cases: (text, the original tokenizer's ids)."""
    texts = (files / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    lines = (files / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")[: len(texts)]
    assert len(texts) == len(lines)
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines)]


def build_tokenizer_dir(files: Path, name: str, out: Path, config: Optional[dict] = "default") -> Path:
    """The original tokenizer.json (and tokenizer_config.json as the model ships it; none where
    config is None) from the GGUF's tokens, token types and merges. Added tokens are the GGUF's
    control (special) and user-defined ones; llama.cpp's [PAD...] fillers of Qwen's padded rows are
    not the tokenizer's."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    reader = GGUFReader(str(files / f"ggml-vocab-{name}.gguf"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    normal = [t for t, kind in zip(tokens, types) if kind == 1]
    added = [(t, kind == 3) for t, kind in zip(tokens[len(normal):], types[len(normal):])
             if not (t.startswith("[PAD") and t.endswith("]"))]
    assert all(kind == 1 for kind in types[: len(normal)]), "added tokens must follow the BPE vocabulary"
    llama3 = name == "llama-bpe"
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(normal)}, merges, ignore_merges=llama3))
    tok.normalizer = None if llama3 else normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT if llama3 else QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in added])
    if llama3:
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    for token, _ in added:
        assert tok.token_to_id(token) == tokens.index(token)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    if config == "default":
        # As the models ship them: Qwen2/2.5 name no BOS (null); Llama-3 names its own.
        config = ({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "model_max_length": 131072,
                   "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True} if llama3 else
                  {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None,
                   "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer", "errors": "replace",
                   "add_prefix_space": False, "clean_up_tokenization_spaces": False})
        if "tokenizer.chat_template" in reader.fields:
            config["chat_template"] = reader.fields["tokenizer.chat_template"].contents()
    if config is not None:
        (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    return out
