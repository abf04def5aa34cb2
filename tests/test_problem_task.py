"""The experiment's accuracy task (slm_jax/evals/problem_task.py) as lm-eval loads it."""

import json

import pytest

from slm_jax.evals import harness, problem_task


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _task(include_path):
    from lm_eval.tasks import get_task_dict
    manager = harness.task_manager(include_path, False)
    return get_task_dict([problem_task.TASK_NAME], manager)[problem_task.TASK_NAME]


def test_few_shot_prompt_in_the_corpus_layout_and_graded_answers(tmp_path):
    problems = _jsonl(tmp_path / "p.jsonl", [{"question": "Solve for x: 2x + 1 = 7.", "answer": 3}])
    exemplars = _jsonl(tmp_path / "e.jsonl", [
        {"question": "What is 1 plus 1?", "answer": "2", "solution": "1 + 1 = 2.\nThe answer is 2."},
        {"question": "What is 2 times 2?", "answer": "4", "solution": "2 * 2 = 4.\nThe answer is 4."}])
    task = _task(problem_task.write_problem_task(str(tmp_path / "task"), problems,
                                                 exemplars=exemplars,
                                                 labels=("Problem", "Solution")))
    doc = list(task.test_docs())[0]
    assert task.fewshot_context(doc, num_fewshot=1) == (
        "Problem: What is 1 plus 1?\nSolution: 1 + 1 = 2.\nThe answer is 2.\n\n"
        "Problem: Solve for x: 2x + 1 = 7.\nSolution:")
    assert task.config.generation_kwargs["until"] == ["\n\n", "\nProblem:"]
    assert task.process_results(doc, [" 2x = 6.\nThe answer is 3."]) == {"accuracy": 1.0}
    assert task.process_results(doc, [" The answer is 4."]) == {"accuracy": 0.0}


def test_a_problem_without_an_answer_names_the_file_and_line(tmp_path):
    problems = _jsonl(tmp_path / "p.jsonl", [{"question": "q", "answer": 1}, {"question": "q2"}])
    with pytest.raises(ValueError, match=r"p.jsonl line 2: a problem needs 'question' and 'answer'"):
        problem_task.write_problem_task(str(tmp_path / "task"), problems)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        problem_task.write_problem_task(str(tmp_path / "task"), str(tmp_path / "missing.jsonl"))
