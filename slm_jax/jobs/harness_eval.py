"""lm-evaluation-harness tasks: the `eval` job's lm-eval mode and a training eval hook.

    python -m slm_jax.evaluate --ckpt_dir OUT/checkpoints --tokenizer OUT \\
      --tasks gsm8k_cot,minerva_math --out OUT/eval [--num_problems 100]

is `run.job = eval` with `math_eval.tasks` bound (slm_jax/jobs/math_eval.py passes it on
to `evaluate_checkpoint`). During training, `train.evals = [@HarnessEval()]` runs a few
documents of each task at every `train.eval_every` steps and logs their metrics as
eval_{task}_{metric}[_{filter}] beside the held-out loss.

lm-eval is imported only when a task runs: the other jobs do not need it installed.
"""

from __future__ import annotations

import dataclasses

import gin

from slm_jax import model as model_lib
from slm_jax.parallel import sharding


def _prepare_tasks(tasks, include_path, include_defaults: bool):
    """(task names, TaskManager), unknown names refused before any model work."""
    from slm_jax.evals import harness
    names = harness.parse_tasks(tasks)
    manager = harness.task_manager(include_path, include_defaults)
    harness.check_tasks(manager, names)
    return names, manager


def evaluate_checkpoint(out_dir: str, *, checkpoint: str, vocab_path: str, tasks,
                        model: model_lib.ModelConfig, mesh: sharding.MeshConfig | None,
                        batch_size: int, max_gen_toks: int, limit: int | float | None,
                        num_fewshot: int | None, include_path=None, include_defaults: bool = True,
                        gen_kwargs: str | None = None) -> dict:
    """Runs lm-eval `tasks` on `checkpoint`; writes lm-eval's results and samples into
    out_dir and returns the flat metrics ({task}_{metric}[_{filter}] -> value)."""
    from slm_jax.evals import harness
    from slm_jax.evals.lm_eval_backend import SlmJaxLM
    names, manager = _prepare_tasks(tasks, include_path, include_defaults)
    lm = SlmJaxLM.from_checkpoint(checkpoint, vocab_path, model, mesh=mesh,
                                  batch_size=batch_size, max_gen_toks=max_gen_toks)
    results = harness.run_and_write(lm, names, manager, out_dir, limit=limit,
                                    num_fewshot=num_fewshot, gen_kwargs=gen_kwargs)
    return harness.scalar_metrics(results)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class HarnessEval:
    """lm-eval tasks on the live params during training: `train.evals = [@HarnessEval()]`.

    Runs at every `train.eval_every` steps and at the end (few documents: `limit`), with
    the training tokenizer (DataConfig.vocab_path); logged as eval_{task}_{metric}.
    """

    tasks: str | tuple = ()             # "gsm8k_cot,minerva_math" or a list of names
    limit: int | None = 16              # documents per task (None: all of them)
    num_fewshot: int | None = None      # None: each task's own
    include_path: str | None = None     # a directory of your own task YAMLs
    include_defaults: bool = True       # False: only include_path's tasks (faster start)
    gen_kwargs: str | None = None       # e.g. "max_gen_toks=128"; overrides the tasks'
    max_gen_toks: int = 256             # for tasks that set none
    batch_size: int = 16

    def make_hook(self, context):
        """(params) -> flat lm-eval metrics; `context` is the trainer's EvalContext."""
        from slm_jax.data.tokenizer import load_vocabulary
        from slm_jax.evals import harness
        from slm_jax.evals.lm_eval_backend import SlmJaxLM
        names, manager = _prepare_tasks(self.tasks, self.include_path, self.include_defaults)
        vocab = load_vocabulary(context.data.vocab_path)
        lm = SlmJaxLM(None, context.model, vocab, runtime=context.runtime,
                      batch_size=self.batch_size, max_gen_toks=self.max_gen_toks)

        def hook(params) -> dict:
            lm.params = params
            results = harness.evaluate(lm, names, manager, limit=self.limit,
                                       num_fewshot=self.num_fewshot, gen_kwargs=self.gen_kwargs,
                                       log_samples=False, bootstrap_iters=0,
                                       keep_global_seeds=True)
            return harness.scalar_metrics(results)
        return hook

