"""Loads an exported Hugging Face directory with transformers alone and asks it one question:
the proof that the export stands on its own (no megactllm code on the loading side)."""
from __future__ import annotations

from pathlib import Path


def ask_hf_model(hf_dir: Path, question: str, max_new_tokens: int = 24) -> dict:
    """Greedy answer to `question` through the exported chat template; architecture and size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for loading a model of a few hundred kilobytes says nothing
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    model.eval()
    if not tokenizer.chat_template:
        raise ValueError(f"{hf_dir}: the exported tokenizer has no chat template")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end,
                             pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "question": question, "answer": answer, "prompt_tokens": int(ids.shape[1])}
