"""Evaluation through lm-evaluation-harness (EleutherAI's `lm_eval`).

    loglikelihood.py    log-probabilities of continuation tokens: batched, sharded, on device
    lm_eval_backend.py  the `slm_jax` model for lm-eval: loglikelihood, loglikelihood_rolling,
                        generate_until (KV-cache decoding from slm_jax/model/generate.py)
    harness.py          run a task list (simple_evaluate), write lm-eval's results and samples,
                        flatten the metrics for the training logs; `evaluate_checkpoint`, the
                        `eval` job's lm-eval mode (slm_jax/jobs/evaluation.py)
    train_evals.py      the in-training eval hooks: FewShotEvalConfig (built-in few-shot math
                        prompts) and HarnessEval (lm-eval tasks)
"""
