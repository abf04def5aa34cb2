"""GSM8K/MATH jsonl formats (slm_jax/math_eval/problems.py)."""

import json

import pytest

from slm_jax.math_eval import problems as data_lib


def test_dataset_formats(tmp_path):
    rows = [{"question": "q1", "answer": "steps\n#### 1,200"}, {"question": "q2", "answer": "7"},
            {"problem": "p1", "solution": "so $\\boxed{\\frac{1}{2}}$."},
            {"problem": "p2", "solution": "\\boxed{3}", "answer": "4"}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    problems = data_lib.load_problems(str(path))
    assert [(p.query, p.answer, p.style) for p in problems] == [
        ("q1", "1200", "gsm8k"), ("q2", "7", "gsm8k"), ("p1", "\\frac{1}{2}", "math"),
        ("p2", "4", "math")]
    assert len(data_lib.load_problems(str(path), limit=2)) == 2
    assert data_lib.parse_datasets("gsm8k=a.jsonl,math=b.jsonl") == {"gsm8k": "a.jsonl",
                                                                     "math": "b.jsonl"}
    assert data_lib.parse_datasets(["x=y"]) == {"x": "y"}
    with pytest.raises(ValueError, match="NAME=PATH"):
        data_lib.parse_datasets("a.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="record 0"):
        data_lib.load_problems(str(tmp_path / "bad.jsonl"))


