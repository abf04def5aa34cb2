"""The one setup path of every job: the device mesh, its logical rules, the shardings
derived from them, the activation-sharding context and restoring params into shards.

    runtime = Runtime.from_config(mesh_config)
    with runtime.activate():
        params = runtime.restore_params(path, model_config, binding="train.init_checkpoint")
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from slm_jax import model as model_lib
from slm_jax.parallel import checkpoint as ckpt_lib
from slm_jax.parallel import partition, sharding


@dataclasses.dataclass(frozen=True)
class Runtime:
    mesh: Mesh
    rules: tuple = sharding.DEFAULT_RULES

    @classmethod
    def from_config(cls, config: sharding.MeshConfig | None = None, devices=None) -> "Runtime":
        config = config or sharding.MeshConfig()
        return cls(sharding.make_mesh(config, devices), config.rules)

    @property
    def data_parallel_size(self) -> int:
        return sharding.data_parallel_size(self.mesh)

    def batch_sharding(self) -> NamedSharding:
        return sharding.batch_sharding(self.mesh)

    def replicated(self) -> NamedSharding:
        return sharding.replicated(self.mesh)

    def param_shardings(self, model_config: model_lib.ModelConfig):
        return sharding.param_shardings(model_config, self.mesh, self.rules)

    def state_shardings(self, model_config: model_lib.ModelConfig, tx, self_reference=None):
        return partition.state_shardings(model_config, tx, self.mesh, self.rules,
                                         self_reference)

    @contextlib.contextmanager
    def activate(self):
        """The context in which the model's logical activation constraints apply."""
        with sharding.activation_sharding(self.mesh, self.rules):
            yield self

    def cast(self, params, dtype, shardings):
        """`params` in `dtype`, keeping `shardings` (e.g. a frozen reference in bf16)."""
        dtype = jnp.dtype(dtype)
        return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p),
                       out_shardings=shardings)(params)

    def restore_params(self, path: str, model_config: model_lib.ModelConfig, *, binding: str,
                       dtype=None):
        """The latest params under `path` (a checkpoints/ dir or one step's), sharded like
        `model_config`'s and cast to `dtype` when given; errors name `binding`."""
        shardings = self.param_shardings(model_config)
        params = ckpt_lib.restore_params(path, model_lib.abstract_params(model_config),
                                         shardings, binding=binding)
        return params if dtype is None else self.cast(params, dtype, shardings)

    def jit_eval(self, fn, model_config: model_lib.ModelConfig, out_sharding=None):
        """jax.jit of `fn(params, batch)` with the params and batch sharded like training."""
        return partition.jit_eval_step(fn, self.param_shardings(model_config), self.mesh,
                                       out_sharding=out_sharding)
