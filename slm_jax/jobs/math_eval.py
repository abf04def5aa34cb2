"""The `eval` job (few-shot GSM8K/MATH accuracy of a checkpoint) and its training hook.

    python -m slm_jax.main --gin_file=gin/models/small.gin --gin.run.job=eval \\
      --gin.math_eval.checkpoint=runs/x/checkpoints --gin.math_eval.vocab_path=spm.model \\
      --gin.math_eval.datasets=gsm8k=test.jsonl --gin.math_eval.out_dir=runs/x/eval
"""

from __future__ import annotations

import dataclasses
import os

import gin

from slm_jax import model as model_lib
from slm_jax.data import tokenizer
from slm_jax.math_eval import problems as data_lib
from slm_jax.math_eval import runner
from slm_jax.model.generate import Generator
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime


def _load_tokenizer(vocab_path: str, model: model_lib.ModelConfig, binding: str):
    if not vocab_path:
        raise ValueError(f"{binding} is not set; point it at the SentencePiece .model file")
    sp = tokenizer.load_vocabulary(vocab_path).tokenizer
    if sp.GetPieceSize() > model.vocab_size:
        raise ValueError(f"{binding}={vocab_path!r} has {sp.GetPieceSize()} pieces, more than "
                         f"ModelConfig.vocab_size={model.vocab_size}; use the model's tokenizer")
    return sp


@gin.configurable
def math_eval(out_dir: str = gin.REQUIRED, *,
              checkpoint: str = gin.REQUIRED,
              vocab_path: str = gin.REQUIRED,
              datasets=gin.REQUIRED,
              n_shot: int | None = None,
              num_problems: int | None = None,
              max_new_tokens: int = 512,
              batch_size: int = 16,
              exemplars: dict | None = None,
              model: model_lib.ModelConfig | None = None,
              mesh: sharding.MeshConfig | None = None) -> dict:
    """Greedy few-shot accuracy of `checkpoint` on jsonl datasets (harness formats).

    Args:
      out_dir: predictions_{name}.jsonl, results.json and results.md go here.
      checkpoint: a `train` run's checkpoints/ directory (latest step) or one step's dir.
      vocab_path: the model's SentencePiece model.
      datasets: {"gsm8k": "test.jsonl", ...} or "gsm8k=a.jsonl,math=b.jsonl".
      n_shot: exemplars per prompt; None: 8 for GSM8K-style, 4 for MATH-style data.
      num_problems: the first N problems of each dataset (None: all).
      exemplars: {name: jsonl of exemplars in the dataset's format}; default built-in.
    """
    model = model or model_lib.ModelConfig()
    runtime = Runtime.from_config(mesh)
    specs = data_lib.parse_datasets(datasets)
    for name, path in specs.items():
        if not os.path.exists(path):
            raise ValueError(f"math_eval.datasets: {name}={path!r} does not exist")
    sp = _load_tokenizer(vocab_path, model, "math_eval.vocab_path")
    with runtime.activate():
        params = runtime.restore_params(checkpoint, model, binding="math_eval.checkpoint")
        generator = Generator(model, mesh=runtime.mesh, rules=runtime.rules,
                              batch_size=batch_size)
        return runner.run(generator, params, sp, specs, out_dir, n_shot=n_shot,
                          num_problems=num_problems, max_new_tokens=max_new_tokens,
                          exemplars=exemplars,
                          info={"checkpoint": os.path.abspath(checkpoint)})


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
    exemplars: str | None = None   # jsonl of exemplars; default built-in

    def make_hook(self, context):
        """(params) -> {"{name}_accuracy": share correct}; the params keep their sharding.

        `context` is the trainer's EvalContext (slm_jax/jobs/train_hooks.py): the model
        and the training data's tokenizer."""
        model, vocab_path = context.model, context.data.vocab_path
        if not self.dataset or not os.path.exists(self.dataset):
            raise ValueError(f"FewShotEvalConfig.dataset={self.dataset!r} does not exist; set "
                             "--gin.FewShotEvalConfig.dataset to a GSM8K/MATH-style jsonl")
        sp = _load_tokenizer(vocab_path, model, "DataConfig.vocab_path")
        problems = data_lib.load_problems(self.dataset, self.num_problems)
        records = data_lib.read_jsonl(self.exemplars) if self.exemplars else None
        generator = Generator(model, batch_size=self.batch_size)  # mesh: the trainer's context

        def hook(params) -> dict:
            rows = runner.solve(generator, params, sp, problems, n_shot=self.n_shot,
                                max_new_tokens=self.max_new_tokens, exemplars=records)
            return {f"{self.name}_accuracy": runner.accuracy(rows)}
        return hook
