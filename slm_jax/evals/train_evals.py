"""Accuracy evals during training: hooks for `train.few_shot_eval` and `train.evals`.

    FewShotEvalConfig  built-in few-shot math prompts (slm_jax/math_eval/) on a GSM8K/MATH-
                       style jsonl: `train.few_shot_eval = @FewShotEvalConfig()`
    HarnessEval        lm-evaluation-harness tasks on a few documents each:
                       `train.evals = [@HarnessEval()]`
    ToraEval           tool-integrated accuracy (the harness's `tora` mode, programs in
                       the box): `train.evals = [@ToraEval()]`

Each is a frozen gin configurable with `make_hook(context)`: the trainer builds the hook
once from its EvalContext (slm_jax/trainer/hooks.py: the model, the training data and its
tokenizer, the runtime) and calls it with the live params at every `train.eval_every`
steps and at the end; the returned metrics are logged as eval_{name} beside the held-out
loss. The `eval` job (slm_jax/jobs/evaluation.py) scores a saved checkpoint the same ways.

lm-eval is imported only when a HarnessEval hook is built: training does not need it.
"""

from __future__ import annotations

import dataclasses
import os

import gin

from slm_jax import model as model_lib
from slm_jax.data import chat, tokenizer
from slm_jax.math_eval import problems as data_lib
from slm_jax.math_eval import prompts, runner, tora
from slm_jax.model.generate import Generator


def load_tokenizer(vocab_path: str, model: model_lib.ModelConfig, binding: str):
    """The SentencePiece face of the tokenizer at `vocab_path`, refused (naming `binding`)
    when unset or when it has more pieces than `model` has embeddings."""
    if not vocab_path:
        raise ValueError(f"{binding} is not set; point it at the model's tokenizer (a "
                         "SentencePiece .model, or a tokenizer.json or its directory)")
    sp = tokenizer.load_vocabulary(vocab_path).tokenizer
    if sp.GetPieceSize() > model.vocab_size:
        raise ValueError(f"{binding}={vocab_path!r} has {sp.GetPieceSize()} pieces, more than "
                         f"ModelConfig.vocab_size={model.vocab_size}; use the model's tokenizer")
    return sp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FewShotEvalConfig:
    """Few-shot accuracy during training: `train.few_shot_eval = @FewShotEvalConfig()`.

    Runs at every `train.eval_every` steps and at the end, beside the held-out loss;
    logged as eval_{name}_accuracy in eval.jsonl and TensorBoard.
    """

    dataset: str = ""              # jsonl in a harness format (GSM8K or MATH style)
    name: str = "gsm8k"
    num_problems: int = 32
    n_shot: int | None = None      # None: 8 (GSM8K style) / 4 (MATH style)
    max_new_tokens: int = 256
    batch_size: int = 32
    exemplars: str | None = None   # jsonl of question/answer exemplars; default built-in

    def make_hook(self, context):
        """(params) -> {"{name}_accuracy": share correct}; the params keep their sharding.

        `context` is the trainer's EvalContext (slm_jax/trainer/hooks.py): the model, the
        training data's tokenizer and the runtime (its mesh places the prompt batches)."""
        model, vocab_path = context.model, context.data.vocab_path
        if not self.dataset or not os.path.exists(self.dataset):
            raise ValueError(f"FewShotEvalConfig.dataset={self.dataset!r} does not exist; set "
                             "FewShotEvalConfig.dataset to a GSM8K/MATH-style jsonl")
        sp = load_tokenizer(vocab_path, model, "DataConfig.vocab_path")
        problems = data_lib.load_problems(self.dataset, self.num_problems)
        records = prompts.load_exemplars(self.exemplars) if self.exemplars else None
        generator = Generator(model, placement=context.runtime, batch_size=self.batch_size)

        def hook(params) -> dict:
            rows = runner.solve(generator, params, sp, problems, n_shot=self.n_shot,
                                max_new_tokens=self.max_new_tokens, exemplars=records)
            return {f"{self.name}_accuracy": runner.accuracy(rows)}
        return hook


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ToraEval:
    """Tool-integrated accuracy during training (the SFT job's Interpreter models):
    `train.evals = [@ToraEval()]`; the harness's `tora` round loop (math_eval/tora.py), the
    model's programs run in the box. Logged as eval_{name}_tora_acc and
    eval_{name}_tora_program_ran_share."""

    dataset: str = ""              # jsonl of {question, answer} or {problem, solution}
    name: str = "heldout"
    num_problems: int = 32
    max_new_tokens: int = 256
    max_rounds: int = tora.MAX_ROUNDS
    batch_size: int = 32

    def make_hook(self, context):
        if not self.dataset or not os.path.exists(self.dataset):
            raise ValueError(f"ToraEval.dataset={self.dataset!r} does not exist; set "
                             "ToraEval.dataset to a GSM8K/MATH-style jsonl")
        sp = load_tokenizer(context.data.vocab_path, context.model, "DataConfig.vocab_path")
        problems = data_lib.load_problems(self.dataset, self.num_problems)
        generator = Generator(context.model, placement=context.runtime,
                              batch_size=self.batch_size)
        template = chat.ChatTemplate().resolved(context.data.vocab_path)

        def hook(params) -> dict:
            rows = tora.solve(generator, params, sp, problems, template,
                              max_new_tokens=self.max_new_tokens, max_rounds=self.max_rounds)
            result = tora.metrics(rows)
            return {f"{self.name}_tora_acc": result["acc"],
                    f"{self.name}_tora_program_ran_share": result["program_ran_share"]}
        return hook


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
        from slm_jax.evals import harness
        from slm_jax.evals.lm_eval_backend import SlmJaxLM
        names, manager = harness.prepare_tasks(self.tasks, self.include_path,
                                               self.include_defaults)
        vocab = tokenizer.load_vocabulary(context.data.vocab_path)
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
