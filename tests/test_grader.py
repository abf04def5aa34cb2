"""Answer extraction and equivalence by math-verify (slm_jax/math_eval/grader.py)."""

import threading

import pytest

from slm_jax.math_eval import grader


@pytest.mark.parametrize("text,expected", [
    ("so x = 2. Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.",
     "\\frac{1}{2}"),
    ("The final answer is $\\boxed{7}$.", "7"),
    ("first \\boxed{3} then \\boxed{\\frac{a}{\\sqrt{b}}} done", "\\frac{a}{\\sqrt{b}}"),
    ("nested \\boxed{\\{1, 2\\}} and \\boxed{x^{2}}", "x^{2}"),
    ("unbalanced \\boxed{5} then \\boxed{6", "5"),
    ("\\boxed 9", "9"),
    ("\\fbox{12}", "12"),
    ("steps\n#### 1,234\n", "1,234"),
    ("So the answer is 42.", "42"),
    ("Thus The answer is 18 dollars. Then more text", "18"),
    ("The answer is $5 per hour.", "$5"),
    ("The answer is x = 5.", "x = 5"),
    ("we get 3 and then 7.5 apples", "7.5"),
    ("it is -4 or -12", "-12"),
    ("costs 1,200 in total", "1,200"),
    ("no numbers at all", ""),
])
def test_extract_answer(text, expected):
    assert grader.extract_answer(text) == expected


# Each pair is one answer written two ways; a string normaliser misses most of these.
@pytest.mark.parametrize("prediction,gold", [
    ("0.5", "\\frac{1}{2}"), ("\\dfrac{1}{2}", "0.5"), ("1/2", "\\frac12"), ("50\\%", "50"),
    ("-0.75", "-\\frac{3}{4}"), ("\\frac{-3}{4}", "-0.75"),
    ("\\boxed{\\frac12}", "0.5"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"),
    ("1+x", "x+1"), ("x^2+2x+1", "(x+1)^2"),
    ("(-\\infty,3]", "(-\\infty, 3]"), ("[0,1)", "x \\in [0, 1)"),
    ("\\{3,2,1\\}", "\\{1,2,3\\}"), ("(1, 2)", "(1,2)"),
    ("5 cm", "5"), ("12\\text{ cm}^2", "12"), ("90^\\circ", "90"),
    ("1,000", "1000"), ("1000.0", "1000"), ("+7", "7"), ("7.", "7"), ("$18", "18"),
    ("\\$18", "18"), ("x=3", "3"), ("\\text{(B)}", "(B)"),
])
def test_equivalent(prediction, gold):
    assert grader.is_equiv(prediction, gold)


@pytest.mark.parametrize("prediction,gold", [
    ("3", "4"), ("0.5", "\\frac{1}{3}"), ("", "0"), ("7", ""), ("1000", "1001"),
    ("\\sqrt{2}", "\\sqrt{3}"), ("x+1", "x-1"), ("2", "\\frac{1}{0}"),
    ("(1,2]", "[1,2)"), ("[0,1]", "(0,1)"), ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("100000", "100001"),  # close is not equal
])
def test_not_equivalent(prediction, gold):
    assert not grader.is_equiv(prediction, gold)


def test_grade_extracts_then_verifies():
    assert grader.grade("Half of it. The final answer is $\\boxed{\\dfrac{1}{2}}$.", "0.5") == \
        grader.Grade("\\dfrac{1}{2}", True)
    assert grader.grade("a = 3\n#### 1,254\nQuestion:", "1254").correct
    assert grader.grade("The answer is 18 dollars.", "18").correct
    assert grader.grade("So the interval is \\boxed{(1, 2]}", "(1,2]").correct
    assert not grader.grade("no answer line", "7").correct
    assert not grader.grade("", "7").correct


def test_grading_works_off_the_main_thread():
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    results = []
    worker = threading.Thread(target=lambda: results.append(grader.is_equiv("0.25", "\\frac14")))
    worker.start()
    worker.join()
    assert results == [True]
