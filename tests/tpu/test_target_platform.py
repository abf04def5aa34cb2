"""The platform a program is built for is the mesh's (slm_jax/hardware.py), with a TPU mesh
from libtpu on this CPU host."""

import jax

from slm_jax import hardware
from slm_jax.parallel import topology


def test_the_target_platform_is_the_meshs_not_the_process_default():
    tpu = topology.tpu_devices("v5e:2x2")
    assert hardware.target_platform() == "cpu"
    with jax.set_mesh(jax.make_mesh((4,), ("x",), devices=tpu)):
        assert hardware.target_device() == ("tpu", "TPU v5 lite")
        traced = []
        jax.jit(lambda: traced.append(hardware.target_platform())).trace()
        assert traced == ["tpu"]     # what the model's kernel choices see while tracing
        # a TPU compile needs bf16 references without timing this CPU
        assert hardware.fastest_forward_dtype() == "bfloat16"
    assert hardware.target_platform() == "cpu"
