"""`python -m slm_jax.evaluate` (slm_jax/evaluate.py): its flags become the eval job's gin bindings
(built-in math datasets or lm-eval tasks)."""

import pytest


def test_evaluate_cli_flags():
    from slm_jax import evaluate
    flags = evaluate.to_main_flags(["--ckpt_dir", "c", "--gin_file", "m.gin", "--tokenizer", "t",
                                    "--data", "gsm8k=a.jsonl", "--data", "math=b.jsonl",
                                    "--out", "o", "--n_shot", "4", "--gin.ModelConfig.dtype=x"])
    assert flags == ["--gin_file=m.gin", "--gin.run.job=eval", "--gin.eval.checkpoint=c",
                     "--gin.eval.vocab_path=t",
                     "--gin.eval.datasets=gsm8k=a.jsonl,math=b.jsonl",
                     "--gin.eval.out_dir=o", "--gin.eval.n_shot=4",
                     "--gin.ModelConfig.dtype=x"]


def test_evaluate_cli_lm_eval_tasks_and_model_gin_beside_the_checkpoint(tmp_path):
    from slm_jax import evaluate
    (tmp_path / "model.gin").write_text("ModelConfig.d_model = 64\n")
    (tmp_path / "checkpoints").mkdir()
    flags = evaluate.to_main_flags(["--ckpt_dir", str(tmp_path / "checkpoints"), "--tokenizer",
                                    "t", "--tasks", "gsm8k_cot,minerva_math", "--out", "o",
                                    "--num_problems", "5", "--include_path", "my_tasks",
                                    "--gen_kwargs", "max_gen_toks=64"])
    assert flags == [f"--gin_file={tmp_path / 'model.gin'}", "--gin.run.job=eval",
                     f"--gin.eval.checkpoint={tmp_path / 'checkpoints'}",
                     "--gin.eval.vocab_path=t",
                     "--gin.eval.tasks=gsm8k_cot,minerva_math", "--gin.eval.out_dir=o",
                     "--gin.eval.num_problems=5", "--gin.eval.include_path=my_tasks",
                     "--gin.eval.gen_kwargs=max_gen_toks=64"]


def test_evaluate_cli_needs_one_source(capsys):
    from slm_jax import evaluate
    base = ["--ckpt_dir", "c", "--gin_file", "m.gin", "--tokenizer", "t", "--out", "o"]
    for extra in ([], ["--data", "a=b.jsonl", "--tasks", "gsm8k_cot"]):
        with pytest.raises(SystemExit):
            evaluate.to_main_flags(base + extra)
    assert "--data" in capsys.readouterr().err
