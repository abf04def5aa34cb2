"""Generate, grade and write (slm_jax/math_eval/runner.py) with an oracle generator."""

import json


from slm_jax.model.generate import Completion
from slm_jax.math_eval import runner


class CharTokenizer:
    """bytes as token ids, like a SentencePiece processor to the runner."""

    def bos_id(self):
        return -1

    def eos_id(self):
        return -1

    def encode(self, s):
        return list(s.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


class OracleGenerator:
    """Answers every prompt's last question correctly, in the style its exemplars use."""

    class config:
        max_seq_len = 100_000

    def __init__(self, answers: dict[str, str], wrong: set = frozenset()):
        self.answers, self.wrong = answers, wrong

    def generate(self, params, prompt_ids, *, max_new_tokens, stop_strings, decode, **_):
        assert stop_strings in (("\n\nQuestion:",), ("\n\nProblem:",))
        out = []
        for ids in prompt_ids:
            text = decode(ids)
            query = text.rsplit("Question: " if text.endswith("Answer:") else "Problem: ", 1)[1]
            query = query.rsplit("\n", 1)[0]
            answer = "999" if query in self.wrong else self.answers[query]
            gsm = text.endswith("Answer:")
            reply = (f" Adding up gives {answer}. The answer is {answer}." if gsm
                     else f" Hence $x = {answer}$. The final answer is $\\boxed{{{answer}}}$.")
            out.append(Completion(tokens=[], text=reply, finish_reason="stop"))
        return out


def test_oracle_predictions_score_100_percent_and_files(tmp_path):
    gsm = [{"question": f"How many {i}?", "answer": f"work\n#### {i * 1000:,}"} for i in range(5)]
    math = [{"problem": "Half?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
            {"problem": "Root?", "answer": "\\sqrt{2}"}]
    for name, rows in [("gsm8k", gsm), ("math", math)]:
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = {r["question"]: f"{i * 1000:,}" for i, r in enumerate(gsm)}
    answers.update({"Half?": "0.5", "Root?": "\\sqrt2"})
    datasets = {"gsm8k": str(tmp_path / "gsm8k.jsonl"), "math": str(tmp_path / "math.jsonl")}
    out = tmp_path / "out"
    results = runner.run(OracleGenerator(answers), None, CharTokenizer(), datasets, str(out),
                         max_new_tokens=32)
    assert results["datasets"]["gsm8k"] == {"accuracy": 1.0, "correct": 5, "total": 5,
                                            "path": datasets["gsm8k"], "n_shot": 8}
    assert results["datasets"]["math"]["accuracy"] == 1.0
    assert results["datasets"]["math"]["n_shot"] == 4 and results["average"] == 1.0
    assert json.loads((out / "results.json").read_text()) == results
    table = (out / "results.md").read_text()
    assert "| gsm8k | 8 | 5 | 5 | 100.0% |" in table and "| average | | | | 100.0% |" in table
    rows = [json.loads(l) for l in (out / "predictions_gsm8k.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in rows] == list(range(5))
    assert set(rows[0]) == {"idx", "question", "answer", "prediction", "correct", "generation",
                            "n_shot", "finish_reason"}
    assert rows[3]["answer"] == "3000" and rows[3]["prediction"] == "3,000" and rows[3]["correct"]
    # One wrong answer out of five.
    results = runner.run(OracleGenerator(answers, wrong={"How many 2?"}), None, CharTokenizer(),
                         {"gsm8k": datasets["gsm8k"]}, str(tmp_path / "out2"), n_shot=2,
                         max_new_tokens=32)
    assert results["datasets"]["gsm8k"]["accuracy"] == 0.8
    assert results["datasets"]["gsm8k"]["n_shot"] == 2


