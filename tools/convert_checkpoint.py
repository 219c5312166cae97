#!/usr/bin/env python
"""Convert between megactllm checkpoints and Hugging Face LLaMA directories (CPU only, streaming).

Export a checkpoint saved at any TP/PP layout (a run dir or one iter_XXXXXXX dir):
    python tools/convert_checkpoint.py export runs/ctllm-2b hf/ctllm-2b [--dtype bf16]

Import an HF model for continued pretraining (then train.pretrained_checkpoint=OUT/iter_0000000):
    python tools/convert_checkpoint.py import hf/llama-2-7b ckpt/llama2-7b --target-tp 4 --target-pp 2
With a tokenizer that extends the model's (new rows = mean of their old sub-token rows):
    python tools/convert_checkpoint.py import hf/llama-2-7b ckpt/llama2-7b-zh --tokenizer zh_ext.model
"""
import argparse
import sys


def _size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="show every third-party warning (also MEGACTLLM_VERBOSE=1)")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="megactllm checkpoint -> HF LlamaForCausalLM directory")
    e.add_argument("checkpoint", help="run directory (latest iteration) or an iter_XXXXXXX directory")
    e.add_argument("out_dir", help="HF output directory (must not exist unless --overwrite)")
    e.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights dtype (default: as saved)")
    e.add_argument("--tokenizer", help="tokenizer file (default: the copy saved in the checkpoint)")
    e.add_argument("--tokenizer-type", choices=["sentencepiece", "huggingface"])
    e.add_argument("--max-shard-size", default="5G", help="largest safetensors shard, e.g. 2G, 500M (default 5G)")
    e.add_argument("--no-chat-template", action="store_true", help="leave the chat template out")
    e.add_argument("--add-bos-token", action="store_true",
                   help="HF tokenizer prepends BOS (megactllm trains without; leave off to match training)")
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
    i.add_argument("--overwrite", action="store_true")

    args = p.parse_args(argv)
    from megactllm.output import configure_output

    configure_output(verbose=args.verbose)  # before megatron-core is imported: it warns at import
    from megactllm.convert import ConversionError, export_to_hf, import_from_hf

    try:
        if args.command == "export":
            export_to_hf(
                args.checkpoint,
                args.out_dir,
                dtype=args.dtype,
                tokenizer_file=args.tokenizer,
                tokenizer_type=args.tokenizer_type,
                max_shard_bytes=_size(args.max_shard_size),
                chat_template=None if args.no_chat_template else "default",
                add_bos_token=args.add_bos_token,
                overwrite=args.overwrite,
            )
        else:
            import_from_hf(
                args.hf_dir,
                args.out_dir,
                target_tp=args.target_tp,
                target_pp=args.target_pp,
                dtype=args.dtype,
                tokenizer_file=args.tokenizer,
                tokenizer_type=args.tokenizer_type,
                overwrite=args.overwrite,
                spec=args.spec,
            )
    except (ConversionError, ValueError, OSError) as exc:
        print(f"convert_checkpoint.py {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
