"""AdamW with linear warm-up, cosine decay and global-norm clipping (all optax)."""

from __future__ import annotations

import dataclasses
import math

import gin
import jax
import optax


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Defaults follow Rho-1's 1B recipe (lr 8e-5, cosine)."""

    learning_rate: float = 8e-5
    warmup_steps: int = 0
    end_lr_ratio: float = 0.1      # the decay ends at learning_rate * end_lr_ratio
    decay: str = "cosine"          # or "linear" (ToRA's SFT recipe)
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0

    def __post_init__(self):
        def number(name, low, high, *, low_open=False, high_open=False):
            value = getattr(self, name)
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and (value > low if low_open else value >= low)
                  and (value < high if high_open else value <= high))
            if not ok:
                bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                raise ValueError(f"OptimizerConfig.{name}={value!r} must be a finite number in "
                                 f"{bounds}; set OptimizerConfig.{name}.")
        number("learning_rate", 0.0, math.inf, low_open=True, high_open=True)
        number("end_lr_ratio", 0.0, 1.0)
        number("b1", 0.0, 1.0, high_open=True)
        number("b2", 0.0, 1.0, high_open=True)
        number("eps", 0.0, math.inf, high_open=True)
        number("weight_decay", 0.0, math.inf, high_open=True)
        number("clip_norm", 0.0, math.inf, low_open=True, high_open=True)
        if self.decay not in ("cosine", "linear"):
            raise ValueError(f"OptimizerConfig.decay={self.decay!r}; set OptimizerConfig.decay "
                             "to 'cosine' or 'linear'.")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or self.warmup_steps < 0:
            raise ValueError(f"OptimizerConfig.warmup_steps={self.warmup_steps!r} must be an int "
                             ">= 0; set OptimizerConfig.warmup_steps.")


def make_schedule(config: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    if config.decay == "linear":
        end = config.learning_rate * config.end_lr_ratio
        return optax.join_schedules(
            [optax.linear_schedule(0.0 if warmup else config.learning_rate,
                                   config.learning_rate, max(warmup, 1)),
             optax.linear_schedule(config.learning_rate, end, max(total_steps - warmup, 1))],
            boundaries=[warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else config.learning_rate,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=config.learning_rate * config.end_lr_ratio)


def _decay_mask(params):
    # Norm scales (1-D) are not decayed, as in Llama training recipes.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimizerConfig, total_steps: int):
    """Returns (optax transformation, learning-rate schedule)."""
    schedule = make_schedule(config, total_steps)
    tx = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                    weight_decay=config.weight_decay, mask=_decay_mask))
    return tx, schedule
