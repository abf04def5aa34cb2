"""The tool-integrated (`tora`) round loop (slm_jax/math_eval/tora.py): when programs run,
what the model is shown, the 4-execution limit, the earlier blocks' names, grading by the
last \\boxed{}. The model here is a script keyed by problem (a real model's end-to-end run is
the evidence in docs/results/interpreter.md); the programs run in the real box."""

import json

import pytest

from slm_jax.data import chat, tokenizer
from slm_jax.math_eval import sandbox, tora
from slm_jax.math_eval.problems import GSM8K, Problem
from slm_jax.model.generate import Completion
from tests.tiny_corpus import tiny_corpus

BOX = sandbox.SandboxConfig(wall_s=3.0, cpu_s=3)


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    _, vocab = tiny_corpus(tmp_path_factory.mktemp("tora"), seed=7)
    return tokenizer.load_vocabulary(vocab).tokenizer


class ScriptedModel:
    """`Generator.generate`'s interface: round k of problem p answers SCRIPTS[p][k]."""

    def __init__(self, sp, problems, scripts):
        vocab, template = tora.Vocab(sp), chat.ChatTemplate()
        self.heads = [tuple(template.encode_prompt(vocab, p.query)) for p in problems]
        self.scripts, self.calls, self.prompts = scripts, [0] * len(problems), []

    def generate(self, params, prompts, **kwargs):
        assert kwargs["stop_strings"] == tora.STOP_STRINGS
        out = []
        for prompt in prompts:
            p = next(i for i, head in enumerate(self.heads) if tuple(prompt[:len(head)]) == head)
            text = self.scripts[p][min(self.calls[p], len(self.scripts[p]) - 1)]
            self.calls[p] += 1
            self.prompts.append((p, len(prompts)))
            out.append(Completion(tokens=[], text=text, finish_reason="stop"))
        return out


PROBLEMS = [Problem(0, "What is 2 times 3?", "6", GSM8K),
            Problem(1, "Loop forever?", "2", GSM8K),
            Problem(2, "What is 1/0?", "7", GSM8K),
            Problem(3, "No tools: 5?", "5", GSM8K)]
SCRIPTS = [
    ["First x.\n```python\nx = 2\nprint(x)\n```", "Then\n```python\nprint(x * 3)\n```",
     "So the answer is \\boxed{6}."],
    ["```python\nprint(1)\n```"],                       # never stops calling the tool
    ["```python\nprint(1/0)\n```", "That failed; \\boxed{7}"],
    ["It is \\boxed{5}, and ```python\nprint(0)\n``` is not run after boxed"],
]


def test_the_round_loop_runs_programs_and_grades_the_last_boxed(sp):
    model = ScriptedModel(sp, PROBLEMS, SCRIPTS)
    rows = tora.solve(model, None, sp, PROBLEMS, chat.ChatTemplate(), box=BOX)
    first, looping, failing, direct = rows
    assert first["code"][0] == (
        "First x.\n```python\nx = 2\nprint(x)\n```\n```output\n2\n```\n"
        "Then\n```python\nprint(x * 3)\n```\n```output\n6\n```\nSo the answer is \\boxed{6}.")
    assert first["score"] == [True] and first["pred"] == ["6"] and first["executions"] == 2
    assert looping["executions"] == tora.MAX_ROUNDS == 4
    assert looping["code"][0].endswith("```output\n1\n```\n\nReach max function call limit.")
    assert looping["score"] == [False]
    assert failing["report"] == ["ZeroDivisionError: division by zero"] and failing["score"] == [True]
    assert failing["executions_ok"] == 0
    assert direct["executions"] == 0 and direct["report"] == ["Done"] and direct["score"] == [True]
    # Batched: the first round asks for all four problems at once, later rounds the rest.
    assert [n for _, n in model.prompts[:4]] == [4, 4, 4, 4]
    assert max(model.calls) == 4 and model.calls[3] == 1
    metrics = tora.metrics(rows)
    assert metrics["acc"] == 0.75 and metrics["program_share"] == 0.75
    assert metrics["program_ran_share"] == 0.5
    assert abs(metrics["acc_stderr"] - (0.75 * 0.25 / 4) ** 0.5) < 1e-12


def test_earlier_failed_blocks_are_not_rerun_and_their_output_is_not_repeated():
    program = tora.with_earlier("print(y + 1)", ["y = 1\nprint('first')", "y = 41"])
    assert sandbox.run_program(program, BOX).text == "42"


def test_when_a_round_asks_for_execution():
    assert tora.wants_execution("text\n```python\nprint(1)\n```\n")
    assert not tora.wants_execution("\\boxed{3}\n```python\nprint(1)\n```")
    assert not tora.wants_execution("no code here")
    assert tora.last_program("```python\na\n```\nx\n```python\nb\n```") == "b\n"


def test_harness_data_layout(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "#### 1"}))
    assert tora.harness_datasets(str(tmp_path), ["gsm8k"]) == {
        "gsm8k": str(tmp_path / "gsm8k" / "test.jsonl")}
    with pytest.raises(ValueError, match=r"has no math/test.jsonl \(it has: gsm8k\)"):
        tora.harness_datasets(str(tmp_path), ["math"])
