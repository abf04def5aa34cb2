"""Generate, grade and write: per-problem predictions (jsonl) and an accuracy table.

Files in out_dir:
    predictions_{name}.jsonl  idx, question, answer (ground truth), prediction (extracted),
                              correct, generation, n_shot, finish_reason
    results.json              {"datasets": {name: {accuracy, correct, total, n_shot, path}},
                               "average": mean accuracy, **run info}
    results.md                the same as a markdown table
"""

from __future__ import annotations

import json
import os

from slm_jax.math_eval import problems as data_lib
from slm_jax.math_eval import grader, prompts


def solve(generator, params, sp, problems: list[data_lib.Problem], *, n_shot: int | None,
          max_new_tokens: int, exemplars: list[dict] | None = None, seed: int = 0) -> list[dict]:
    """Greedy few-shot answers to `problems`, graded; one dict per problem, in order."""
    max_len = generator.config.max_seq_len
    bos = [sp.bos_id()] if sp.bos_id() >= 0 else []
    eos = sp.eos_id() if sp.eos_id() >= 0 else None
    budget = max_len - max_new_tokens - len(bos)
    if budget < 8:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves {budget} prompt tokens under "
                         f"ModelConfig.max_seq_len={max_len}; lower the max_new_tokens binding")
    rows: list[dict | None] = [None] * len(problems)
    for style in sorted({p.style for p in problems}):
        members = [i for i, p in enumerate(problems) if p.style == style]
        shots = prompts.DEFAULT_SHOTS[style] if n_shot is None else n_shot
        blocks = prompts.exemplar_blocks(style, exemplars)
        encoded = [prompts.fit_prompt(style, problems[i].query, blocks, shots, sp.encode, budget)
                   for i in members]
        completions = generator.generate(
            params, [bos + ids for ids, _ in encoded], max_new_tokens=max_new_tokens,
            eos_id=eos, stop_strings=prompts.STOP_STRINGS[style], decode=sp.decode, seed=seed)
        for i, (_, used), completion in zip(members, encoded, completions):
            problem = problems[i]
            graded = grader.grade(completion.text, problem.answer)
            rows[i] = {"idx": problem.idx, "question": problem.query, "answer": problem.answer,
                       "prediction": graded.prediction, "correct": graded.correct,
                       "generation": completion.text, "n_shot": used,
                       "finish_reason": completion.finish_reason}
    return rows


def accuracy(rows: list[dict]) -> float:
    return sum(r["correct"] for r in rows) / max(len(rows), 1)


def write_predictions(path: str, rows: list[dict]):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def results_table(results: dict) -> str:
    lines = ["| dataset | n_shot | problems | correct | accuracy |", "|---|---|---|---|---|"]
    for name, r in results["datasets"].items():
        lines.append(f"| {name} | {r['n_shot']} | {r['total']} | {r['correct']} | "
                     f"{r['accuracy']:.1%} |")
    lines.append(f"| average | | | | {results['average']:.1%} |")
    return "\n".join(lines)


def run(generator, params, sp, datasets: dict[str, str], out_dir: str, *,
        n_shot: int | None = None, num_problems: int | None = None, max_new_tokens: int = 512,
        exemplars: dict[str, str] | None = None, info: dict | None = None) -> dict:
    """Evaluates every dataset and writes predictions, results.json and results.md."""
    os.makedirs(out_dir, exist_ok=True)
    results = {"datasets": {}, **(info or {}), "max_new_tokens": max_new_tokens}
    for name, path in datasets.items():
        problems = data_lib.load_problems(path, num_problems)
        shots_from = (exemplars or {}).get(name)
        records = prompts.load_exemplars(shots_from) if shots_from else None
        rows = solve(generator, params, sp, problems, n_shot=n_shot,
                     max_new_tokens=max_new_tokens, exemplars=records)
        write_predictions(os.path.join(out_dir, f"predictions_{name}.jsonl"), rows)
        styles = {p.style for p in problems}
        results["datasets"][name] = {
            "accuracy": accuracy(rows), "correct": sum(r["correct"] for r in rows),
            "total": len(rows), "path": path,
            "n_shot": n_shot if n_shot is not None else max(prompts.DEFAULT_SHOTS[s]
                                                            for s in styles) if styles else 0}
        print(f"[eval] {name}: {results['datasets'][name]['accuracy']:.1%} "
              f"({results['datasets'][name]['correct']}/{len(rows)})", flush=True)
    accs = [r["accuracy"] for r in results["datasets"].values()]
    results["average"] = sum(accs) / max(len(accs), 1)
    table = results_table(results)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table, flush=True)
    return results
