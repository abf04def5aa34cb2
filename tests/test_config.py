"""ModelConfig (slm_jax/model/config.py): bad values are one clear error naming the binding."""

import pytest

from tests.test_decoder import GIN_MODELS, load_config, tiny  # noqa: F401  (shared fixtures and helpers)


@pytest.mark.parametrize("overrides,binding", [
    ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ({"remat": "foo"}, "remat"),
    ({"dtype": "not_a_dtype"}, "dtype"),
])
def test_bad_config_names_the_binding(overrides, binding):
    with pytest.raises(ValueError, match=f"--gin.ModelConfig.{binding}"):
        load_config("tiny", **overrides)
