"""Evaluation through lm-evaluation-harness (EleutherAI's `lm_eval`).

    loglikelihood.py    log-probabilities of continuation tokens: batched, sharded, on device
    lm_eval_backend.py  the `slm_jax` model for lm-eval: loglikelihood, loglikelihood_rolling,
                        generate_until (KV-cache decoding from slm_jax/model/generate.py)
    harness.py          run a task list (simple_evaluate), write lm-eval's results and samples,
                        flatten the metrics for the training logs

The `eval` job's lm-eval mode and the in-training hook are in slm_jax/jobs/harness_eval.py.
"""
