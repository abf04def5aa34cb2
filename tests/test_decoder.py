"""The decoder (slm_jax/model/decoder.py): shapes, packing, causality, RoPE, scan/remat, sharding under logical rules."""
import dataclasses
import functools
import pathlib
import time

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import model
from slm_jax.model import decoder
from slm_jax.slm.losses import per_token_loss

GIN_MODELS = pathlib.Path(__file__).resolve().parents[1] / "gin" / "models"


def load_config(name: str, **overrides) -> model.ModelConfig:
    gin.clear_config()
    try:
        gin.parse_config_file(str(GIN_MODELS / f"{name}.gin"))
        config = model.ModelConfig()
    finally:
        gin.clear_config()
    return dataclasses.replace(config, **overrides)


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, tokens_BT, positions_BT, segment_ids_BT):
    return model.Decoder(config).apply({"params": params}, tokens_BT, positions_BT, segment_ids_BT)


def forward(config, params, tokens_BT, positions_BT=None, segment_ids_BT=None):
    return _forward(config, params, tokens_BT, positions_BT, segment_ids_BT)


def random_tokens(config, shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, config.vocab_size)


@pytest.fixture(scope="module")
def tiny():
    config = load_config("tiny")
    return config, model.init_params(config, jax.random.key(0))


# The counts the model cards publish (HF `num_parameters()` of the released checkpoints).
@pytest.mark.parametrize("name,expected", [("tinyllama_1b", 1_100_048_384),
                                           ("mistral_7b", 7_241_732_096),
                                           ("smollm2_135m", 134_515_008),
                                           ("qwen2_5_1_5b", 1_543_714_304),
                                           ("llama3_2_1b", 1_235_814_400),
                                           ("qwen3_0_6b", 596_049_920)])
def test_count_params_exact_without_allocating(name, expected):
    config = load_config(name)
    live_before = sum(a.nbytes for a in jax.live_arrays())
    start = time.perf_counter()
    assert model.count_params(config) == expected
    assert time.perf_counter() - start < 20.0
    live_after = sum(a.nbytes for a in jax.live_arrays())
    assert live_after - live_before < 1 << 20  # a real init would hold GBs


def test_forward_shape_dtype_and_finite(tiny):
    config, params = tiny
    tokens = random_tokens(config, (2, 16))
    hidden = forward(config, params, tokens)
    assert hidden.shape == (2, 16, config.d_model) and hidden.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(hidden)))
    logits = model.logits(params, config, tokens)
    assert logits.shape == (2, 16, config.vocab_size) and logits.dtype == jnp.float32

    bf16 = dataclasses.replace(config, dtype="bfloat16")
    hidden_bf16 = forward(bf16, params, tokens)
    assert hidden_bf16.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(hidden_bf16)))


def test_packed_segments_match_separate_documents(tiny):
    config, params = tiny
    len_a, len_b, len_pad = 5, 7, 4
    doc_a = random_tokens(config, (1, len_a), seed=2)
    doc_b = random_tokens(config, (1, len_b), seed=3)
    packed = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, len_pad), jnp.int32)], axis=1)
    segment_ids = jnp.array([[1] * len_a + [2] * len_b + [0] * len_pad])
    positions = jnp.array([list(range(len_a)) + list(range(len_b)) + list(range(len_pad))])

    hidden = forward(config, params, packed, positions, segment_ids)
    assert bool(jnp.all(jnp.isfinite(hidden)))  # padding (segment 0) rows included
    np.testing.assert_allclose(hidden[:, :len_a], forward(config, params, doc_a), atol=1e-5)
    np.testing.assert_allclose(hidden[:, len_a:len_a + len_b], forward(config, params, doc_b),
                               atol=1e-5)

    changed_a = packed.at[:, :len_a].set((packed[:, :len_a] + 1) % config.vocab_size)
    hidden_changed = forward(config, params, changed_a, positions, segment_ids)
    assert not np.allclose(hidden_changed[:, :len_a], hidden[:, :len_a])
    np.testing.assert_allclose(hidden_changed[:, len_a:len_a + len_b],
                               hidden[:, len_a:len_a + len_b], atol=1e-5)


def test_causal(tiny):
    config, params = tiny
    tokens = random_tokens(config, (2, 12))
    changed = tokens.at[:, 8].set((tokens[:, 8] + 1) % config.vocab_size)
    hidden, hidden_changed = forward(config, params, tokens), forward(config, params, changed)
    np.testing.assert_allclose(hidden_changed[:, :8], hidden[:, :8], atol=1e-6)
    assert not np.allclose(hidden_changed[:, 8:], hidden[:, 8:])


def test_rope_depends_only_on_relative_position(tiny):
    config, params = tiny
    tokens = random_tokens(config, (1, 10))
    positions = jnp.arange(10)[None]
    np.testing.assert_allclose(forward(config, params, tokens, positions + 37),
                               forward(config, params, tokens, positions), atol=1e-4)


