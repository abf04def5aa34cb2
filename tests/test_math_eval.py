"""Math evaluation: answer extraction, normalisation, equivalence, prompts, data formats,
the file outputs (an oracle scores 100%), and end to end: a 2-step training run with the
few-shot hook, then the `eval` job on its checkpoint through `python -m slm_jax.evaluate`."""

import json
import os

import gin
import pytest

from slm_jax.generate import Completion
from slm_jax.math_eval import data as data_lib
from slm_jax.math_eval import grader, prompts, runner
from tests.tiny_corpus import tiny_corpus


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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return tiny_corpus(root, seed=2, n_web_docs=120, n_clean_docs=60, spm_on_clean=True)


def test_train_hook_then_eval_job_end_to_end(corpus, tmp_path):
    from slm_jax import evaluate
    from slm_jax import main as main_lib
    paths, vocab = corpus
    run_dir = tmp_path / "run"
    gin.clear_config()
    try:
        code = main_lib.main([
            "--gin_file=gin/models/tiny.gin", "--gin.run.job=train",
            f"--gin.train.run_dir={run_dir}", f"--gin.DataConfig.file_pattern={paths.web_tfrecord}",
            f"--gin.DataConfig.vocab_path={vocab}", "--gin.DataConfig.seq_len=64",
            "--gin.DataConfig.global_batch_size=8", "--gin.train.num_steps=2",
            "--gin.train.eval_every=1",
            "--gin.train.few_shot_eval=@FewShotEvalConfig()",
            f"--gin.FewShotEvalConfig.dataset={paths.eval_problems}",
            "--gin.FewShotEvalConfig.num_problems=3", "--gin.FewShotEvalConfig.n_shot=1",
            "--gin.FewShotEvalConfig.max_new_tokens=12"])
        assert code == 0
        evals = [json.loads(l) for l in (run_dir / "eval.jsonl").read_text().splitlines()]
        assert [e["step"] for e in evals] == [1, 2]
        assert all(0.0 <= e["eval_gsm8k_accuracy"] <= 1.0 for e in evals)
        assert os.listdir(run_dir / "tensorboard")

        gin.clear_config()
        out = tmp_path / "eval"
        code = evaluate.main([
            "--ckpt_dir", str(run_dir / "checkpoints"), "--gin_file", "gin/models/tiny.gin",
            "--tokenizer", vocab, "--data", f"gsm8k={paths.eval_problems}", "--out", str(out),
            "--num_problems", "4", "--n_shot", "1", "--max_new_tokens", "12",
            "--batch_size", "8"])
        assert code == 0
    finally:
        gin.clear_config()
    results = json.loads((out / "results.json").read_text())
    assert results["datasets"]["gsm8k"]["total"] == 4
    assert 0.0 <= results["datasets"]["gsm8k"]["accuracy"] <= 1.0
    rows = [json.loads(l) for l in (out / "predictions_gsm8k.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["n_shot"] in (0, 1) for r in rows)
    assert all(r["finish_reason"] in ("stop", "eos", "length") for r in rows)
    assert (out / "results.md").read_text().startswith("| dataset | n_shot |")


def test_evaluate_cli_flags():
    from slm_jax import evaluate
    flags = evaluate.to_main_flags(["--ckpt_dir", "c", "--gin_file", "m.gin", "--tokenizer", "t",
                                    "--data", "gsm8k=a.jsonl", "--data", "math=b.jsonl",
                                    "--out", "o", "--n_shot", "4", "--gin.ModelConfig.dtype=x"])
    assert flags == ["--gin_file=m.gin", "--gin.run.job=eval", "--gin.math_eval.checkpoint=c",
                     "--gin.math_eval.vocab_path=t",
                     "--gin.math_eval.datasets=gsm8k=a.jsonl,math=b.jsonl",
                     "--gin.math_eval.out_dir=o", "--gin.math_eval.n_shot=4",
                     "--gin.ModelConfig.dtype=x"]
