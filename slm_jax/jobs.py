"""The jobs a gin file can choose with `run.job`, and the import of every configurable."""

from __future__ import annotations

import gin

from slm_jax import checkpoint, demo, experiment, model, optim, scoring, selection, sharding  # noqa: F401
from slm_jax import step_benchmark, train
from slm_jax.analysis import job as analysis_job
from slm_jax.data import pipeline  # noqa: F401
from slm_jax.math_eval import job as math_eval_job

JOBS = {
    "train": train.train,   # SLM step 1 (mode clm on clean data) and step 3 (mode slm)
    "score": scoring.score,  # SLM step 2 offline: reference losses stored per token
    "demo": demo.demo,      # the three steps end to end on the embedded corpus
    "experiment": experiment.experiment,  # SLM vs CLM curves in miniature (Figure 1)
    "bench": step_benchmark.bench,  # step time, MFU and SLM/CLM ratios (JSON lines)
    "analyze": analysis_job.analyze,  # Rho-1 §2.1, Fig. 2
    "eval": math_eval_job.math_eval,  # few-shot GSM8K/MATH accuracy of a checkpoint
}


@gin.configurable
def run(job: str = "demo"):
    """Runs the job named by `run.job`."""
    if job not in JOBS:
        raise ValueError(f"run.job={job!r} is not a job; choose one of {sorted(JOBS)} "
                         "with --gin.run.job=train")
    return JOBS[job]()
