"""An lm-eval task over a problems jsonl, graded by slm_jax.math_eval.grader.

The experiment's accuracy curve runs through lm-evaluation-harness like any other task:
`write_problem_task` writes a task YAML over `{question, answer}` rows (and optional solved
exemplars for few-shot prompts) into a directory that is then an lm-eval `include_path`:

    python -m slm_jax.evaluate ... --tasks heldout_problems --include_path DIR

Answers are graded by the same grader as the eval job (math-verify equivalence), through
the task's `process_results`; the metric is `accuracy`.
"""

from __future__ import annotations

import json
import os

TASK_NAME = "heldout_problems"

_UTILS = ("# Written by slm_jax.evals.problem_task: lm-eval loads process_results from here.\n"
          "from slm_jax.evals.problem_task import process_results  # noqa: F401\n")


def process_results(doc: dict, results: list[str]) -> dict:
    """lm-eval's per-document hook: 1.0 when the generation's final answer is doc's."""
    from slm_jax.math_eval import grader
    return {"accuracy": float(grader.grade(results[0], str(doc["answer"])).correct)}


def _quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _copy_rows(src: str, dst: str) -> str:
    """src's rows as {question, answer, solution}: one schema for both splits, as the
    `datasets` json builder wants."""
    with open(src) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for i, row in enumerate(rows):
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{src} line {i + 1}: a problem needs 'question' and 'answer' keys")
    with open(dst, "w") as f:
        for row in rows:
            f.write(json.dumps({"question": row["question"], "answer": str(row["answer"]),
                                "solution": row.get("solution", "")}) + "\n")
    return os.path.abspath(dst)


def write_problem_task(out_dir: str, problems: str, *, exemplars: str | None = None,
                       labels: tuple[str, str] = ("Question", "Answer"), max_gen_toks: int = 96,
                       name: str = TASK_NAME) -> str:
    """Writes `name`.yaml (+ utils.py) into out_dir and returns out_dir (the include_path).

    problems: jsonl of {question, answer}; exemplars: jsonl of {question, answer, solution}
    for few-shot prompts (the first n are used: HarnessEval/evaluate `num_fewshot`);
    labels: the prompt's layout, e.g. ("Problem", "Solution") for a corpus written that way.
    """
    for path in (problems, exemplars):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"problems file {path!r} does not exist")
    question, answer = labels
    os.makedirs(out_dir, exist_ok=True)
    data_files = {"test": _copy_rows(problems, os.path.join(out_dir, f"{name}_test.jsonl"))}
    if exemplars:
        data_files["train"] = _copy_rows(exemplars, os.path.join(out_dir, f"{name}_train.jsonl"))
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
             *(f"    {split}: {_quoted(path)}" for split, path in data_files.items()),
             "test_split: test",
             *(["fewshot_split: train", "fewshot_config:", "  sampler: first_n"] if exemplars else []),
             "output_type: generate_until",
             f"doc_to_text: {_quoted(question + ': {{question}}' + chr(10) + answer + ':')}",
             # Exemplars show their worked solution; held-out rows have only the answer.
             "doc_to_target: \"{{solution if solution else answer}}\"",
             "generation_kwargs:",
             f"  until: {json.dumps([chr(10) * 2, chr(10) + question + ':'])}",
             f"  max_gen_toks: {max_gen_toks}",
             "  do_sample: false",
             "process_results: !function utils.process_results",
             "metric_list:",
             "  - metric: accuracy",
             "    aggregation: mean",
             "    higher_is_better: true"]
    with open(os.path.join(out_dir, f"{name}.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "utils.py"), "w") as f:
        f.write(_UTILS)
    return out_dir
