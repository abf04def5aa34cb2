"""ModelConfig (slm_jax/model/config.py): bad values are one clear error naming the binding."""
import dataclasses
import pathlib

import gin
import jax
import pytest

from slm_jax import model

GIN_MODELS = pathlib.Path(__file__).resolve().parents[1] / "gin" / "models"


def load_config(name: str, **overrides) -> model.ModelConfig:
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN_MODELS / f"{name}.gin"))
        config = model.ModelConfig()
    finally:
        gin.clear_config()
    return dataclasses.replace(config, **overrides)


@pytest.fixture(scope="module")
def tiny():
    config = load_config("tiny")
    return config, model.init_params(config, jax.random.key(0))


@pytest.mark.parametrize("overrides,binding", [
    ({"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ({"remat": "foo"}, "remat"),
    ({"dtype": "not_a_dtype"}, "dtype"),
])
def test_bad_config_names_the_binding(overrides, binding):
    with pytest.raises(ValueError, match=f"--gin.ModelConfig.{binding}"):
        load_config("tiny", **overrides)
