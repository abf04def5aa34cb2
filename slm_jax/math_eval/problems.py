"""Datasets in the math-evaluation-harness's jsonl formats.

    GSM8K style  {"question": ..., "answer": "...\\n#### 42"}  (or a bare "42")
    MATH style   {"problem": ..., "solution": "... \\boxed{7} ..."}  or  {"problem", "answer"}
                 ("answer" wins when both are present)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from slm_jax.math_eval import grader
from slm_jax.math_eval.prompts import GSM8K, MATH


@dataclasses.dataclass(frozen=True)
class Problem:
    idx: int
    query: str       # the question or problem text
    answer: str      # the ground-truth final answer
    style: str       # GSM8K or MATH (prompt layout)


def gsm8k_answer(answer: str) -> str:
    m = re.search(r"####\s*(.+?)\s*$", answer.strip())
    return (m.group(1) if m else answer).strip().replace(",", "")


def parse_record(rec: dict, idx: int, where: str = "") -> Problem:
    if "question" in rec and "answer" in rec:
        return Problem(idx, rec["question"], gsm8k_answer(str(rec["answer"])), GSM8K)
    if "problem" in rec:
        if rec.get("answer") not in (None, ""):
            return Problem(idx, rec["problem"], str(rec["answer"]).strip(), MATH)
        boxed = grader.last_boxed(rec.get("solution", ""))
        if boxed is not None:
            return Problem(idx, rec["problem"], boxed.strip(), MATH)
    raise ValueError(f"{where}record {idx} has neither {{question, answer}} nor {{problem, "
                     f"solution with \\boxed{{}} / answer}}: keys {sorted(rec)}")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"math eval dataset {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_problems(path: str, limit: int | None = None) -> list[Problem]:
    """The first `limit` problems of a jsonl file (all when None)."""
    records = read_jsonl(path)
    if limit is not None:
        records = records[:limit]
    return [parse_record(rec, i, where=f"{path}: ") for i, rec in enumerate(records)]


def parse_datasets(spec) -> dict[str, str]:
    """{"name": path}, a "name=path,name=path" string or a list of "name=path" strings."""
    if isinstance(spec, dict):
        return {str(k): str(v) for k, v in spec.items()}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = {}
    for item in items:
        name, eq, path = str(item).partition("=")
        if not eq or not name.strip() or not path.strip():
            raise ValueError(f"dataset {item!r} must be NAME=PATH.jsonl (e.g. gsm8k=test.jsonl)")
        out[name.strip()] = path.strip()
    if not out:
        raise ValueError("no math eval dataset given; pass NAME=PATH.jsonl")
    return out
