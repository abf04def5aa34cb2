"""The reference model of SLM, loaded: the one way any job gets a reference and its
per-token losses (train's step, score, analyze, bench).

    ref = load_reference(ReferenceConfig(...), student_config, runtime)
    losses = ref.per_token_losses(runtime)        # jitted: batch -> loss_BT (0 off-weight)
    step = make_train_step(..., reference_model_config=ref.forward)  # ref.params into the step

Sources: the latest checkpoint under `ReferenceConfig.checkpoint` (the default) or a random
init (`init_seed`: the bench times, it does not learn). A reference whose params live in
the train state (ReferenceConfig.source "ema"/"snapshot") is one more source: a
LoadedReference with `params=None` and its `self_reference`; the step reads the params
from the state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from slm_jax import model as model_lib
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.train_step import make_score_step
from slm_jax.trainer import flops


@dataclasses.dataclass(frozen=True)
class LoadedReference:
    """A frozen reference ready to score: params in their shards and the config its
    forward runs with (ReferenceConfig.model, or the student's, in the chosen dtype)."""

    forward: model_lib.ModelConfig
    params: object           # cast to forward.dtype, sharded like `shardings`
    shardings: object
    source: str              # where the params came from, for run records and logs
    # Set for ReferenceConfig.source "ema"/"snapshot": `params` is None, the train
    # state holds them (TrainState.ref_params).
    self_reference: object = None

    def per_token_losses(self, runtime, out_sharding=None) -> Callable:
        """batch -> the reference's loss [B, T] float32, zero where loss_weights is 0
        (replicated, or `out_sharding`)."""
        score = runtime.jit_eval(make_score_step(self.forward), self.forward,
                                 out_sharding=out_sharding)
        return lambda batch: score(self.params, batch)

    def forward_flops_per_token(self, seq_len: int) -> float:
        return flops.forward_flops_per_token(self.forward, seq_len)


def load_reference(config: ReferenceConfig, student: model_lib.ModelConfig, runtime, *,
                   dtype: str | None = None, init_seed: int | None = None,
                   in_state: bool = False) -> LoadedReference:
    """The reference of `config` beside `student`, restored into its shards.

    dtype: overrides `config.dtype` (analyze asks for "float32": its page shows the stored
      params' own losses).
    init_seed: random params from this seed instead of the checkpoint.
    in_state: the caller's step reads an EMA/snapshot reference from its train state
      (the train job); elsewhere ReferenceConfig.source must be "checkpoint".
    """
    config.check_compatible(student)
    forward = (model_lib.computing_in(config.model_config(student), dtype, "dtype") if dtype
               else config.forward_config(student))
    shardings = runtime.param_shardings(forward)
    self_reference = config.self_reference()
    if self_reference is not None and not in_state:
        raise ValueError(f"ReferenceConfig.source={config.source!r} is the student's own "
                         "history, which exists only inside a train run; this job scores with "
                         "a stored reference: set ReferenceConfig.source='checkpoint' and "
                         "ReferenceConfig.checkpoint.")
    if self_reference is not None:  # the step reads it from the train state
        return LoadedReference(forward, None, shardings, self_reference.describe(),
                               self_reference)
    if init_seed is not None:
        params = jax.jit(lambda r: model_lib.init_params(forward, r),
                         out_shardings=shardings)(jax.random.key(init_seed))
        params = runtime.cast(params, forward.dtype, shardings)
        return LoadedReference(forward, params, shardings, f"random init (seed {init_seed})")
    if not config.checkpoint:
        raise ValueError("the reference model's checkpoint is not set: set "
                         "ReferenceConfig.checkpoint to the checkpoints/ directory of a "
                         "reference `train` run.")
    params = runtime.restore_params(config.checkpoint, forward,
                                    binding="ReferenceConfig.checkpoint", dtype=forward.dtype)
    return LoadedReference(forward, params, shardings, config.checkpoint)
