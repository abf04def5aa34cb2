"""Time and peak host memory of `hf_to_orbax` on a TinyLlama-1.1B-shaped checkpoint.

    python benchmarks/convert_1b.py [--work_dir /tmp/convert_1b] [--dtype bfloat16] [--export]

Writes random weights of the TinyLlama-1.1B shape (32000 vocab, d 2048, 22 layers, 32/4 heads,
MLP 5632, untied; 1,100,048,384 params) as HF safetensors in ~1 GB shards with
model.safetensors.index.json, then converts them in a subprocess (so its ru_maxrss is the
conversion's alone) to fp32 params with scan_layers, and checks three tensors against the
source. Prints one JSON line: wall time, peak RSS, RSS right after imports, and sizes.
`--export` also times orbax_to_hf (fp32 -> bf16 safetensors) the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes  # noqa: F401
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
    "hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "intermediate_size": 5632, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "torch_dtype": "bfloat16",
}

# Runs in the child: imports, then the conversion alone, then reports its own peak RSS.
CHILD = r"""
import json, resource, sys, time
from slm_jax import convert as convert_cli
from slm_jax.hf import conversion, mapping
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
{call}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "rss_after_imports_kb": rss_imports,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def hf_tensors(cfg):
    d, f, k = cfg["hidden_size"], cfg["intermediate_size"], d_head(cfg)
    q, kv = cfg["num_attention_heads"] * k, cfg["num_key_value_heads"] * k
    yield "model.embed_tokens.weight", (cfg["vocab_size"], d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "self_attn.q_proj.weight", (q, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, q)
        yield p + "mlp.gate_proj.weight", (f, d)
        yield p + "mlp.up_proj.weight", (f, d)
        yield p + "mlp.down_proj.weight", (d, f)
        yield p + "input_layernorm.weight", (d,)
        yield p + "post_attention_layernorm.weight", (d,)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (cfg["vocab_size"], d)


def d_head(cfg):
    return cfg["hidden_size"] // cfg["num_attention_heads"]


def write_random_hf(hf_dir, dtype, shard_bytes=10**9, seed=0):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(seed)
    os.makedirs(hf_dir, exist_ok=True)
    shards, pending, size, total, n_params = [], {}, 0, 0, 0

    def flush():
        nonlocal pending, size
        name = f"shard-{len(shards)}.safetensors"
        save_file(pending, os.path.join(hf_dir, name), metadata={"format": "pt"})
        shards.append((name, list(pending)))
        pending, size = {}, 0

    for name, shape in hf_tensors(HF_CONFIG):
        w = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)
        if pending and size + w.nbytes > shard_bytes:
            flush()
        pending[name] = w
        size, total, n_params = size + w.nbytes, total + w.nbytes, n_params + w.size
    flush()
    weight_map = {}
    for i, (tmp, names) in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(os.path.join(hf_dir, tmp), os.path.join(hf_dir, final))
        weight_map.update({n: final for n in names})
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump({**HF_CONFIG, "torch_dtype": np.dtype(dtype).name}, f)
    return n_params, total, len(shards)


def run_child(call):
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", CHILD.format(call=call)], env=env, cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


VERIFY = r"""
import jax, numpy as np, sys
from safetensors import safe_open
from slm_jax import convert as convert_cli
from slm_jax.hf import conversion, mapping
from slm_jax.parallel import checkpoint
from slm_jax import model
hf_dir, out = sys.argv[1], sys.argv[2]
cfg = mapping.model_config_from_gin([out + "/model.gin"])
abstract = model.abstract_params(cfg)
dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
p = checkpoint.restore_params(out + "/checkpoints", abstract, jax.tree.map(lambda _: dev, abstract),
                              binding="verify")
idx = __import__("json").load(open(hf_dir + "/model.safetensors.index.json"))["weight_map"]
def hf(name):
    with safe_open(hf_dir + "/" + idx[name], framework="numpy") as f:
        return f.get_tensor(name).astype(np.float32)
d, h, k = cfg.d_model, cfg.n_heads, cfg.resolved_head_dim
assert np.array_equal(np.asarray(p["embed"]["embedding"]), hf("model.embed_tokens.weight"))
assert np.array_equal(np.asarray(p["layers"]["attention"]["q_proj"][7]),
                      hf("model.layers.7.self_attn.q_proj.weight").T.reshape(d, h, k))
assert np.array_equal(np.asarray(p["lm_head"]["kernel"]), hf("lm_head.weight").T)
print("verified")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=None, help="default: a temp dir, removed after")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--export", action="store_true", help="also time orbax_to_hf")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--_generate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._generate:
        print(json.dumps(write_random_hf(args._generate, np.dtype(args.dtype))))
        return
    work = args.work_dir or tempfile.mkdtemp(prefix="convert_1b_")
    hf_dir, out, back = (os.path.join(work, n) for n in ("hf", "orbax", "hf_export"))
    try:
        start = time.perf_counter()
        # Generated in its own process too: a child started from a big parent would inherit
        # the parent's RSS in its ru_maxrss.
        gen = subprocess.run([sys.executable, __file__, "--_generate", hf_dir, "--dtype",
                              args.dtype], check=True, capture_output=True, text=True)
        n_params, nbytes, n_shards = json.loads(gen.stdout.strip().splitlines()[-1])
        gen_s = time.perf_counter() - start
        result = {"params": n_params, "hf_dtype": args.dtype, "hf_bytes": nbytes,
                  "hf_shards": n_shards, "generate_s": round(gen_s, 1)}
        r = run_child(f"conversion.hf_to_orbax({hf_dir!r}, {out!r})")
        result.update(hf_to_orbax_s=round(r["seconds"], 1),
                      hf_to_orbax_peak_rss_gib=round(r["peak_rss_kb"] / 2**20, 2),
                      rss_after_imports_gib=round(r["rss_after_imports_kb"] / 2**20, 2),
                      fp32_params_gib=round(n_params * 4 / 2**30, 2))
        subprocess.run([sys.executable, "-c", VERIFY, hf_dir, out], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"},
                       stdout=subprocess.DEVNULL)
        result["verified"] = True
        if args.export:
            r = run_child(f"conversion.orbax_to_hf({out + '/checkpoints'!r}, {back!r}, "
                          "dtype='bfloat16', max_shard_size='1GB', "
                          f"gin_files=[{out + '/model.gin'!r}])")
            result.update(orbax_to_hf_s=round(r["seconds"], 1),
                          orbax_to_hf_peak_rss_gib=round(r["peak_rss_kb"] / 2**20, 2))
        print(json.dumps(result))
    finally:
        if not (args.keep or args.work_dir):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
