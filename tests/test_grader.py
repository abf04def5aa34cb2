"""Answer extraction and equivalence (slm_jax/math_eval/grader.py)."""


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
    ("Thus The answer is 18 dollars. Then more text", "18 dollars"),
    ("we get 3 and then 7.5 apples", "7.5"),
    ("it is -4 or -12", "-12"),
    ("costs 1,200 in total", "1,200"),
    ("no numbers at all", ""),
])
def test_extract_answer(text, expected):
    assert grader.extract_answer(text) == expected


@pytest.mark.parametrize("raw,expected", [
    ("$1,000", "1000"), ("1,234,567", "1234567"), ("5 dollars", "5"), ("12 cm^2", "12"),
    ("12\\text{ cm}", "12"), ("\\text{(A)}", "(A)"), ("\\dfrac12", "\\frac{1}{2}"),
    ("\\tfrac{3}{4}", "\\frac{3}{4}"), ("\\frac 1{x}", "\\frac{1}{x}"), ("3/4", "\\frac{3}{4}"),
    ("+3.", "3"), ("x = 5", "5"), (".5", "0.5"), ("-.25", "-0.25"), ("90^\\circ", "90"),
    ("90^{\\circ}", "90"), ("50\\%", "50"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("\\boxed{7}", "7"), ("\\$ 20", "20"), ("\\sqrt2", "\\sqrt{2}"), (" 42 ", "42"),
    ("{5}", "5"), (None, ""),
])
def test_normalize_answer(raw, expected):
    assert grader.normalize_answer(raw) == expected


@pytest.mark.parametrize("pred,gt", [
    ("0.5", "\\frac{1}{2}"), ("\\dfrac{1}{2}", "0.5"), ("1,000", "1000"), ("1000.0", "1000"),
    ("-\\frac{3}{4}", "-0.75"), ("\\frac{-3}{4}", "-0.75"), ("3/4", "\\frac{3}{4}"),
    ("0.33333", "\\frac{1}{3}"), ("+7", "7"), ("7.", "7"), ("$18", "18"), ("18 dollars", "18"),
    ("\\sqrt{2}", "\\sqrt2"), ("x=3", "3"), ("\\text{(B)}", "(B)"), ("100000", "100001"),
])
def test_equivalent(pred, gt):
    assert grader.is_equiv(pred, gt)


@pytest.mark.parametrize("pred,gt", [
    ("3", "4"), ("0.5", "\\frac{1}{3}"), ("", "0"), ("1000", "1001"), ("\\sqrt{2}", "\\sqrt{3}"),
    ("x+1", "x-1"), ("2", "\\frac{1}{0}"),
])
def test_not_equivalent(pred, gt):
    assert not grader.is_equiv(pred, gt)


