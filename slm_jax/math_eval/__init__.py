"""Few-shot math evaluation in the math-evaluation-harness format (GSM8K, MATH).

    prompts.py   few-shot prompts ("Question:/Answer:" and "Problem:/Solution:")
    grader.py    answer extraction, normalisation and equivalence
    data.py      jsonl datasets in the harness's formats
    runner.py    generate, grade, write predictions and the accuracy table
    job.py       the `eval` job and the few-shot eval hook for training (gin)
"""
