"""Few-shot prompts in the math-evaluation-harness layout.

GSM8K style: "Question: {question}\\nAnswer: {reasoning} The answer is {answer}."
exemplars joined by "\\n\\n", then "Question: {test}\\nAnswer:"; generation stops at
"\\n\\nQuestion:". MATH style: "Problem: {problem}\\nSolution: {solution}" with the
solution ending in "The final answer is $\\boxed{...}$.", stop at "\\n\\nProblem:".
The built-in exemplars are this project's own; `load_exemplars` reads others from a
jsonl file: {"question", "answer"} lines (a GSM8K-harness answer with its "#### 42" line, or
a bare final answer for MATH), or {"problem", "solution"} lines for MATH.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence

GSM8K, MATH = "gsm8k", "math"
DEFAULT_SHOTS = {GSM8K: 8, MATH: 4}
STOP_STRINGS = {GSM8K: ("\n\nQuestion:",), MATH: ("\n\nProblem:",)}

GSM8K_EXEMPLARS = (
    ("A baker makes 24 rolls in the morning and 18 in the afternoon. She sells 30 of them. "
     "How many rolls are left?",
     "She makes 24 + 18 = 42 rolls. After selling 30 she has 42 - 30 = 12 left.", "12"),
    ("Tom reads 15 pages a day. How many pages does he read in 2 weeks?",
     "Two weeks are 2 * 7 = 14 days. He reads 15 * 14 = 210 pages.", "210"),
    ("A box holds 6 eggs. How many boxes are needed for 75 eggs?",
     "75 / 6 = 12.5, so 12 boxes are not enough and 13 boxes are needed.", "13"),
    ("Mia had $50. She bought a book for $12 and a pen for $3. How much money does she have "
     "now?", "She spent 12 + 3 = 15 dollars. She has 50 - 15 = 35 dollars left.", "35"),
    ("A train travels at 80 km per hour for 3 hours and then at 60 km per hour for 2 hours. "
     "How far does it travel?",
     "First it covers 80 * 3 = 240 km, then 60 * 2 = 120 km. In total 240 + 120 = 360 km.",
     "360"),
    ("A shirt costs $40 and is on sale for 25% off. What is the sale price?",
     "The discount is 40 * 25 / 100 = 10 dollars. The sale price is 40 - 10 = 30 dollars.",
     "30"),
    ("Leo is 4 years older than twice his sister's age. His sister is 9. How old is Leo?",
     "Twice his sister's age is 2 * 9 = 18. Leo is 18 + 4 = 22 years old.", "22"),
    ("A garden is 12 m long and 5 m wide. Fencing costs $7 per meter. How much does it cost "
     "to fence the garden?",
     "The perimeter is 2 * (12 + 5) = 34 m. The fence costs 34 * 7 = 238 dollars.", "238"),
)

MATH_EXEMPLARS = (
    ("Find the value of $x$ such that $3x - 7 = 11$.",
     "Adding 7 to both sides gives $3x = 18$, so $x = 6$. The final answer is $\\boxed{6}$."),
    ("What is the sum of the roots of $x^2 - 5x + 6 = 0$?",
     "The polynomial factors as $(x-2)(x-3)$, so the roots are 2 and 3 and their sum is 5. "
     "The final answer is $\\boxed{5}$."),
    ("Simplify $\\frac{6}{8} + \\frac{1}{4}$.",
     "We have $\\frac{6}{8} = \\frac{3}{4}$, and $\\frac{3}{4} + \\frac{1}{4} = 1$. "
     "The final answer is $\\boxed{1}$."),
    ("A fair six-sided die is rolled. What is the probability of rolling a number greater "
     "than 4?",
     "Two of the six outcomes (5 and 6) are greater than 4, so the probability is "
     "$\\frac{2}{6} = \\frac{1}{3}$. The final answer is $\\boxed{\\frac{1}{3}}$."),
)


def gsm8k_block(question: str, reasoning: str | None = None, answer: str | None = None) -> str:
    head = f"Question: {question.strip()}\nAnswer:"
    if reasoning is None:
        return head
    return f"{head} {reasoning.strip()} The answer is {answer}."


def math_block(problem: str, solution: str | None = None) -> str:
    head = f"Problem: {problem.strip()}\nSolution:"
    return head if solution is None else f"{head} {solution.strip()}"


def exemplar_blocks(style: str, records: Sequence[dict] | None = None) -> list[str]:
    """Rendered exemplars: the built-in ones, or dataset-format records (jsonl rows)."""
    if records is None:
        if style == GSM8K:
            return [gsm8k_block(q, r, a) for q, r, a in GSM8K_EXEMPLARS]
        return [math_block(p, s) for p, s in MATH_EXEMPLARS]
    blocks = []
    for rec in records:
        if style == GSM8K:
            question = rec.get("question", rec.get("problem"))
            # Harness GSM8K answers: calculator annotations and a final "#### 42" line.
            answer = re.sub(r"<<[^>]*>>", "", str(rec.get("answer", rec.get("solution"))))
            m = re.search(r"####\s*(.+)\s*$", answer)
            if m:
                reasoning = answer[:m.start()].strip().replace("\n", " ")
                blocks.append(gsm8k_block(question, reasoning, m.group(1).strip()))
            else:
                blocks.append(f"{gsm8k_block(question)} {answer.strip()}")
        else:
            solution = rec.get("solution") or f"The final answer is $\\boxed{{{rec['answer']}}}$."
            blocks.append(math_block(rec.get("problem", rec.get("question")), solution))
    return blocks


def load_exemplars(path: str) -> list[dict]:
    """Exemplar records from a jsonl file; each needs a question (or problem) and an answer
    (or solution)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"exemplar file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for i, rec in enumerate(records):
        if not ({"question", "problem"} & set(rec) and {"answer", "solution"} & set(rec)):
            raise ValueError(f"{path}: exemplar {i} needs a question (or problem) and an "
                             f"answer (or solution); it has keys {sorted(rec)}")
    if not records:
        raise ValueError(f"exemplar file {path!r} holds no exemplars")
    return records


def build_prompt(style: str, query: str, exemplars: Sequence[str], n_shot: int) -> str:
    """The first `n_shot` exemplars and the query block, joined by blank lines."""
    block = gsm8k_block(query) if style == GSM8K else math_block(query)
    return "\n\n".join([*exemplars[:n_shot], block])


def fit_prompt(style: str, query: str, exemplars: Sequence[str], n_shot: int,
               encode: Callable[[str], list[int]], budget: int) -> tuple[list[int], int]:
    """Token ids of the prompt with as many of the first n_shot exemplars as fit in `budget`.

    Drops exemplars from the front; with none left, keeps the last `budget` tokens.
    Returns (ids, shots used).
    """
    chosen = list(exemplars[:n_shot])
    for shots in range(len(chosen), -1, -1):
        ids = encode(build_prompt(style, query, chosen[len(chosen) - shots:], shots))
        if len(ids) <= budget:
            return ids, shots
    return ids[-budget:], 0
