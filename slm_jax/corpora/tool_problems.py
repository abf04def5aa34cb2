"""Generated tool-integrated SFT data: problems a short Python program answers, as ToRA-format
trajectories, beside the same problems with chain-of-thought only, and held-out problems.

    python -m slm_jax.corpora.tool_problems --out_dir runs/interpreter/data \\
        [--train 400] [--heldout 100] [--seed 0]

writes `train_tool.jsonl` and `train_cot.jsonl` (chat rows, the same problems), and
`heldout.jsonl` ({question, answer}: problems never in the training files, for
`python -m slm_jax.evaluate --prompt_type tora --data heldout=...`).

The problems are arithmetic a 135M-parameter model gets wrong in its head (three-digit
products, sums of ranges, remainders) and a two-line program gets right, so the tool is worth
learning. A tool trajectory names the quantities, prints the result and reads it off the
```output block into \\boxed{}; the chain-of-thought one states the same steps with the
results written out. Pure Python, deterministic in `seed`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from typing import Callable

# kind -> (question, program lines, chain-of-thought steps, answer), from the numbers
_Builder = Callable[[random.Random], tuple[str, list[str], list[str], int]]


def _boxes(rng: random.Random):
    boxes, per_box, extra = rng.randint(12, 99), rng.randint(12, 99), rng.randint(5, 99)
    answer = boxes * per_box + extra
    return (f"A shop has {boxes} boxes of {per_box} pencils each and {extra} loose pencils. "
            "How many pencils does it have?",
            [f"boxes = {boxes}", f"per_box = {per_box}", f"loose = {extra}",
             "print(boxes * per_box + loose)"],
            [f"{boxes} * {per_box} = {boxes * per_box}.",
             f"{boxes * per_box} + {extra} = {answer}."], answer)


def _range_sum(rng: random.Random):
    low = rng.randint(3, 60)
    high = low + rng.randint(10, 80)
    answer = sum(range(low, high + 1))
    count = high - low + 1
    return (f"What is the sum of all integers from {low} to {high}?",
            [f"print(sum(range({low}, {high} + 1)))"],
            [f"There are {count} numbers with mean ({low} + {high}) / 2 = {(low + high) / 2:g}.",
             f"{count} * {(low + high) / 2:g} = {answer}."], answer)


def _remainder(rng: random.Random):
    a, b = rng.randint(1000, 9999), rng.randint(7, 97)
    answer = a % b
    return (f"What is the remainder when {a} is divided by {b}?",
            [f"print({a} % {b})"],
            [f"{b} * {a // b} = {b * (a // b)}.", f"{a} - {b * (a // b)} = {answer}."], answer)


def _trip(rng: random.Random):
    speed, hours, minutes = rng.randint(41, 97), rng.randint(2, 9), rng.choice((15, 30, 45))
    answer = speed * hours + speed * minutes // 60
    return (f"A train goes {speed} km per hour for {hours} hours and {minutes} minutes. How many "
            "whole kilometres does it travel?",
            [f"speed = {speed}", f"minutes = {hours} * 60 + {minutes}",
             "print(speed * minutes // 60)"],
            [f"{hours} hours and {minutes} minutes are {hours * 60 + minutes} minutes.",
             f"{speed} * {hours * 60 + minutes} / 60 = {speed * (hours * 60 + minutes) / 60:g}, "
             f"so {answer} whole kilometres."], answer)


KINDS: dict[str, _Builder] = {"boxes": _boxes, "range_sum": _range_sum,
                              "remainder": _remainder, "trip": _trip}


def tool_answer(program: list[str], result: int) -> str:
    code = "\n".join(program)
    return (f"Let me compute it with Python.\n```python\n{code}\n```\n```output\n{result}\n```\n"
            f"The answer is \\boxed{{{result}}}.")


def cot_answer(steps: list[str], result: int) -> str:
    return "\n".join(steps) + f"\nThe answer is \\boxed{{{result}}}."


def problems(count: int, seed: int, avoid: set[str] = frozenset()) -> list[tuple]:
    """`count` distinct problems (kinds in turn), none of whose questions is in `avoid`."""
    rng, out, seen = random.Random(seed), [], set(avoid)
    kinds = list(KINDS.values())
    while len(out) < count:
        problem = kinds[len(out) % len(kinds)](rng)
        if problem[0] not in seen:
            seen.add(problem[0])
            out.append(problem)
    return out


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def write(out_dir: str, *, train: int, heldout: int, seed: int) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    held = problems(heldout, seed + 1_000_003)
    trained = problems(train, seed, avoid={p[0] for p in held})
    paths = {name: os.path.join(out_dir, f"{name}.jsonl")
             for name in ("train_tool", "train_cot", "heldout")}
    with open(paths["train_tool"], "w") as tool, open(paths["train_cot"], "w") as cot:
        for question, program, steps, answer in trained:
            tool.write(json.dumps(chat_row(question, tool_answer(program, answer))) + "\n")
            cot.write(json.dumps(chat_row(question, cot_answer(steps, answer))) + "\n")
    with open(paths["heldout"], "w") as f:
        for question, _, _, answer in held:
            f.write(json.dumps({"question": question, "answer": f"#### {answer}"}) + "\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slm_jax.corpora.tool_problems",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write(args.out_dir, train=args.train, heldout=args.heldout,
                            seed=args.seed).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
