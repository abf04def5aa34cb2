"""The second generated corpus (slm_jax/corpora/forum.py): forum threads whose noise
includes wrong worked attempts, a clean textbook split, held-out problems."""

import json
import re

import pytest

from slm_jax.corpora import forum
from slm_jax.math_eval import grader


def _docs(split, n=60, **kwargs):
    return list(forum.iter_documents(split, seed=3, n=n, **kwargs))


def test_clean_solutions_are_right_and_graded_from_their_text():
    for doc in _docs("clean"):
        for problem in doc.problems:
            text = problem.text()
            assert text.startswith(f"Problem: {problem.question}\nSolution: ")
            assert grader.grade(text, str(problem.answer)).correct
            for expression, result in re.findall(r"((?:\d+ [-+*/] )+\d+) = (\d+)", text):
                assert eval(expression) == int(result), text  # every step's arithmetic holds


def test_web_threads_hold_the_solution_and_wrong_attempts():
    docs = _docs("web", n=200)
    text = "\n".join(d.text for d in docs)
    wrong = re.findall(r"So the answer is (-?\d+)\? not sure", text)
    assert len(wrong) > 20
    for doc in docs:
        for problem in doc.problems:
            assert problem.text().split("\n", 1)[1] in doc.text  # the best answer, intact
        for claimed in re.findall(r"So the answer is (-?\d+)\? not sure", doc.text):
            assert int(claimed) not in {p.answer for p in doc.problems} or len(doc.problems) > 1
    shares = [d.noise_chars / len(d.text) for d in docs]
    assert 0.3 < sum(shares) / len(shares) < 0.8


def test_held_out_problems_never_reach_training_and_generation_is_deterministic(tmp_path):
    held_out = {p.key for d in _docs("eval") for p in d.problems}
    for split in ("web", "clean"):
        assert not held_out & {p.key for d in _docs(split, excluded_keys=held_out)
                               for p in d.problems}
    assert [d.text for d in _docs("web")] == [d.text for d in _docs("web")]
    paths = forum.generate_corpus(str(tmp_path), seed=1, n_web_docs=20, n_clean_docs=10,
                                  n_eval_docs=5)
    exemplars = [json.loads(line) for line in open(paths.exemplars)]
    assert exemplars and all(grader.grade(e["solution"], e["answer"]).correct for e in exemplars)
    assert not exemplars[0]["solution"].startswith("Solution:")


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="Unknown split 'train'"):
        _docs("train")
