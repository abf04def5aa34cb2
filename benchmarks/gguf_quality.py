"""The quantization table of docs/convert.md: per GGUF type, file size, held-out perplexity
through the project's scoring, and its change against F32; plus the size of each type for the
1.1B and 7B models (from the size formula, checked against the Rho-Math release's 7B files).

    python benchmarks/gguf_quality.py --ckpt_dir runs/smollm2/orbax --out_dir runs/gguf_quality
    python benchmarks/gguf_quality.py --ckpt_dir runs/smollm2_experiment/slm --tokenizer runs/smollm2/orbax \
      --out_dir runs/gguf_quality_slm --no_sizes         # the SLM student of the experiment

Each type: `orbax_to_gguf` writes the file, `read_gguf_params` reads it back (the gguf
package dequantizes), and the project's loglikelihood scorer (the lm-eval backend's,
slm_jax/evals/loglikelihood.py) sums log p over held-out documents: 64 worked solutions of
the forum corpus's clean split at a seed never trained on (SmolLM2's tokenizer).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")   # a CPU host with libtpu installed must not probe for a TPU

import jax  # noqa: E402
import numpy as np  # noqa: E402

from slm_jax.hf import gguf_export  # noqa: E402
from slm_jax.hf.gguf import read_gguf_params  # noqa: E402
from slm_jax.hf.mapping import model_config_from_gin  # noqa: E402

# the Rho-Math-7B release's files (GiB, as the hub lists "GB")
SEED_7B = {"q8_0": 7.17, "q4_0": 3.83}


def held_out_batch(vocab_path: str, n_docs: int, length: int):
    from slm_jax.corpora import forum
    from slm_jax.data.tokenizer import load_vocabulary
    vocabulary = load_vocabulary(vocab_path)
    rows = []
    for doc in forum.iter_documents("clean", seed=1234, n=n_docs):
        ids = list(vocabulary.encode(doc.text))[: length + 1]
        rows.append(ids)
    width = max(len(r) for r in rows) - 1
    batch = {k: np.zeros((len(rows), width), np.int32)
             for k in ("inputs", "targets", "positions", "segment_ids")}
    batch["loss_weights"] = np.zeros((len(rows), width), np.float32)
    for i, ids in enumerate(rows):
        n = len(ids) - 1
        batch["inputs"][i, :n], batch["targets"][i, :n] = ids[:-1], ids[1:]
        batch["positions"][i, :n], batch["segment_ids"][i, :n] = np.arange(n), 1
        batch["loss_weights"][i, :n] = 1.0
    return batch


def perplexity(params, cfg, batch) -> float:
    from slm_jax.evals.loglikelihood import make_score_fn
    score = jax.jit(make_score_fn(cfg))
    logprob, _ = score(jax.tree.map(np.asarray, params), batch)
    return math.exp(-float(np.sum(logprob)) / float(batch["loss_weights"].sum()))


def seed_sizes() -> list[str]:
    """Each type's size for the 1.1B and 7B shapes; llama.cpp's own Q4_0 keeps the output
    matrix at Q6_K and the embedding at Q4_0, the line that checks the formula."""
    import gguf
    lines = ["| model | " + " | ".join(gguf_export.TYPES) + " |",
             "|---|" + "---|" * len(gguf_export.TYPES)]
    for name, gin in (("TinyLlama-1.1B", "gin/models/tinyllama_1b.gin"),
                      ("Mistral-7B (Rho-Math-7B)", "gin/models/mistral_7b.gin")):
        cfg = model_config_from_gin([gin])
        sizes = [gguf_export.gguf_bytes(cfg, t) / 2**30 for t in gguf_export.TYPES]
        lines.append(f"| {name} | " + " | ".join(f"{s:.2f} GiB" for s in sizes) + " |")
    cfg = model_config_from_gin(["gin/models/mistral_7b.gin"])
    Q = gguf.GGMLQuantizationType
    llama_cpp_q4_0 = 0
    for t in gguf_export.gguf_tensors(cfg, "llama", "q4_0"):
        qtype = (Q.Q6_K if t.name == "output.weight" else Q.Q4_0 if len(t.shape) == 2
                 else Q.F32)
        llama_cpp_q4_0 += gguf_export.tensor_bytes(t.shape, qtype)
    lines.append("")
    lines.append(f"7B check: Q8_0 {gguf_export.gguf_bytes(cfg, 'q8_0') / 2**30:.2f} GiB "
                 f"(release: {SEED_7B['q8_0']} GB); Q4_0 with llama.cpp's own policy "
                 f"(output Q6_K, embedding Q4_0) {llama_cpp_q4_0 / 2**30:.2f} GiB (release: "
                 f"{SEED_7B['q4_0']} GB); this converter's Q4_0 (embedding and output Q8_0) "
                 f"{gguf_export.gguf_bytes(cfg, 'q4_0') / 2**30:.2f} GiB")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt_dir", default="runs/smollm2/orbax")
    parser.add_argument("--out_dir", default="runs/gguf_quality")
    parser.add_argument("--tokenizer", default=None, help="default: the run's DataConfig."
                        "vocab_path, else --ckpt_dir")
    parser.add_argument("--no_sizes", action="store_true", help="skip the 1.1B/7B size table")
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--types", default=",".join(gguf_export.TYPES))
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    from slm_jax.hf import hub_files
    from slm_jax.hf.conversion import find_model_gin
    cfg = dataclasses.replace(model_config_from_gin(find_model_gin(args.ckpt_dir)),
                              dtype="float32")
    vocab_path = args.tokenizer or hub_files.run_tokenizer(args.ckpt_dir) or args.ckpt_dir
    batch = held_out_batch(vocab_path, args.docs, args.length)
    print(f"held-out: {batch['inputs'].shape[0]} documents, "
          f"{int(batch['loss_weights'].sum())} scored tokens")
    lines = ["| type | file size | held-out perplexity | change vs F32 | export s |",
             "|---|---|---|---|---|"]
    base = None
    for type_name in args.types.split(","):
        path = os.path.join(args.out_dir, f"model-{type_name}.gguf")
        if os.path.exists(path):
            os.remove(path)
        start = time.perf_counter()
        gguf_export.orbax_to_gguf(args.ckpt_dir, path, type_name=type_name,
                                  tokenizer=args.tokenizer)
        seconds = time.perf_counter() - start
        ppl = perplexity(read_gguf_params(path, cfg), cfg, batch)
        base = base or ppl
        lines.append(f"| {type_name.upper()} | {os.path.getsize(path) / 1e6:.1f} MB | "
                     f"{ppl:.4f} | {100 * (ppl / base - 1):+.2f}% | {seconds:.1f} |")
        print(lines[-1], flush=True)
        os.remove(path)
    print("\n".join(lines))
    if not args.no_sizes:
        print()
        print("\n".join(seed_sizes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
