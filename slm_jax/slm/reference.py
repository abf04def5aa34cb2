"""The reference model of SLM: one gin binding for every job that runs it.

    ReferenceConfig.checkpoint = 'runs/ref/checkpoints'   # a reference `train` run
    ReferenceConfig.dtype = 'auto'                         # its forward's compute dtype
    ReferenceConfig.model = @reference/ModelConfig()       # only when it differs from the student
    ReferenceConfig.vocab_path = 'ref/tokenizer.json'      # checked to equal DataConfig.vocab_path's

`train` (mode slm), `score`, `analyze` and `bench` read it; every one of them gets the
model itself through `slm_jax.trainer.reference_model.load_reference`.
"""

from __future__ import annotations

import dataclasses

import gin

from slm_jax import hardware
from slm_jax import model as model_lib


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
