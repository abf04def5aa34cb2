"""`python -m slm_jax.convert`: Hugging Face checkpoints (Llama/Llama-3.x, Mistral, Qwen2/2.5,
Qwen3, SmolLM2) <-> orbax checkpoints.

    python -m slm_jax.convert hf_to_orbax --hf_dir DIR --out OUT [--no-scan_layers]
    python -m slm_jax.convert orbax_to_hf --ckpt_dir OUT|RUN_DIR --out HF [--gin_file F]
    python -m slm_jax.convert gguf_to_hf --gguf FILE.gguf --out DIR   (needs torch, transformers)
    python -m slm_jax.convert orbax_to_gguf --ckpt_dir OUT|RUN_DIR|--hf_dir HF --out F.gguf \
        [--type q8_0] [--tokenizer PATH] [--type_like OTHER.gguf] [--chat_template tora|FILE]

The conversion itself is slm_jax/hf/. See docs/convert.md.
"""
from __future__ import annotations

import argparse
import os
import sys

from slm_jax import cli_errors, console
from slm_jax.hf.conversion import (CHECKPOINT_SUBDIR, find_model_gin, hf_to_orbax,
                                   orbax_to_hf)
from slm_jax.hf.mapping import model_config_from_gin


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m slm_jax.convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf_to_orbax", help="HF safetensors directory -> orbax checkpoint")
    a.add_argument("--hf_dir", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True,
                   help="stacked layer params (as gin/runs/*.gin train with); default on")
    a.add_argument("--param_dtype", default="float32")
    a.add_argument("--max_seq_len", type=int, default=None,
                   help="ModelConfig.max_seq_len (default: max_position_embeddings)")
    b = sub.add_parser("orbax_to_hf", help="orbax checkpoint -> HF directory (weights, config, "
                       "generation config, tokenizer)")
    b.add_argument("--ckpt_dir", required=True, help="hf_to_orbax's OUT, a train run_dir, "
                   "their checkpoints/ dir, or one step's dir")
    b.add_argument("--out", required=True)
    b.add_argument("--gin_file", action="append", default=None,
                   help="ModelConfig gin (default: model.gin/config.gin beside the checkpoints)")
    b.add_argument("--gin", action="append", default=[], help="extra binding, e.g. "
                   "ModelConfig.scan_layers=True")
    b.add_argument("--tokenizer", default=None, help="tokenizer.json, .model or a directory "
                   "of tokenizer files (default: the run's DataConfig.vocab_path, else the "
                   "source model's files)")
    b.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    b.add_argument("--max_shard_size", default="2GB")
    c = sub.add_parser("gguf_to_hf", help="GGUF file -> HF directory (dequantized fp32), "
                       "the input of hf_to_orbax")
    c.add_argument("--gguf", required=True)
    c.add_argument("--out", required=True)
    d = sub.add_parser("orbax_to_gguf", help="orbax checkpoint (or HF directory) -> GGUF file "
                       "for llama.cpp, Ollama, LM Studio (docs/convert.md)")
    source = d.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_dir", help="as orbax_to_hf takes it")
    source.add_argument("--hf_dir", help="a Hugging Face directory (e.g. orbax_to_hf's export)")
    d.add_argument("--out", required=True, help="the .gguf file to write (must not exist)")
    d.add_argument("--type", default="q8_0", help="f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0 "
                   "(norms stay F32; below q8_0 the embedding and output stay Q8_0)")
    d.add_argument("--type_like", default=None, help="take each tensor's type from this GGUF "
                   "file instead (e.g. the file the model was converted from)")
    d.add_argument("--tokenizer", default=None, help="tokenizer.json, .model or a directory "
                   "(default: the run's DataConfig.vocab_path, else the source model's files)")
    d.add_argument("--tokenizer_pre", default=None, help="llama.cpp's pre-tokenizer name, when "
                   "it cannot be read from tokenizer.json")
    d.add_argument("--chat_template", default="auto", help="'auto' (a run.job='sft' run with "
                   "the harness's turn: that turn; else the tokenizer's own), 'tora', 'none' or "
                   "a .jinja file")
    d.add_argument("--gin_file", action="append", default=None)
    d.add_argument("--gin", action="append", default=[])
    return parser


