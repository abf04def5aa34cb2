"""Tool-integrated reasoning evaluation: math-evaluation-harness's `tora` prompt type.

Per problem: the chat prompt (chat.ChatTemplate, no exemplars), greedy generation up to
`max_new_tokens` a round with the stop strings "</s>", "\\n\\n---" and "```output". When a
round's text has no "boxed" and ends in "```", its last ```python block runs in the box
(sandbox.py) and "\\n```output\\n{result}\\n```\\n" is appended, where result is what the program
printed, else its report (the last traceback line, or "Done"), cut to 400 characters; up to
`max_rounds` executions, after the last "\\nReach max function call limit." is appended. There
is no interpreter session: before the new block, the earlier blocks that ran without an error
run again, their output discarded, so the names they defined exist (the model's program may
use them). The answer is the last \\boxed{} of the whole text, graded by the project's one
grader (grader.py, math-verify); the program's output is not the answer.

Rounds are batched across the problems still going. Writes the harness's per-sample jsonl
(idx, question, gt, code: [the text], pred, report, score, plus the programs run and their
reports round by round) and a metrics json.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

from slm_jax.math_eval import grader, sandbox
from slm_jax.math_eval.problems import Problem

STOP_STRINGS = ("</s>", "\n\n---", "```output")
MAX_ROUNDS = 4
MAX_NEW_TOKENS = 1024
_PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


class Vocab:
    """A `load_tokenizer` tokenizer as chat.ChatTemplate reads one."""

    def __init__(self, sp):
        self.encode, self.decode = sp.encode, sp.decode
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None


def wants_execution(round_text: str) -> bool:
    """The harness's test: no "boxed" in the round, and it ends a code block."""
    return "boxed" not in round_text and round_text.rstrip().endswith("```")


def last_program(text: str) -> str | None:
    blocks = _PYTHON_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def with_earlier(program: str, earlier: Sequence[str]) -> str:
    """`program` after the earlier successful blocks, whose output is discarded."""
    if not earlier:
        return program
    prelude = "\n".join(
        f"with __redirect(__io.StringIO()):\n    exec(compile({block!r}, '<earlier>', 'exec'))"
        for block in earlier)
    return (f"import io as __io\nfrom contextlib import redirect_stdout as __redirect\n{prelude}\n"
            f"{program}")


def solve(generator, params, sp, problems: Sequence[Problem], template, *,
          max_new_tokens: int = MAX_NEW_TOKENS, max_rounds: int = MAX_ROUNDS,
          box: sandbox.SandboxConfig = sandbox.SandboxConfig()) -> list[dict]:
    """The harness's round loop over `problems`; one graded row per problem, in order."""
    vocab = Vocab(sp)
    heads = [template.encode_prompt(vocab, p.query).tolist() for p in problems]
    texts = [""] * len(problems)        # what the model and the interpreter wrote so far
    runs = [[] for _ in problems]       # (program, report, ok) per execution
    going = list(range(len(problems)))
    for _ in range(max_rounds):
        if not going:
            break
        completions = generator.generate(
            params, [heads[i] + list(vocab.encode(texts[i])) for i in going],
            max_new_tokens=max_new_tokens, eos_id=vocab.eos_id, stop_strings=STOP_STRINGS,
            decode=vocab.decode)
        still = []
        for i, completion in zip(going, completions):
            output = completion.text.rstrip()
            texts[i] += output
            program = last_program(texts[i]) if wants_execution(output) else None
            if program is None:
                continue
            earlier = [p for p, _, ok in runs[i] if ok]
            report = sandbox.run_program(with_earlier(program, earlier), box)
            runs[i].append((program, report.text, report.ok))
            texts[i] += f"\n```output\n{report.text}\n```\n"
            if len(runs[i]) == max_rounds:
                texts[i] += "\nReach max function call limit."
            else:
                still.append(i)
        going = still
    rows = []
    for problem, text, done in zip(problems, texts, runs):
        graded = grader.grade(text, problem.answer)
        rows.append({"idx": problem.idx, "question": problem.query, "gt": problem.answer,
                     "code": [text], "pred": [graded.prediction], "score": [graded.correct],
                     "report": [r for _, r, _ in done] or ["Done"],
                     "programs": [p for p, _, _ in done], "executions": len(done),
                     "executions_ok": sum(ok for _, _, ok in done)})
    return rows


def metrics(rows: list[dict]) -> dict:
    """Accuracy with its standard error, and the share of answers whose program ran."""
    n = max(len(rows), 1)
    accuracy = sum(r["score"][0] for r in rows) / n
    return {"num_samples": len(rows), "acc": accuracy,
            "acc_stderr": (accuracy * (1 - accuracy) / n) ** 0.5,
            "program_share": sum(r["executions"] > 0 for r in rows) / n,
            "program_ran_share": sum(r["executions_ok"] > 0 for r in rows) / n}


def write(out_dir: str, name: str, rows: list[dict], info: dict) -> dict:
    """`{name}/samples.jsonl` and `{name}/metrics.json` under `out_dir`; the metrics."""
    directory = os.path.join(out_dir, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "samples.jsonl"), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    result = {**metrics(rows), **info}
    with open(os.path.join(directory, "metrics.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def harness_datasets(data_dir: str, names: Sequence[str]) -> dict[str, str]:
    """math-evaluation-harness's layout: `data_dir/<name>/test.jsonl`."""
    found = {}
    for name in names:
        path = os.path.join(data_dir, name, "test.jsonl")
        if not os.path.exists(path):
            have = sorted(d for d in os.listdir(data_dir)
                          if os.path.exists(os.path.join(data_dir, d, "test.jsonl"))) \
                if os.path.isdir(data_dir) else []
            raise ValueError(f"eval.data_dir={data_dir!r} has no {name}/test.jsonl (it has: "
                             f"{', '.join(have) or 'none'}); set eval.data_names to those.")
        found[name] = path
    return found
