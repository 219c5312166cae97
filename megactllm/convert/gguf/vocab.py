"""A SentencePiece vocabulary as GGUF's llama ("SPM") tokenizer fields.

Every piece keeps its id, score and type (normal, unknown, control, user-defined, unused, byte:
SentencePiece and GGUF number these types alike), so llama.cpp's SPM tokenizer makes the same
merges; user-defined pieces such as <|im_start|> are matched inside text as single tokens, as
SentencePiece does. Tokens added on top of tokenizer.model (HF `added_tokens` beyond it) follow.

Whitespace: add_space_prefix follows the tokenizer's normalizer (SentencePiece's add_dummy_prefix),
so llama.cpp (llama-cli, llama-server, ollama, ...) tokenizes plain text as SentencePiece and the HF
tokenizer do. One difference is left that no llama.cpp setting removes: llama.cpp also puts the
dummy-prefix space in front of every text fragment that *follows* a special token, where
SentencePiece and our HF export (Metaspace, prepend_scheme "first") put it only at the start of the
text. A chat prompt (`<|im_start|>user\n...`) read by llama.cpp as the file says therefore gets a
"▁" after each chat token that training never saw. The file records how the model's own tokenizer
handles that (`megactllm.tokenizer.chat_space_prefix`), and megactllm's engine tokenizes chat
prompts accordingly; other tools see the plain-text behaviour, which is what the HF tokenizer does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megactllm.convert.errors import ConversionError
from megactllm.tokenizer.chat_template import IM_END, IM_START

# GGUF token types (gguf.TokenType), numbered as SentencePiece's ModelProto.SentencePiece.Type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GGUFVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: Optional[int]
    eos_id: Optional[int]
    unk_id: Optional[int]
    pad_id: Optional[int]
    eot_id: Optional[int]  # <|im_end|> where the vocabulary has the chat tokens
    dummy_prefix: bool  # SentencePiece adds "▁" before a text: llama.cpp's add_space_prefix
    added: list[str] = field(default_factory=list)
    # llama.cpp's tokenizer: "llama" (SentencePiece, scores) or "gpt2" (byte-level BPE, merges and a
    # pre-tokenizer; see bpe_vocab.py).
    model: str = "llama"
    pre: str = "default"
    merges: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def id_of(self, piece: str) -> Optional[int]:
        try:
            return self.tokens.index(piece)
        except ValueError:
            return None

    @property
    def has_chat_tokens(self) -> bool:
        return self.id_of(IM_START) is not None and self.eot_id is not None


def read_sentencepiece_vocab(model_file: str | Path, added_tokens: Optional[list[tuple[int, str, bool]]] = None) -> GGUFVocab:
    """The vocabulary of a SentencePiece .model file, plus (id, content, special) added tokens."""
    from sentencepiece import sentencepiece_model_pb2

    model_file = Path(model_file)
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except FileNotFoundError:
        raise ConversionError(f"{model_file} is missing: GGUF export needs the SentencePiece tokenizer.model") from None
    except Exception as e:  # protobuf's DecodeError and friends
        raise ConversionError(f"{model_file} is not a SentencePiece model ({e})") from None
    if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM, BPE: what llama.cpp's SPM tokenizer runs
        raise ConversionError(f"{model_file}: SentencePiece model type {proto.trainer_spec.model_type} is not supported by llama.cpp")
    if proto.normalizer_spec.precompiled_charsmap:
        raise ConversionError(
            f"{model_file} normalizes text ({proto.normalizer_spec.name}); llama.cpp does not, so its tokens would "
            "differ from training. Export a tokenizer with the identity normalizer"
        )
    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]
    added = []
    for token_id, content, special in sorted(added_tokens or []):
        if token_id < len(tokens):
            if tokens[token_id] != content:
                raise ConversionError(f"{model_file}: added token {content!r} has id {token_id}, which is {tokens[token_id]!r} there")
            continue
        if token_id != len(tokens):
            raise ConversionError(f"{model_file}: added token {content!r} has id {token_id}, leaving a gap after {len(tokens) - 1}")
        tokens.append(content)
        scores.append(0.0)
        types.append(CONTROL if special else USER_DEFINED)
        added.append(content)

    def find(piece):
        return tokens.index(piece) if piece in tokens else None

    unk = proto.trainer_spec.unk_id if proto.trainer_spec.unk_id >= 0 else None
    bos = proto.trainer_spec.bos_id if proto.trainer_spec.bos_id >= 0 else find("<s>")
    eos = proto.trainer_spec.eos_id if proto.trainer_spec.eos_id >= 0 else find("</s>")
    pad = proto.trainer_spec.pad_id if proto.trainer_spec.pad_id >= 0 else None
    eot = find(IM_END) if find(IM_START) is not None else None
    dummy = bool(proto.normalizer_spec.add_dummy_prefix)
    return GGUFVocab(tokens, scores, types, bos, eos, unk, pad, eot, dummy, added)


def pad_vocab(vocab: GGUFVocab, size: int) -> None:
    """Extend to the model's embedding rows with unused placeholder tokens (never produced by text)."""
    for i in range(len(vocab), size):
        vocab.tokens.append(f"[PAD{i}]")
        if vocab.scores:
            vocab.scores.append(-1e4)
        vocab.types.append(UNUSED)
