"""The generated tool-integrated SFT set: programs that print the answer, held-out apart."""

import json

from slm_jax.corpora import tool_problems
from slm_jax.math_eval import sandbox, tora


def test_programs_print_the_answer_and_heldout_problems_are_apart(tmp_path):
    paths = tool_problems.write(str(tmp_path), train=12, heldout=8, seed=3)
    tool = [json.loads(ln) for ln in open(paths["train_tool"])]
    cot = [json.loads(ln) for ln in open(paths["train_cot"])]
    held = [json.loads(ln) for ln in open(paths["heldout"])]
    assert len(tool) == len(cot) == 12 and len(held) == 8
    questions = {row["messages"][0]["content"] for row in tool}
    assert questions == {row["messages"][0]["content"] for row in cot}
    assert not questions & {row["question"] for row in held}
    for row in tool[:4]:   # one of each kind, run in the box as the evaluation would
        answer = row["messages"][1]["content"]
        printed = sandbox.run_program(tora.last_program(answer)).text
        assert f"```output\n{printed}\n```" in answer and answer.endswith(f"\\boxed{{{printed}}}.")
    again = tool_problems.write(str(tmp_path / "again"), train=12, heldout=8, seed=3)
    assert open(again["train_tool"]).read() == open(paths["train_tool"]).read()
