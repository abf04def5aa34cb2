"""The `eval` job: few-shot accuracy of a checkpoint (`run.job = eval`, bindings `eval.*`).

Two sources of problems:

* built-in: GSM8K/MATH-style jsonl files (`datasets`), math-evaluation-harness prompts,
  graded by slm_jax/math_eval/grader.py:

    python -m slm_jax.main --gin_file=gin/models/small.gin --gin.run.job=eval \\
      --gin.eval.checkpoint=runs/x/checkpoints --gin.eval.vocab_path=spm.model \\
      --gin.eval.datasets=gsm8k=test.jsonl --gin.eval.out_dir=runs/x/eval

* lm-evaluation-harness tasks (`tasks`, e.g. gsm8k_cot,minerva_math) through the slm_jax
  backend (slm_jax/evals/harness.py): --gin.eval.tasks=gsm8k_cot instead of datasets;
  lm-eval's results_*.json and samples_*.jsonl go to out_dir.

The same evals during training are hooks in slm_jax/evals/train_evals.py.
"""

from __future__ import annotations

import os

import gin

from slm_jax import model as model_lib
from slm_jax.data import chat
from slm_jax.evals import harness
from slm_jax.evals.train_evals import load_tokenizer
from slm_jax.math_eval import problems as data_lib
from slm_jax.math_eval import runner, tora
from slm_jax.model.generate import Generator
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime

BUILT_IN_MAX_NEW_TOKENS, LM_EVAL_MAX_GEN_TOKS = 512, 256


def _check_source(datasets, tasks, data_dir=None) -> None:
    if data_dir is not None and (datasets is None) and tasks is None:
        return
    if (datasets is None) == (tasks is None):
        raise ValueError("set exactly one of eval.datasets (GSM8K/MATH jsonl files, "
                         "built-in prompts) and eval.tasks (lm-eval task names, e.g. "
                         "--gin.eval.tasks=gsm8k_cot)")


@gin.configurable("eval")
def evaluate(out_dir: str = gin.REQUIRED, *,
             checkpoint: str = gin.REQUIRED,
             vocab_path: str = gin.REQUIRED,
             datasets=None,
             tasks=None,
             n_shot: int | None = None,
             num_problems: int | None = None,
             max_new_tokens: int | None = None,
             batch_size: int = 16,
             exemplars: dict | None = None,
             include_path: str | None = None,
             include_defaults: bool = True,
             gen_kwargs: str | None = None,
             model: model_lib.ModelConfig | None = None,
             mesh: sharding.MeshConfig | None = None,
             prompt_type: str = "cot",
             data_dir: str | None = None,
             data_names: str = "gsm8k,math",
             max_rounds: int = tora.MAX_ROUNDS,
             template: chat.ChatTemplate | None = None) -> dict:
    """Few-shot accuracy of `checkpoint` on jsonl `datasets` or on lm-eval `tasks`.

    Args:
      out_dir: built-in: predictions_{name}.jsonl, results.json and results.md; lm-eval:
        its results_{date}.json and samples_{task}_{date}.jsonl.
      checkpoint: a `train` run's checkpoints/ directory (latest step) or one step's dir.
      vocab_path: the model's tokenizer (SentencePiece .model, tokenizer.json or its dir).
      datasets: {"gsm8k": "test.jsonl", ...} or "gsm8k=a.jsonl,math=b.jsonl".
      tasks: lm-eval task names, "gsm8k_cot,minerva_math" or a list (instead of datasets).
      n_shot: exemplars per prompt; None: 8 for GSM8K-style, 4 for MATH-style data, each
        lm-eval task's own number.
      num_problems: the first N problems of each dataset or task (None: all).
      max_new_tokens: tokens to generate; None: 512 (built-in), lm-eval tasks' own or 256.
      exemplars: {name: jsonl of exemplars (prompts.load_exemplars)}; default built-in.
      include_path, include_defaults: lm-eval: a directory of your own task YAMLs, and
        whether lm-eval's built-in tasks are indexed too.
      gen_kwargs: lm-eval: generation settings over the tasks' ("max_gen_toks=128").
      prompt_type: 'cot' (few-shot, built-in prompts) or 'tora' (the harness's tool-integrated
        mode: the chat prompt, programs run in the box; slm_jax/math_eval/tora.py), with
        `max_rounds` executions and `template` (ChatTemplate, the SFT job's rendering).
      data_dir, data_names: a math-evaluation-harness `data/` directory and the benchmarks
        in it to read (`<name>/test.jsonl`), instead of `datasets`.
    """
    if prompt_type not in ("cot", "tora"):
        raise ValueError(f"eval.prompt_type={prompt_type!r}; set eval.prompt_type to 'cot' or "
                         "'tora'.")
    _check_source(datasets, tasks, data_dir)
    model = model or model_lib.ModelConfig()
    if tasks is not None:
        return harness.evaluate_checkpoint(
            out_dir, checkpoint=checkpoint, vocab_path=vocab_path, tasks=tasks, model=model,
            mesh=mesh, batch_size=batch_size, max_gen_toks=max_new_tokens or LM_EVAL_MAX_GEN_TOKS,
            limit=num_problems, num_fewshot=n_shot, include_path=include_path,
            include_defaults=include_defaults, gen_kwargs=gen_kwargs)
    runtime = Runtime.from_config(mesh)
    specs = (tora.harness_datasets(data_dir, data_names.split(",")) if data_dir is not None
             else data_lib.parse_datasets(datasets))
    for name, path in specs.items():
        if not os.path.exists(path):
            raise ValueError(f"eval.datasets: {name}={path!r} does not exist")
    sp = load_tokenizer(vocab_path, model, "eval.vocab_path")
    with runtime.activate():
        params = runtime.restore_params(checkpoint, model, binding="eval.checkpoint")
        generator = Generator(model, placement=runtime, batch_size=batch_size)
        if prompt_type == "tora":
            template = (template or chat.ChatTemplate()).resolved(vocab_path)
            return _tora(generator, params, sp, specs, out_dir, template,
                         num_problems=num_problems, max_rounds=max_rounds,
                         max_new_tokens=max_new_tokens or tora.MAX_NEW_TOKENS,
                         info={"checkpoint": os.path.abspath(checkpoint)})
        return runner.run(generator, params, sp, specs, out_dir, n_shot=n_shot,
                          num_problems=num_problems,
                          max_new_tokens=max_new_tokens or BUILT_IN_MAX_NEW_TOKENS,
                          exemplars=exemplars,
                          info={"checkpoint": os.path.abspath(checkpoint)})


def _tora(generator, params, sp, specs: dict, out_dir: str, template, *, num_problems,
          max_rounds: int, max_new_tokens: int, info: dict) -> dict:
    """Tool-integrated accuracy per dataset: samples.jsonl and metrics.json each."""
    results = {}
    for name, path in specs.items():
        problems = data_lib.load_problems(path, num_problems)
        rows = tora.solve(generator, params, sp, problems, template, max_new_tokens=max_new_tokens,
                          max_rounds=max_rounds)
        results[name] = tora.write(out_dir, name, rows, {**info, "data": path,
                                                          "max_rounds": max_rounds,
                                                          "max_new_tokens": max_new_tokens})
        print(f"[eval] {name} (tora): {results[name]['acc']:.1%} +- "
              f"{results[name]['acc_stderr']:.1%} of {len(rows)}; a program ran in "
              f"{results[name]['program_ran_share']:.0%}", flush=True)
    return results
