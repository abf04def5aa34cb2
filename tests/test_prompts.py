"""Few-shot prompt layouts and fitting (slm_jax/math_eval/prompts.py)."""

import pytest

from slm_jax.math_eval import prompts


def test_prompt_layout_and_fitting():
    blocks = prompts.exemplar_blocks(prompts.GSM8K)
    assert len(blocks) == 8 and all(b.startswith("Question: ") and "\nAnswer: " in b
                                    and b.endswith(".") for b in blocks)
    prompt = prompts.build_prompt(prompts.GSM8K, "What is 2 + 2?", blocks, 8)
    assert prompt.count("\n\nQuestion: ") == 8
    assert prompt.endswith("Question: What is 2 + 2?\nAnswer:")
    math_blocks = prompts.exemplar_blocks(prompts.MATH)
    assert len(math_blocks) == 4 and all("\\boxed{" in b for b in math_blocks)
    math_prompt = prompts.build_prompt(prompts.MATH, "Find $x$.", math_blocks, 4)
    assert math_prompt.endswith("\n\nProblem: Find $x$.\nSolution:")
    assert prompts.STOP_STRINGS == {"gsm8k": ("\n\nQuestion:",), "math": ("\n\nProblem:",)}
    encode = lambda s: list(s.encode())
    ids, shots = prompts.fit_prompt(prompts.GSM8K, "Q?", blocks, 8, encode, budget=400)
    assert 0 < shots < 8 and len(ids) <= 400
    assert bytes(ids).decode().startswith(blocks[8 - shots])  # the first exemplars are dropped
    ids, shots = prompts.fit_prompt(prompts.GSM8K, "Q" * 50, blocks, 8, encode, budget=20)
    assert shots == 0 and len(ids) == 20 and bytes(ids).decode().endswith("\nAnswer:")
    harness = [{"question": "Ann has 2+3 pens?", "answer": "2+3=<<2+3=5>>5\n#### 5"}]
    assert prompts.exemplar_blocks(prompts.GSM8K, harness) == [
        "Question: Ann has 2+3 pens?\nAnswer: 2+3=5 The answer is 5."]




def test_exemplars_from_a_question_answer_file(tmp_path):
    path = tmp_path / "shots.jsonl"
    path.write_text('{"question": "What is 1/2 of 4?", "answer": "2"}\n'
                    '{"problem": "Solve $x+1=3$.", "solution": "So $x=2$. The final answer is '
                    '$\\\\boxed{2}$."}\n')
    records = prompts.load_exemplars(str(path))
    assert prompts.exemplar_blocks(prompts.MATH, records) == [
        "Problem: What is 1/2 of 4?\nSolution: The final answer is $\\boxed{2}$.",
        "Problem: Solve $x+1=3$.\nSolution: So $x=2$. The final answer is $\\boxed{2}$."]
    assert prompts.exemplar_blocks(prompts.GSM8K, records[:1]) == [
        "Question: What is 1/2 of 4?\nAnswer: 2"]
    path.write_text('{"question": "no answer"}\n')
    with pytest.raises(ValueError, match="exemplar 0 needs"):
        prompts.load_exemplars(str(path))
