"""SentencePiece models (.model files): the CT-LLM / MAP-NEO / LLaMA family of tokenizers."""
from __future__ import annotations

import os
from collections.abc import Sequence

import sentencepiece as spm

from .base import BOS_CANDIDATES, EOD_CANDIDATES, PAD_CANDIDATES, Tokenizer

# SentencePiece piece types the model itself marks as special (sentencepiece_model.proto).
_MARKED_TYPES = (3, 4)  # CONTROL, USER_DEFINED


class SentencePieceTokenizer(Tokenizer):
    tokenizer_type = "sentencepiece"
    # encode_batch takes UTF-8 bytes as well as str, with the same ids (SentencePiece works on UTF-8):
    # preprocess hands it the raw bytes of plain jsonl texts without decoding them.
    accepts_utf8_bytes = True

    def __init__(self, model_path: str, num_threads: int = 1) -> None:
        super().__init__(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"SentencePiece model {model_path} does not exist")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_path))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{model_path} is not a SentencePiece model: {exc}") from exc
        # One native thread per call by default: parallelism comes from preprocess workers.
        self.num_threads = num_threads
        self._vocab_size = self.sp.GetPieceSize()
        self._eod = self._special(self.sp.eos_id(), EOD_CANDIDATES)
        if self._eod is None:
            raise ValueError(
                f"{model_path} has no end-of-document piece (eos id unset and none of {EOD_CANDIDATES}); "
                "retrain or extend it with one"
            )
        self._bos = self._special(self.sp.bos_id(), BOS_CANDIDATES)
        self._pad = self._special(self.sp.pad_id(), PAD_CANDIDATES)

    def _special(self, native_id: int, candidates: Sequence[str]) -> int | None:
        """The model's own id; where it sets none, a candidate spelling only if the model marks that
        piece control or user-defined (never a normal piece spelled like a special token)."""
        if 0 <= native_id < self._vocab_size:
            return native_id
        marked = self._marked_pieces()
        return next((self.token_to_id(c) for c in candidates if c in marked), None)

    def _marked_pieces(self) -> set[str]:
        if not hasattr(self, "_marked"):
            from sentencepiece import sentencepiece_model_pb2 as model_pb2

            proto = model_pb2.ModelProto()
            proto.ParseFromString(self.sp.serialized_model_proto())
            self._marked = {p.piece for p in proto.pieces if p.type in _MARKED_TYPES}
        return self._marked

    def encode(self, text: str) -> list[int]:
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[list[int]]:
        return self.sp.Encode(list(texts), num_threads=self.num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_to_id(self, piece: str) -> int | None:
        token_id = self.sp.PieceToId(piece)
        # PieceToId answers unk_id for unknown pieces; only an exact round trip counts.
        if 0 <= token_id < self._vocab_size and self.sp.IdToPiece(token_id) == piece:
            return token_id
        return None

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < self._vocab_size:
            raise IndexError(f"id {token_id} is outside the vocabulary of {self.model_path} (size {self._vocab_size})")
        return self.sp.IdToPiece(int(token_id))

    @property
    def eod_id(self) -> int:
        return self._eod

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def pad_id(self) -> int | None:
        return self._pad
