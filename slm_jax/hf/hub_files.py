"""The non-weight files of a Hugging Face model directory: config.json,
generation_config.json and the tokenizer files.

`hf_to_orbax` keeps them beside the checkpoint (`keep_hub_files`); `orbax_to_hf` finds
them again (`find_source_dir`: beside the checkpoint, or beside the `train.init_checkpoint`
a run started from) and writes an export that transformers, vLLM and
math-evaluation-harness load as they load the original (`write_hub_files`).
"""
from __future__ import annotations

import json
import os
import re
import shutil

from slm_jax.hf.mapping import ConversionError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja", "added_tokens.json", "vocab.json",
                   "merges.txt")
KEPT_FILES = TOKENIZER_FILES + ("config.json", "generation_config.json")
# config.json keys that name special tokens; kept from the source when there is one.
SPECIAL_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def keep_hub_files(hf_dir: str, out: str) -> list[str]:
    """Copies config, generation config and tokenizer files of `hf_dir` into `out`."""
    kept = []
    for name in KEPT_FILES:
        if os.path.exists(os.path.join(hf_dir, name)):
            shutil.copy(os.path.join(hf_dir, name), os.path.join(out, name))
            kept.append(name)
    return kept


def _gin_string_binding(gin_text: str, name: str) -> str | None:
    """The string a gin file binds `name` to, following one %MACRO; None if unbound."""
    match = re.search(rf"^{re.escape(name)}\s*=\s*(.+)$", gin_text, re.M)
    if not match:
        return None
    value = match.group(1).strip()
    if value.startswith("%"):
        return _gin_string_binding(gin_text, value[1:])
    literal = re.fullmatch(r"""(['"])(.*)\1""", value)
    return literal.group(2) if literal else None


def _checkpoint_root(path: str) -> str:
    """OUT or run_dir of a checkpoints/ dir, a step dir, or OUT/run_dir itself."""
    path = os.path.abspath(path).rstrip("/")
    if os.path.basename(path).isdigit():
        path = os.path.dirname(path)
    return os.path.dirname(path) if os.path.basename(path) == "checkpoints" else path


def find_source_dir(ckpt_dir: str) -> str | None:
    """Where the model's original config.json lives: beside the checkpoint (a converted
    one), or beside the `train.init_checkpoint` of the run that wrote it."""
    seen = set()
    root = _checkpoint_root(ckpt_dir)
    while root and root not in seen:
        seen.add(root)
        if os.path.exists(os.path.join(root, "config.json")):
            return root
        gin_path = os.path.join(root, "config.gin")
        if not os.path.exists(gin_path):
            return None
        with open(gin_path) as f:
            init = _gin_string_binding(f.read(), "train.init_checkpoint")
        root = _checkpoint_root(init) if init else None
    return None


def run_binding(ckpt_dir: str, name: str) -> str | None:
    """A string binding of the run that wrote `ckpt_dir`, from its config.gin."""
    gin_path = os.path.join(_checkpoint_root(ckpt_dir), "config.gin")
    if not os.path.exists(gin_path):
        return None
    with open(gin_path) as f:
        return _gin_string_binding(f.read(), name)


def run_tokenizer(ckpt_dir: str) -> str | None:
    """The `DataConfig.vocab_path` a run trained with, from its config.gin."""
    return run_binding(ckpt_dir, "DataConfig.vocab_path")


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def copy_tokenizer(tokenizer: str, out: str) -> dict:
    """Copies the tokenizer files; returns the special token ids they define."""
    if os.path.isdir(tokenizer):
        names = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(tokenizer, n))]
        if not names:
            raise ConversionError(f"--tokenizer {tokenizer} holds no tokenizer files "
                                  f"({', '.join(TOKENIZER_FILES[:4])})")
        for name in names:
            shutil.copy(os.path.join(tokenizer, name), os.path.join(out, name))
    elif os.path.isfile(tokenizer):
        name = "tokenizer.json" if tokenizer.endswith(".json") else "tokenizer.model"
        shutil.copy(tokenizer, os.path.join(out, name))
        if name == "tokenizer.model":
            _write_sentencepiece_config(tokenizer, out)
    else:
        raise ConversionError(f"--tokenizer {tokenizer} does not exist; pass a tokenizer.json, "
                              "a SentencePiece .model or a directory holding them")
    return _special_ids(out)


def _write_sentencepiece_config(model_path: str, out: str):
    """tokenizer_config.json for a SentencePiece model, so AutoTokenizer loads it."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": sp.bos_id() >= 0,
              "add_eos_token": False, "legacy": False}
    for role, token_id in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id())):
        if token_id >= 0:
            config[f"{role}_token"] = sp.id_to_piece(token_id)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def _special_ids(directory: str) -> dict:
    """bos/eos/pad ids named by a directory's tokenizer files."""
    from slm_jax.data.tokenizer import load_vocabulary
    try:
        vocabulary = load_vocabulary(directory if os.path.exists(
            os.path.join(directory, "tokenizer.json")) else os.path.join(directory,
                                                                        "tokenizer.model"))
    except ValueError:
        return {}
    ids = {"bos_token_id": vocabulary.bos_id, "eos_token_id": vocabulary.eos_id}
    return {k: v for k, v in ids.items() if v is not None}


def write_hub_files(out: str, hf_config: dict, source_dir: str | None,
                    tokenizer: str | None):
    """config.json (+ special ids), generation_config.json and tokenizer files in `out`.

    `hf_config` is `mapping.hf_config_from_model`'s, built on the source's config.json."""
    import transformers
    tokenizer = tokenizer or (source_dir if source_dir and any(
        os.path.exists(os.path.join(source_dir, n)) for n in TOKENIZER_FILES) else None)
    ids = copy_tokenizer(tokenizer, out) if tokenizer else {}
    # hf_config starts from the source's config.json: its ids win over the tokenizer's.
    ids.update({key: hf_config[key] for key in SPECIAL_ID_KEYS if key in hf_config})
    hf_config = {**hf_config, **ids}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    generation = read_json(os.path.join(source_dir, "generation_config.json")) if source_dir \
        else {}
    generation = {**{k: v for k, v in ids.items()}, **generation,
                  "transformers_version": transformers.__version__}
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
