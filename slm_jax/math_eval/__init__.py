"""Few-shot math evaluation in the math-evaluation-harness format (GSM8K, MATH).

    prompts.py   few-shot prompts ("Question:/Answer:" and "Problem:/Solution:"), exemplars
                 built in or from a jsonl file
    grader.py    answer extraction and equivalence by math-verify: `grade`, the one grading path
    problems.py  jsonl datasets in the harness's formats
    runner.py    generate, grade, write predictions and the accuracy table

The `eval` job is slm_jax/jobs/evaluation.py and the few-shot training hook
slm_jax/evals/train_evals.py (FewShotEvalConfig); lm-eval tasks go through slm_jax/evals/.
"""
