"""Running lm-eval task lists through the slm_jax backend, and what comes out of them.

`evaluate_checkpoint` is the `eval` job's lm-eval mode (slm_jax/jobs/evaluation.py with
`eval.tasks` bound; also `python -m slm_jax.evaluate --tasks ...`):

    python -m slm_jax.evaluate --ckpt_dir OUT/checkpoints --tokenizer OUT \\
      --tasks gsm8k_cot,minerva_math --out OUT/eval [--num_problems 100]

Files (lm-eval's own, as its command line writes them with --output_path DIR/results.json
--log_samples):
    results_{date}.json             lm-eval's results dict (metrics, configs, versions, ...)
    samples_{task}_{date}.jsonl     one line per document: prompt arguments, responses,
                                    filtered responses, target and per-document metrics
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import jax

from slm_jax import model as model_lib
from slm_jax.parallel import sharding


def parse_tasks(tasks) -> list[str]:
    """["a", "b"] from a list/tuple or "a,b"; refuses an empty list."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks or ())
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ValueError("no lm-eval task given; name some, e.g. gsm8k_cot,minerva_math")
    return names


def task_manager(include_path=None, include_defaults: bool = True):
    """lm-eval's TaskManager over its built-in tasks and/or the YAMLs under include_path.

    Indexing the ~15k built-in task configs takes tens of seconds on a small CPU;
    include_defaults=False indexes include_path alone."""
    from lm_eval.tasks import TaskManager
    paths = [include_path] if isinstance(include_path, str) else list(include_path or ())
    for path in paths:
        if not os.path.exists(path):
            raise ValueError(f"lm-eval include_path {path!r} does not exist")
    if not paths and not include_defaults:
        raise ValueError("include_defaults=False needs an include_path of task YAMLs")
    return TaskManager(include_path=paths or None, include_defaults=include_defaults)


def check_tasks(manager, names: Sequence[str]) -> None:
    """Unknown task names fail here, in one line, before any model work."""
    known = set(manager.all_tasks)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"lm-eval knows no task {missing}; see `lm_eval ls tasks` or pass the "
                         "directory of your task YAMLs as include_path")


def prepare_tasks(tasks, include_path, include_defaults: bool):
    """(task names, TaskManager), unknown names refused before any model work."""
    names = parse_tasks(tasks)
    manager = task_manager(include_path, include_defaults)
    check_tasks(manager, names)
    return names, manager


def evaluate(lm, tasks: Sequence[str], manager, *, limit: int | float | None = None,
             num_fewshot: int | None = None, gen_kwargs: dict | str | None = None,
             log_samples: bool = True, bootstrap_iters: int = 100000,
             keep_global_seeds: bool = False, evaluation_tracker=None) -> dict:
    """lm_eval.simple_evaluate of `lm` on `tasks`; returns lm-eval's results dict.

    keep_global_seeds: leave Python's, NumPy's and torch's global RNGs alone (lm-eval
    reseeds them by default), as an evaluation in the middle of training must."""
    import lm_eval
    seeds = dict(random_seed=None, numpy_random_seed=None, torch_random_seed=None) \
        if keep_global_seeds else {}
    return lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
        num_fewshot=num_fewshot, gen_kwargs=gen_kwargs, log_samples=log_samples,
        bootstrap_iters=bootstrap_iters, evaluation_tracker=evaluation_tracker, **seeds)


def run_and_write(lm, tasks: Sequence[str], manager, out_dir: str, **kwargs) -> dict:
    """`evaluate` with samples, written to out_dir by lm-eval's EvaluationTracker; prints
    lm-eval's table. Returns the results (without the samples)."""
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.utils import make_table
    tracker = EvaluationTracker(output_path=os.path.join(out_dir, "results.json"))
    results = evaluate(lm, tasks, manager, log_samples=True, evaluation_tracker=tracker,
                       **kwargs)
    samples = results.pop("samples")
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        tracker.save_results_aggregated(results=results, samples=samples)
        for task in results["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
        # The tracker logs and swallows write errors; a missing file must not pass silently.
        if not glob.glob(os.path.join(out_dir, f"results_{tracker.date_id}.json")):
            raise OSError(f"lm-eval could not write its results into {out_dir!r}")
        print(make_table(results), flush=True)
    return results


def evaluate_checkpoint(out_dir: str, *, checkpoint: str, vocab_path: str, tasks,
                        model: model_lib.ModelConfig, mesh: sharding.MeshConfig | None,
                        batch_size: int, max_gen_toks: int, limit: int | float | None,
                        num_fewshot: int | None, include_path=None, include_defaults: bool = True,
                        gen_kwargs: str | None = None) -> dict:
    """Runs lm-eval `tasks` on `checkpoint`; writes lm-eval's results and samples into
    out_dir and returns the flat metrics ({task}_{metric}[_{filter}] -> value)."""
    from slm_jax.evals.lm_eval_backend import SlmJaxLM
    names, manager = prepare_tasks(tasks, include_path, include_defaults)
    lm = SlmJaxLM.from_checkpoint(checkpoint, vocab_path, model, mesh=mesh,
                                  batch_size=batch_size, max_gen_toks=max_gen_toks)
    results = run_and_write(lm, names, manager, out_dir, limit=limit,
                            num_fewshot=num_fewshot, gen_kwargs=gen_kwargs)
    return scalar_metrics(results)


def scalar_metrics(results: dict) -> dict[str, float]:
    """{task}_{metric}[_{filter}] -> value, for every numeric metric but standard errors
    (e.g. gsm8k_cot_exact_match_strict-match, arc_easy_acc_norm)."""
    flat = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)):
                continue
            name = f"{task}_{metric}" if filter_name in ("", "none") else \
                f"{task}_{metric}_{filter_name}"
            flat[name] = float(value)
    return flat
