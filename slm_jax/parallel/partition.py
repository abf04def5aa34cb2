"""Shardings for the train state and the jitted, explicitly sharded step."""

from __future__ import annotations

import jax
from jax.sharding import Mesh, PartitionSpec as P

from slm_jax import model as model_lib
from slm_jax.data import BATCH_KEYS
from slm_jax.parallel import sharding
from slm_jax.slm.train_step import TrainState, init_train_state


# XLA's CPU scheduler that optimises for concurrency makes the train step ~10%
# slower on a 2-core host (python -m slm_jax.bench); other backends keep XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_enable_concurrency_optimized_scheduler": False}


def compiler_options(mesh: Mesh) -> dict | None:
    return CPU_COMPILER_OPTIONS if mesh.devices.flat[0].platform == "cpu" else None


def _state_logical_specs(abstract_state: TrainState, param_specs):
    """Optimizer moments and an in-state reference mirror the params' specs; scalars are
    replicated."""
    params_def = jax.tree.structure(abstract_state.params)

    def like_params(tree):
        return jax.tree.structure(tree) == params_def

    opt_specs = jax.tree.map(
        lambda sub: param_specs if like_params(sub) else jax.tree.map(lambda _: P(), sub),
        abstract_state.opt_state, is_leaf=like_params)
    ref_specs = None if abstract_state.ref_params is None else param_specs
    return TrainState(step=P(), params=param_specs, opt_state=opt_specs, ref_params=ref_specs)


def abstract_train_state(model_config, tx, self_reference=None) -> TrainState:
    return jax.eval_shape(lambda: init_train_state(model_config, tx, jax.random.key(0),
                                                   self_reference))


def state_shardings(model_config, tx, mesh: Mesh, rules=sharding.DEFAULT_RULES,
                    self_reference=None) -> TrainState:
    abstract = abstract_train_state(model_config, tx, self_reference)
    specs = _state_logical_specs(abstract, model_lib.logical_param_specs(model_config))
    return sharding.logical_to_shardings(specs, abstract, mesh, rules)


def init_state(model_config, tx, rng, shardings: TrainState,
               self_reference=None) -> TrainState:
    """Initialises params, optimizer state (and an in-state reference) directly into
    their shards."""
    with jax.set_mesh(shardings.step.mesh):
        return jax.jit(lambda r: init_train_state(model_config, tx, r, self_reference),
                       out_shardings=shardings)(rng)


def batch_shardings(mesh: Mesh, keys=BATCH_KEYS) -> dict:
    return {k: sharding.batch_sharding(mesh) for k in keys}


def jit_train_step(step_fn, state_sh: TrainState, ref_param_sh, mesh: Mesh,
                   batch_keys=BATCH_KEYS):
    """jax.jit with explicit in/out shardings; the old state is donated."""
    return jax.jit(step_fn,
                   in_shardings=(state_sh, ref_param_sh, batch_shardings(mesh, batch_keys)),
                   out_shardings=(state_sh, sharding.replicated(mesh)),
                   donate_argnums=(0,), compiler_options=compiler_options(mesh))


def jit_eval_step(eval_fn, param_sh, mesh: Mesh, out_sharding=None):
    return jax.jit(eval_fn, in_shardings=(param_sh, batch_shardings(mesh)),
                   out_shardings=out_sharding or sharding.replicated(mesh),
                   compiler_options=compiler_options(mesh))
