"""`python -m slm_jax.evaluate` (slm_jax/evaluate.py): its flags become the eval job's gin bindings."""





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
