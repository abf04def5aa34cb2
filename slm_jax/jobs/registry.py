"""The jobs a gin file can choose with `run.job`, and the import of every configurable."""

from __future__ import annotations

import gin

from slm_jax.data import pipeline  # noqa: F401  (DataConfig)
from slm_jax.evals import train_evals  # noqa: F401  (FewShotEvalConfig, HarnessEval)
from slm_jax.jobs import analyze, compile as compile_job, demo, evaluation, experiment, score
from slm_jax.jobs import sft, step_benchmark, train
from slm_jax.trainer import hooks  # noqa: F401  (HeldOutLossEval)
from slm_jax.model import config  # noqa: F401  (ModelConfig)
from slm_jax.parallel import checkpoint, distributed, sharding  # noqa: F401  (their configs)
from slm_jax.slm import optim, reference, selection  # noqa: F401  (their configs)

JOBS = {
    "train": train.train,   # SLM step 1 (mode clm on clean data) and step 3 (mode slm)
    "score": score.score,   # SLM step 2 offline: reference losses stored per token
    "demo": demo.demo,      # the three steps end to end on the embedded corpus
    "experiment": experiment.experiment,  # SLM vs CLM curves in miniature (Figure 1)
    "bench": step_benchmark.bench,  # step time, MFU and SLM/CLM ratios (JSON lines)
    "analyze": analyze.analyze,  # Rho-1 §2.1, Fig. 2
    "eval": evaluation.evaluate,  # few-shot GSM8K/MATH accuracy, or any lm-eval task list
    "compile": compile_job.compile_run,  # the run's programs through the TPU compiler
    "sft": sft.sft,   # supervised fine-tuning on chat jsonl (the Interpreter models)
}


@gin.configurable
def run(job: str = "demo", compilation_cache_dir: str | None = None):
    """Runs the job named by `run.job`.

    `compilation_cache_dir`: JAX's persistent compilation cache (local or gs://). A
    restarted or repeated run loads its compiled programs instead of compiling again, and
    runs of one job that build the same program (the demo's three evals) compile it once.
    """
    if job not in JOBS:
        raise ValueError(f"run.job={job!r} is not a job; choose one of {sorted(JOBS)} "
                         "with --gin.run.job=train")
    if compilation_cache_dir:
        import jax
        jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
        # Every program: on a 2-core CPU even the small ones add up to seconds.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return JOBS[job]()
