"""ModelConfig (slm_jax/model/config.py): bad values are one clear error naming the binding."""

import pytest

from slm_jax.cli_errors import with_flags
from tests.test_decoder import GIN_MODELS, load_config, tiny  # noqa: F401  (shared fixtures and helpers)


@pytest.mark.parametrize("overrides,binding", [
    ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ({"remat": "foo"}, "remat"),
    ({"dtype": "not_a_dtype"}, "dtype"),
])
def test_bad_config_names_the_binding(overrides, binding):
    with pytest.raises(ValueError, match=f"; set ModelConfig.{binding} to ") as error:
        load_config("tiny", **overrides)
    # The command line (slm_jax/main.py) prints the fix as a flag.
    assert f"; set --gin.ModelConfig.{binding} to " in with_flags(str(error.value), "--gin.")
