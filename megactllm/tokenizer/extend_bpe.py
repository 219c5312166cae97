"""Vocabulary extension of a byte-level BPE tokenizer (tokenizer.json: Qwen2, Llama-3, GPT-2 style).

The Linly route for today's base models: Chinese words become single tokens, every old id keeps
its token, and the output is a directory AutoTokenizer loads. Two ways exist and both are here,
because the choice was measured (bench/bpe_extension.py, README section 5):

- "merges" (the default): each word's bytes become one token through a chain of new merges
  (old split t1 t2 t3 -> t1+t2, then t1t2+t3), the intermediates being new tokens too, ranked
  *before* the old merges. A merge only fires where its two tokens stand side by side, so text
  that holds none of the new words (nor a word's first characters, the intermediates) tokenizes
  exactly as before, and the pre-tokenizer and byte-level decoding are untouched. Ranked first,
  a word also wins where an old merge would join its edge to a neighbour ("的大" before "大模型").
- "merges-last": the same chains appended after the old merges, so old merges win where they
  apply: measured, a new word then becomes one token in only ~76% of its occurrences in other
  Chinese text (old merges join its edges to neighbours), against ~96% ranked first.
- "added": each word an added token, cut out of the text before pre-tokenization: always one
  token, but it cuts every string that contains it, inside longer words and across the
  pre-tokenizer's groups (" 大模型" loses the space's merge), and every text pays for the scan.

User-defined tokens (chat tokens such as <|im_start|>) are added tokens either way.

    result = extend_bpe("qwen2.5-7b/", "qwen2.5-7b-zh/", pieces=["大模型", "鲲鹏"])
    result.added  # [(id, token text, kind), ...]
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from megactllm.errors import UserError

METHODS = ("merges", "merges-last", "added")
# Files of a tokenizer directory that describe the tokenizer.json they sit beside: rewritten or
# dropped. vocab.json/merges.txt (the slow tokenizer's copy) would contradict the new vocabulary.
_STALE_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


class BPEExtensionError(UserError, ValueError):
    """A tokenizer directory or a piece that cannot be extended; the message names which."""


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other bytes
    (controls, space, ...) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_CHARS = byte_to_unicode()
_CHAR_BYTES = {c: b for b, c in _BYTE_CHARS.items()}


def to_byte_level(text: str) -> str:
    return "".join(_BYTE_CHARS[b] for b in text.encode("utf-8"))


def from_byte_level(token: str) -> bytes | None:
    """The bytes a byte-level token stands for; None for a token outside the alphabet (an added token)."""
    if any(c not in _CHAR_BYTES for c in token):
        return None
    return bytes(_CHAR_BYTES[c] for c in token)


@dataclass
class BPEExtendResult:
    output_dir: str
    method: str
    old_size: int
    new_size: int
    added: list = field(default_factory=list)  # (id, token, kind): kind word | intermediate | added | user_defined
    words: list = field(default_factory=list)

    def format(self) -> str:
        kinds = Counter(kind for _, _, kind in self.added)
        return (
            f"{self.output_dir}: {self.old_size:,} -> {self.new_size:,} ids by {self.method} "
            f"({', '.join(f'{n} {k}' for k, n in kinds.items()) or 'nothing added'})"
        )


def _read_tokenizer_json(model_dir: str) -> tuple[str, dict]:
    path = model_dir if model_dir.endswith(".json") else os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise BPEExtensionError(
            f"{model_dir} holds no tokenizer.json: a byte-level BPE extension needs a Hugging Face tokenizer "
            "directory (a SentencePiece .model is extended by giving its path instead)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BPEExtensionError(f"{path} is not a tokenizer.json: {exc}") from None
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise BPEExtensionError(f"{path}: model type {model.get('type')!r}, only byte-level BPE models can be extended here")
    if "ByteLevel" not in json.dumps(data.get("pre_tokenizer")) or model.get("byte_fallback"):
        raise BPEExtensionError(f"{path} is not byte-level (no ByteLevel pre-tokenizer); only byte-level BPE is supported")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise BPEExtensionError(f"{path}: BPE with subword prefixes/suffixes is not byte-level BPE")
    return path, data


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    # tokenizers >= 0.20 stores [a, b]; older files "a b" (byte-level tokens hold no space).
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


def _bpe(symbols: list[str], ranks: dict) -> list[str]:
    """BPE as the tokenizers library applies it: the lowest-ranked pair first, leftmost first."""
    while len(symbols) > 1:
        best = min(range(len(symbols) - 1), key=lambda i: ranks.get((symbols[i], symbols[i + 1]), float("inf")))
        if (symbols[best], symbols[best + 1]) not in ranks:
            break
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
    return symbols


class _Piece(str):
    """A piece with where it came from (a file's line), for errors."""
    where: str = ""


def pieces_from_file(path: str) -> list[str]:
    """One piece per line; blank lines and duplicates are skipped. Errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise BPEExtensionError(f"pieces file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise BPEExtensionError(f"pieces file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    out = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if any(c.isspace() for c in text):
            raise BPEExtensionError(f"{path}:{number}: {text!r} holds whitespace; give one word per line")
        piece = _Piece(text)
        piece.where = f"{path}:{number}: "
        out.append(piece)
    if not out:
        raise BPEExtensionError(f"pieces file {path} holds no pieces (one word per line)")
    return out


def _check_pieces(tokenizer, pieces: Sequence[str]) -> list[str]:
    """Each piece once; refuses a piece already in the vocabulary or one the pre-tokenizer splits."""
    words, seen = [], set()
    for piece in pieces:
        where = getattr(piece, "where", "")
        text = str(piece)
        if not text or text in seen:
            continue
        seen.add(text)
        normalized = tokenizer.normalizer.normalize_str(text) if tokenizer.normalizer else text
        if normalized != text:
            raise BPEExtensionError(f"{where}piece {text!r} is not in the tokenizer's normal form ({normalized!r}); give that")
        if tokenizer.token_to_id(to_byte_level(text)) is not None or tokenizer.token_to_id(text) is not None:
            raise BPEExtensionError(f"{where}piece {text!r} is already in the vocabulary (one token); leave it out")
        groups = tokenizer.pre_tokenizer.pre_tokenize_str(text) if tokenizer.pre_tokenizer else [(text, None)]
        if len(groups) != 1:
            raise BPEExtensionError(
                f"{where}piece {text!r} is cut by the pre-tokenizer into {[g for g, _ in groups]}; "
                "BPE never merges across those cuts: give the parts as separate pieces"
            )
        words.append(text)
    return words


def _add_merges(data: dict, words: Sequence[str], next_id: int, result: BPEExtendResult, first: bool) -> int:
    """Each word's chain of merges, before (first) or after the old ones; shorter words first, so
    longer words build on them."""
    model = data["model"]
    vocab = model["vocab"]
    old_merges = model["merges"]
    ranks = {pair: rank for rank, pair in enumerate(_merge_pairs(old_merges))}
    as_lists = bool(old_merges) and isinstance(old_merges[0], list)
    new_merges = []
    base_rank = -(10 ** 12) if first else len(old_merges)
    order = {w: i for i, w in enumerate(words)}
    pending = sorted(words, key=lambda w: (len(w.encode("utf-8")), order[w]))
    # Ranked first, a later word's merges can split an earlier word again (小伙子's 小+伙 fires before
    # the old 伙+伴 that 小伙伴 relied on): chain each word again from its split until all hold.
    for _ in range(8):
        for word in pending:
            symbols = _bpe(list(to_byte_level(word)), ranks)
            current = symbols[0]
            for nxt in symbols[1:]:
                merged = current + nxt
                ranks[(current, nxt)] = base_rank + len(new_merges)
                new_merges.append([current, nxt] if as_lists else f"{current} {nxt}")
                if merged not in vocab:
                    vocab[merged] = next_id
                    kind = "word" if merged == to_byte_level(word) else "intermediate"
                    result.added.append((next_id, merged, kind))
                    next_id += 1
                current = merged
        pending = [w for w in pending if len(_bpe(list(to_byte_level(w)), ranks)) > 1]
        if not pending:
            break
    model["merges"] = new_merges + old_merges if first else old_merges + new_merges
    return next_id


def _specials_into_model_vocab(data: dict) -> None:
    """Old added tokens also get their ids in the BPE vocabulary (as GPT-2's tokenizer.json does).

    On load, tokenizers numbers an added token that the model lacks after the model's vocabulary,
    ignoring its stored id: with new BPE tokens after Qwen's <|endoftext|>.. the two would collide.
    No merge leads to these entries, so BPE never produces them from text.
    """
    vocab = data["model"]["vocab"]
    taken = set(vocab.values())
    for token in data.get("added_tokens", []):
        if token["content"] not in vocab and token["id"] not in taken:
            vocab[token["content"]] = token["id"]


def _added_token(content: str, token_id: int, special: bool) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def extend_bpe(
    model_dir: str,
    output_dir: str,
    pieces: Iterable[str] = (),
    user_defined: Iterable[str] = (),
    method: str = "merges",
) -> BPEExtendResult:
    """Writes output_dir: model_dir's tokenizer files with `pieces` (words) and `user_defined`
    (special tokens matched in text) appended after every old id."""
    from tokenizers import Tokenizer

    if method not in METHODS:
        raise BPEExtensionError(f"extension method {method!r}: choose one of {METHODS}")
    if os.path.abspath(output_dir) == os.path.abspath(model_dir):
        raise BPEExtensionError("the extended tokenizer must not overwrite the original (checkpoints refer to its ids)")
    path, data = _read_tokenizer_json(model_dir)
    old = Tokenizer.from_file(path)
    old_size = old.get_vocab_size(with_added_tokens=True)
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    if sorted(set(ids)) != list(range(old_size)):
        raise BPEExtensionError(f"{path}: ids are not 0..{old_size - 1} without gaps; cannot append after them")
    words = _check_pieces(old, list(pieces))
    result = BPEExtendResult(output_dir, method, old_size, old_size, words=words)
    next_id = old_size
    added_tokens = data.setdefault("added_tokens", [])
    for token in dict.fromkeys(t.strip() for t in user_defined if t.strip()):
        if old.token_to_id(token) is not None:
            continue  # Qwen's tokenizers ship the chat tokens already
        added_tokens.append(_added_token(token, next_id, special=True))
        result.added.append((next_id, token, "user_defined"))
        next_id += 1
    if method in ("merges", "merges-last"):
        _specials_into_model_vocab(data)
        next_id = _add_merges(data, words, next_id, result, first=method == "merges")
    else:
        for word in words:
            added_tokens.append(_added_token(word, next_id, special=False))
            result.added.append((next_id, word, "added"))
            next_id += 1
    result.new_size = next_id
    _write_directory(model_dir, output_dir, data, [t for t in added_tokens if t["id"] >= old_size])
    _check_written(output_dir, result, old_size)
    return result


def _write_directory(model_dir: str, output_dir: str, data: dict, new_added: list) -> None:
    os.makedirs(output_dir, exist_ok=True)
    source = model_dir if os.path.isdir(model_dir) else os.path.dirname(model_dir)
    for name in os.listdir(source):
        src = os.path.join(source, name)
        if os.path.isfile(src) and name not in _STALE_FILES and not name.endswith((".safetensors", ".bin", ".pt")):
            shutil.copy(src, os.path.join(output_dir, name))
    tmp = os.path.join(output_dir, ".tokenizer.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
    os.replace(tmp, os.path.join(output_dir, "tokenizer.json"))
    config_path = os.path.join(source, "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    # transformers reads added tokens from here before tokenizer.json: list the new ones too.
    if "added_tokens_decoder" in config:
        for token in new_added:
            config["added_tokens_decoder"][str(token["id"])] = {k: v for k, v in token.items() if k != "id"}
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    with open(os.path.join(output_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)


def _check_written(output_dir: str, result: BPEExtendResult, old_size: int) -> None:
    """The written tokenizer loads, has the ids promised, and each new word encodes alone as one token."""
    from tokenizers import Tokenizer

    new = Tokenizer.from_file(os.path.join(output_dir, "tokenizer.json"))
    if new.get_vocab_size(with_added_tokens=True) != result.new_size:
        raise RuntimeError(f"{output_dir}: {new.get_vocab_size(with_added_tokens=True)} ids written, {result.new_size} planned")
    for word in result.words:
        ids = new.encode(word, add_special_tokens=False).ids
        if len(ids) != 1 or ids[0] < old_size:
            raise RuntimeError(f"{output_dir}: new word {word!r} encodes as {ids}, not as one new token")


def frequent_new_words(texts: Iterable[str], tokenizer_json: str, top_k: int = 1000, min_count: int = 5) -> list[str]:
    """The corpus's most frequent Chinese words (jieba, as for SentencePiece) that the tokenizer does
    not hold as one token."""
    from tokenizers import Tokenizer

    from .extend import frequent_unsplit_words

    # A missing or unusable tokenizer.json is a BPEExtensionError naming it, not tokenizers' bare Exception.
    named = os.path.basename(tokenizer_json) == "tokenizer.json"
    _read_tokenizer_json((os.path.dirname(tokenizer_json) or ".") if named else tokenizer_json)
    tok = Tokenizer.from_file(tokenizer_json)

    class _ByteLevelView:  # frequent_unsplit_words asks token_to_id of the word's text
        @staticmethod
        def token_to_id(word):
            return tok.token_to_id(to_byte_level(word))

    return frequent_unsplit_words(texts, _ByteLevelView, top_k, min_count)