def _chat_template(choice: str, ckpt_dir: str | None) -> str | None:
    """The Jinja text to write, or None for the tokenizer's own."""
    from slm_jax.data.chat import ChatTemplate
    from slm_jax.hf import hub_files
    if choice == "auto":
        job = hub_files.run_binding(ckpt_dir, "run.job") if ckpt_dir else None
        own = hub_files.run_binding(ckpt_dir, "ChatTemplate.name") == "model" if ckpt_dir \
            else False
        return ChatTemplate().jinja() if job == "sft" and not own else None
    if choice == "tora":
        return ChatTemplate().jinja()
    if choice == "none":
        return ""
    if not os.path.isfile(choice):
        raise ValueError(f"--chat_template {choice} is neither auto, tora, none nor a file")
    with open(choice, encoding="utf-8") as f:
        return f.read()


def _orbax_to_gguf(args) -> str:
    from slm_jax.hf import gguf_export
    options = dict(type_name=args.type, tokenizer=args.tokenizer, type_like=args.type_like,
                   tokenizer_pre=args.tokenizer_pre,
                   chat_template=_chat_template(args.chat_template, args.ckpt_dir))
    if args.hf_dir:
        types = gguf_export.hf_to_gguf(args.hf_dir, args.out, **options)
    else:
        gin_files = args.gin_file or find_model_gin(args.ckpt_dir)
        types = gguf_export.orbax_to_gguf(args.ckpt_dir, args.out,
                                          model_config_from_gin(gin_files, args.gin), **options)
    counts: dict[str, int] = {}
    for name in types.values():
        counts[name] = counts.get(name, 0) + 1
    size = os.path.getsize(args.out)
    return (f"wrote {os.path.abspath(args.out)} ({size / 1e6:.1f} MB; tensors: "
            + ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) + ")")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console.setup()
    try:
        if args.command == "hf_to_orbax":
            cfg = hf_to_orbax(args.hf_dir, args.out, scan_layers=args.scan_layers,
                              param_dtype=args.param_dtype, max_seq_len=args.max_seq_len)
            out = os.path.abspath(args.out)
            tokenizer = next((f"{out}/{name}" if name.endswith(".model") else out
                              for name in ("tokenizer.json", "tokenizer.model")
                              if os.path.exists(os.path.join(out, name))), None)
            print(f"wrote {os.path.join(out, CHECKPOINT_SUBDIR)} ({cfg.n_layers} layers) and "
                  f"{os.path.join(out, 'model.gin')}; use --gin_file={out}/model.gin "
                  f"--gin.train.init_checkpoint={out}"
                  + (f" --gin.DataConfig.vocab_path={tokenizer}" if tokenizer else ""))
        elif args.command == "gguf_to_hf":
            from slm_jax.hf.gguf import gguf_to_hf
            print(f"wrote {gguf_to_hf(args.gguf, args.out)}; next: python -m slm_jax.convert "
                  f"hf_to_orbax --hf_dir {args.out} --out OUT")
        elif args.command == "orbax_to_gguf":
            print(_orbax_to_gguf(args))
        else:
            gin_files = args.gin_file or find_model_gin(args.ckpt_dir)
            cfg = model_config_from_gin(gin_files, args.gin)
            orbax_to_hf(args.ckpt_dir, args.out, cfg, dtype=args.dtype,
                        max_shard_size=args.max_shard_size, tokenizer=args.tokenizer)
            print(f"wrote {os.path.abspath(args.out)} ({args.dtype})")
    except (ValueError, OSError) as e:
        return cli_errors.report("slm_jax.convert", e)
    return 0


if __name__ == "__main__":
    from slm_jax import console
    console.filter_native_stderr()
    sys.exit(main())