def test_rope_uses_non_interleaved_halves():
    # HF Llama pairs dim i with dim i + head_dim/2; an interleaved RoPE would pair i with i + 1.
    head_dim, position = 8, 3
    config = model.ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, head_dim=head_dim,
                               rope_theta=10000.0)
    cos, sin = decoder.rope_cos_sin(jnp.array([[position]]), decoder.rope_inv_freq(config))
    x = jnp.zeros((1, 1, 1, head_dim)).at[..., 0].set(1.0)
    rotated = decoder.apply_rope(x, cos, sin)[0, 0, 0]
    expected = np.zeros(head_dim)
    expected[0], expected[head_dim // 2] = np.cos(position), np.sin(position)  # inv_freq[0] == 1
    np.testing.assert_allclose(rotated, expected, atol=1e-6)
    slowest = 10000.0 ** (-2 * (head_dim // 2 - 1) / head_dim)
    np.testing.assert_allclose(cos[0, 0, head_dim // 2 - 1], np.cos(position * slowest), rtol=1e-6)


def stack_layers(params, n_layers):
    """Non-scanned params -> scanned layout (layers_i subtrees stacked under 'layers')."""
    layers = [params[f"layers_{i}"] for i in range(n_layers)]
    stacked = {k: v for k, v in params.items() if not k.startswith("layers_")}
    stacked["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return stacked


def test_scan_layers_matches_unrolled(tiny):
    config, params = tiny
    scan_config = dataclasses.replace(config, scan_layers=True)
    scan_params = stack_layers(params, config.n_layers)
    expected = jax.tree_util.tree_map(lambda x: x.shape, model.abstract_params(scan_config))
    assert jax.tree_util.tree_map(lambda x: x.shape, scan_params) == expected
    tokens = random_tokens(config, (2, 12))
    np.testing.assert_allclose(forward(scan_config, scan_params, tokens),
                               forward(config, params, tokens), atol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_policies_give_same_gradients(tiny, scan_layers):
    config, params = tiny
    if scan_layers:
        params = stack_layers(params, config.n_layers)
    tokens = random_tokens(config, (2, 12))
    targets = jnp.roll(tokens, -1, axis=1)

    def grads(remat):
        cfg = dataclasses.replace(config, remat=remat, scan_layers=scan_layers)

        def loss_fn(p):
            hidden = forward(cfg, p, tokens)
            unembed = model.unembedding(p, cfg)
            return jnp.mean(per_token_loss(hidden, unembed, targets, chunk_size=8))

        return jax.jit(jax.grad(loss_fn))(params)

    reference = grads("none")
    for remat in ("full", "dots"):
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                               grads(remat), reference)


def test_multi_head_attention_and_tied_embeddings():
    config = load_config("tiny", n_kv_heads=4, tie_embeddings=True)
    params = model.init_params(config, jax.random.key(0))
    assert "lm_head" not in params
    assert params["layers_0"]["attention"]["k_proj"].shape == (64, 4, 16)
    np.testing.assert_array_equal(model.unembedding(params, config),
                                  params["embed"]["embedding"].T)
    tokens = random_tokens(config, (2, 8))
    logits = model.logits(params, config, tokens)
    assert logits.shape == (2, 8, config.vocab_size) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_logical_param_specs_cover_every_leaf(scan_layers):
    config = load_config("tiny", scan_layers=scan_layers)
    specs = model.logical_param_specs(config)
    shapes = model.abstract_params(config)
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    spec_leaves, spec_tree = jax.tree_util.tree_flatten(specs, is_leaf=is_spec)
    shape_leaves, shape_tree = jax.tree_util.tree_flatten_with_path(shapes)
    assert spec_tree == jax.tree_util.tree_structure(shapes)
    allowed = {"vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", "norm", "layers"}
    for spec, (path, leaf) in zip(spec_leaves, shape_leaves):
        assert is_spec(spec) and len(spec) == len(leaf.shape), (path, spec, leaf.shape)
        assert set(spec) <= allowed
        in_scanned_stack = scan_layers and path[0].key == "layers"
        assert (spec[0] == "layers") == in_scanned_stack, (path, spec)
    if scan_layers:
        assert specs["layers"]["attention"]["q_proj"] == jax.sharding.PartitionSpec(
            "layers", "embed", "q_heads", "head_dim")


def test_sharded_forward_under_logical_rules_matches_unsharded(tiny):
    config, params = tiny
    config = dataclasses.replace(config, scan_layers=True)
    params = stack_layers(params, config.n_layers)
    # Auto axes: logical constraints are hints to the partitioner. (jax.make_mesh defaults to
    # Explicit axes, under which the vocab-sharded embedding gather needs an out_sharding.)
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = (("activation_batch", "data"), ("activation_heads", "model"),
             ("activation_kv_heads", "model"), ("activation_mlp", "model"),
             ("activation_vocab", "model"), ("q_heads", "model"), ("kv_heads", "model"),
             ("mlp", "model"), ("vocab", "model"))
    tokens = random_tokens(config, (4, 8))
    expected = model.logits(params, config, tokens)
    shardings = nn.logical_to_mesh_sharding(model.logical_param_specs(config), mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        sharded_params = jax.device_put(params, shardings)
        got = jax.jit(lambda p, t: model.logits(p, config, t))(sharded_params, tokens)
    assert got.sharding.spec == jax.sharding.PartitionSpec("data", None, "model")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_too_long_input_names_max_seq_len(tiny):
    config, params = tiny
    with pytest.raises(ValueError, match="raise ModelConfig.max_seq_len"):
        forward(config, params, jnp.zeros((1, config.max_seq_len + 1), jnp.int32))
