"""The tokenizer a checkpoint was trained with travels inside it (tokenizer/), with the files
beside it that change what it means."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

# Beside a tokenizer.json, the files that name its eos/bos/pad tokens (a Qwen2.5-Instruct's eos is
# <|im_end|>, which tokenizer.json alone does not say): without them the copy would resolve other ids.
# transformers 5 saves the chat template as chat_template.jinja: the model's own format comes along.
# Beside a tokenizer.model, tokenizer_config.json says whether the original adds BOS (tokenizer/bos.py).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def copy_tokenizer(tokenizer_path: Path, out_dir: Path, adds_bos: Optional[bool] = None) -> None:
    """Copy the tokenizer file and its side files; `adds_bos` (an imported SentencePiece original's
    answer) is recorded in the copy's tokenizer_config.json."""
    from megactllm.tokenizer.bos import record_sentencepiece_bos

    tokenizer_path = Path(tokenizer_path)
    out_dir.mkdir(exist_ok=True)
    shutil.copy2(tokenizer_path, out_dir / tokenizer_path.name)
    if tokenizer_path.suffix in (".json", ".model"):
        for name in TOKENIZER_SIDE_FILES:
            side = tokenizer_path.with_name(name)
            if side.is_file() and side != tokenizer_path:
                shutil.copy2(side, out_dir / name)
    if adds_bos is not None:
        record_sentencepiece_bos(out_dir, adds_bos)
