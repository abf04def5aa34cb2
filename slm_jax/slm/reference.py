"""The reference model of SLM: one gin binding for every job that runs it.

    ReferenceConfig.checkpoint = 'runs/ref/checkpoints'   # a reference `train` run
    ReferenceConfig.dtype = 'auto'                         # its forward's compute dtype
    ReferenceConfig.model = @reference/ModelConfig()       # only when it differs from the student
    ReferenceConfig.vocab_path = 'ref/tokenizer.json'      # checked to equal DataConfig.vocab_path's

`train` (mode slm), `score`, `analyze` and `bench` read it; every one of them gets the
model itself through `slm_jax.trainer.reference_model.load_reference`.

Self-reference (ssToken, arXiv 2510.18250: "retrospective excess loss"): with
`source='ema'` or `'snapshot'` there is no reference run; the reference is the student's
own history, kept in the train state (`TrainState.ref_params`, sharded like the params,
checkpointed with them):

    ReferenceConfig.source = 'ema'          # ref <- decay * ref + (1 - decay) * params, each step
    ReferenceConfig.ema_decay = 0.999
    ReferenceConfig.source = 'snapshot'     # ref <- params after every `snapshot_every`-th step
    ReferenceConfig.snapshot_every = 1000

Both start from the student's initial params, so the first steps' excess losses are ~0
(ties rank by position) until the student moves away from its history.
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import optax

from slm_jax import hardware
from slm_jax import model as model_lib


SOURCES = ("checkpoint", "ema", "snapshot")


@dataclasses.dataclass(frozen=True)
class SelfReference:
    """A reference kept in the train state: the student's params' EMA or last snapshot.

    The EMA is kept in the params' dtype (a bf16 average would round away updates of
    size (1 - decay) * step); a snapshot is stored in the forward's `dtype`, as a
    checkpoint reference is. The step casts either to `dtype` for the forward."""

    kind: str            # "ema" | "snapshot"
    decay: float
    every: int
    dtype: str           # the reference forward's compute dtype

    def stored_dtype(self, params_dtype):
        return params_dtype if self.kind == "ema" else self.dtype

    def initial(self, params):
        """The reference at step 0 (or on resuming a checkpoint written without one)."""
        return jax.tree.map(lambda x: x.astype(self.stored_dtype(x.dtype)), params)

    def update(self, ref, params, steps_done):
        """The reference after step `steps_done` (1-based), given the updated params."""
        if self.kind == "ema":
            return optax.incremental_update(params, ref, 1.0 - self.decay)
        return optax.periodic_update(self.initial(params), ref, steps_done, self.every)

    def describe(self) -> str:
        return (f"EMA of the student's params (decay {self.decay})" if self.kind == "ema"
                else f"snapshot of the student's params every {self.every} steps")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """The frozen reference model: its checkpoint, architecture and forward dtype."""

    checkpoint: str | None = None          # checkpoints/ of a reference run (or one step's dir)
    model: model_lib.ModelConfig | None = None   # None: the student's ModelConfig
    # Params cast to it; matmuls and activations run in it. "auto": bf16 on TPU/GPU and on
    # CPUs whose bf16 matmuls measure faster than fp32 (AVX512-BF16), fp32 otherwise.
    dtype: str = "auto"
    # The tokenizer the reference was trained with; None: DataConfig.vocab_path. Only
    # checked (trainer/checks.py): excess loss needs the student's tokens, id for id.
    vocab_path: str | None = None
    # Where the reference's params come from: "checkpoint" (a reference run), or the
    # student's own history kept in the train state: "ema" or "snapshot".
    source: str = "checkpoint"
    ema_decay: float = 0.999        # source "ema"
    snapshot_every: int = 1000      # source "snapshot": steps between snapshots

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"ReferenceConfig.source={self.source!r} is not one of {SOURCES}; "
                             "set ReferenceConfig.source='checkpoint' (a reference run).")
        if self.source == "ema" and not (isinstance(self.ema_decay, float)
                                         and 0.0 < self.ema_decay < 1.0):
            raise ValueError(f"ReferenceConfig.ema_decay={self.ema_decay!r} must be a float in "
                             "(0, 1); set e.g. ReferenceConfig.ema_decay=0.999.")
        if self.source == "snapshot" and (isinstance(self.snapshot_every, bool) or not isinstance(
                self.snapshot_every, int) or self.snapshot_every < 1):
            raise ValueError(f"ReferenceConfig.snapshot_every={self.snapshot_every!r} must be an "
                             "int >= 1; set e.g. ReferenceConfig.snapshot_every=1000.")
        if self.source != "checkpoint" and (self.checkpoint or self.model):
            which = "checkpoint" if self.checkpoint else "model"
            raise ValueError(f"ReferenceConfig.source={self.source!r} takes the reference from the "
                             f"student's own params, so ReferenceConfig.{which} is not used: unset "
                             "it, or set ReferenceConfig.source='checkpoint'.")

    def self_reference(self) -> SelfReference | None:
        """The in-state reference of source "ema"/"snapshot"; None for a checkpoint."""
        if self.source == "checkpoint":
            return None
        return SelfReference(self.source, self.ema_decay, self.snapshot_every,
                             self.resolved_dtype)

    @property
    def resolved_dtype(self) -> str:
        return hardware.fastest_forward_dtype() if self.dtype == "auto" else self.dtype

    def model_config(self, student: model_lib.ModelConfig) -> model_lib.ModelConfig:
        return self.model or student

    def forward_config(self, student: model_lib.ModelConfig) -> model_lib.ModelConfig:
        """The reference's ModelConfig computing in `dtype` (norms, softmax and loss stay fp32)."""
        return model_lib.computing_in(self.model_config(student), self.resolved_dtype,
                                      "ReferenceConfig.dtype")

    def check_compatible(self, student: model_lib.ModelConfig) -> None:
        """Excess loss compares the two models token by token: one vocabulary."""
        reference = self.model_config(student)
        if reference.vocab_size != student.vocab_size:
            raise ValueError(
                f"reference vocab_size {reference.vocab_size} != student vocab_size "
                f"{student.vocab_size}; excess loss compares the two per token, so both need "
                "the same tokenizer: train the reference with the student's vocabulary (or set "
                "ReferenceConfig.model's vocab_size to match).")
