"""The conversion commands: convert (megactllm <-> Hugging Face) and export-gguf
(`megactllm <command>`, or `python tools/{convert_checkpoint,export_gguf}.py`, the same mains)."""
from __future__ import annotations

import argparse

from megactllm.common.command import CommandParser, entry_point, need_path, user_errors

CONVERT = """Convert between megactllm checkpoints and Hugging Face LLaMA directories (CPU only, streaming).

Export a checkpoint saved at any TP/PP layout (a run dir or one iter_XXXXXXX dir), a layer at a
time into safetensors shards of --max-shard-size; a killed export rerun continues:
    megactllm convert export runs/ctllm-2b hf/ctllm-2b [--dtype bf16] [--workers 4]

Import an HF model for continued pretraining (then checkpoint.pretrained=OUT/iter_0000000);
it streams a layer at a time (memory about one layer per worker), and a killed import rerun with
the same arguments continues from the layers already written:
    megactllm convert import hf/llama-2-7b ckpt/llama2-7b --target-tp 4 --target-pp 2 --workers 4
With a tokenizer that extends the model's (new rows = mean of their old sub-token rows):
    megactllm convert import hf/llama-2-7b ckpt/llama2-7b-zh --tokenizer zh_ext.model
"""

GGUF = """Export a megactllm checkpoint (any TP/PP layout) or an HF LLaMA directory to one GGUF file for
llama.cpp, ollama and friends. Float types are written directly; q8_0, q4_0 and q4_k_m are made
from the float file by llama.cpp's own quantizer (llama-cpp-python).

    megactllm export-gguf runs/ctllm-2b ctllm-2b-q4_k_m.gguf --outtype q4_k_m
    megactllm export-gguf hf/ctllm-2b ctllm-2b-f16.gguf --outtype f16
"""


def parse_size(text: str) -> int:
    """'5G', '500M', '2GB', '1024' -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().rstrip("B")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (e.g. 2G, 500M)") from None


def _parser(prog) -> CommandParser:
    p = CommandParser(prog=prog, description=CONVERT)
    p.add_argument("--verbose", action="store_true", help="show every third-party warning (also MEGACTLLM_VERBOSE=1)")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="megactllm checkpoint -> HF LlamaForCausalLM directory")
    e.add_argument("checkpoint", help="run directory (latest iteration) or an iter_XXXXXXX directory")
    e.add_argument("out_dir", help="HF output directory (must not exist unless --overwrite)")
    e.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights dtype (default: as saved)")
    e.add_argument("--tokenizer", help="tokenizer file (default: the copy saved in the checkpoint)")
    e.add_argument("--tokenizer-type", choices=["sentencepiece", "huggingface"])
    e.add_argument("--max-shard-size", default="5G", type=parse_size,
                   help="largest safetensors shard, e.g. 2G, 500M (default 5G)")
    e.add_argument("--no-chat-template", action="store_true", help="leave the chat template out")
    e.add_argument("--workers", type=int, default=1,
                   help="processes writing layers in parallel (default 1); memory grows by about one layer each")
    e.add_argument("--add-bos-token", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the HF tokenizer prepends BOS (default: as the checkpoint's tokenizer copy says: "
                        "an imported LLaMA-2/Mistral's original does, megactllm's own tokenizers do not)")
    e.add_argument("--overwrite", action="store_true")

    i = sub.add_parser("import", help="HF LLaMA directory -> megactllm checkpoint for continued pretraining")
    i.add_argument("hf_dir", help="HF directory with config.json and safetensors weights")
    i.add_argument("out_dir", help="megactllm run directory to create")
    i.add_argument("--target-tp", type=int, default=1, help="tensor parallel size you will train at (checked)")
    i.add_argument("--target-pp", type=int, default=1, help="pipeline parallel size you will train at (checked)")
    i.add_argument("--spec", choices=["local", "te"], default="local",
                   help="layer spec to build while importing; either spec's checkpoint loads into either (te needs TE + GPU)")
    i.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights dtype (default: as in the HF files)")
    i.add_argument("--tokenizer", help="tokenizer to train with; a larger one that extends the model's own "
                                       "adds vocabulary rows (default: the HF directory's)")
    i.add_argument("--tokenizer-type", choices=["sentencepiece", "huggingface"])
    i.add_argument("--workers", type=int, default=1,
                   help="processes converting layers in parallel (default 1); memory grows by about one layer each")
    i.add_argument("--overwrite", action="store_true")
    return p


@entry_point
def convert_main(argv=None, prog=None) -> int:
    args = _parser(prog).parse_args(argv)
    from megactllm.output import configure_output

    configure_output(verbose=args.verbose)  # before megatron-core is imported: it warns at import
    if args.tokenizer:
        need_path(args.tokenizer, "--tokenizer")
    from megactllm.convert import export_to_hf, import_from_hf

    with user_errors(ValueError, OSError):
        if args.command == "export":
            export_to_hf(
                need_path(args.checkpoint, "checkpoint", "dir"), args.out_dir, dtype=args.dtype,
                tokenizer_file=args.tokenizer, tokenizer_type=args.tokenizer_type,
                max_shard_bytes=args.max_shard_size, chat_template=None if args.no_chat_template else "default",
                add_bos_token=args.add_bos_token, overwrite=args.overwrite, workers=args.workers,
            )
        else:
            import_from_hf(
                need_path(args.hf_dir, "hf_dir", "dir"), args.out_dir, target_tp=args.target_tp,
                target_pp=args.target_pp, dtype=args.dtype, tokenizer_file=args.tokenizer,
                tokenizer_type=args.tokenizer_type, overwrite=args.overwrite, spec=args.spec, workers=args.workers,
            )
    return 0


@entry_point
def export_gguf_main(argv=None, prog=None) -> int:
    from megactllm.convert.gguf import OUTTYPES, export_gguf

    p = CommandParser(prog=prog, description=GGUF)
    p.add_argument("src", help="megactllm checkpoint (run or iter_XXXXXXX dir) or HF LLaMA directory")
    p.add_argument("out", help="output .gguf file (written atomically)")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16")
    p.add_argument("--tokenizer", help="SentencePiece tokenizer.model (default: the checkpoint's / the directory's)")
    p.add_argument("--threads", type=int, default=0, help="quantizer threads (default: all cores)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    need_path(args.src, "src", "dir")
    if args.tokenizer:
        need_path(args.tokenizer, "--tokenizer", "file")
    result = export_gguf(args.src, args.out, args.outtype, args.tokenizer, args.overwrite, args.threads)
    print(result.path)
    return 0
