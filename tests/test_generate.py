"""KV-cached generation against the uncached recomputation oracle; stop strings; sampling."""

import dataclasses
import functools

import jax
import pytest

from slm_jax import model as model_lib
from slm_jax.model.generate import Generator, generate, greedy_generate, greedy_generate_uncached
from slm_jax.parallel import sharding
from slm_jax.parallel.runtime import Runtime

TINY = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=48, dtype="float32")
PROMPTS = [[1, 5, 9, 3, 4, 5, 6], [1, 7], [1, 2, 3, 4], [1, 60, 61, 62, 63, 8, 9, 10, 11, 12]]


@functools.lru_cache
def tiny_model(scan_layers: bool):
    config = dataclasses.replace(TINY, scan_layers=scan_layers)
    return config, model_lib.init_params(config, jax.random.key(0))


@pytest.fixture(params=[False, True], ids=["unrolled", "scan"])
def both(request):
    return tiny_model(request.param)


@pytest.fixture
def tiny():
    return tiny_model(False)


def decode_chars(ids):
    """A stand-in detokeniser: one letter per token."""
    return "".join(chr(97 + t % 26) for t in ids)


@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_cached_greedy_equals_uncached(both, pad_side):
    config, params = both
    expected = greedy_generate_uncached(params, config, PROMPTS, max_new_tokens=12, eos_id=None)
    got = generate(params, config, PROMPTS, max_new_tokens=12, pad_side=pad_side)
    assert [c.tokens for c in got] == expected
    assert all(c.finish_reason == "length" for c in got)


def test_eos_and_max_seq_len_match_uncached(tiny):
    config, params = tiny
    free = greedy_generate_uncached(params, config, PROMPTS, max_new_tokens=12, eos_id=None)
    k = next(k for k in range(1, 12) if free[0][k] not in free[0][:k])
    eos = free[0][k]  # a token row 0 emits first at step k becomes EOS
    expected = greedy_generate_uncached(params, config, PROMPTS, max_new_tokens=12, eos_id=eos)
    got = generate(params, config, PROMPTS, max_new_tokens=12, eos_id=eos, batch_size=2)
    assert [c.tokens for c in got] == expected
    assert got[0].finish_reason == "eos" and got[0].tokens == free[0][:k]
    # More new tokens than max_seq_len allows: stop at the cap, as the uncached decoder does.
    capped = greedy_generate(params, config, PROMPTS, max_new_tokens=120, eos_id=None)
    assert [len(c) for c in capped] == [config.max_seq_len - max(map(len, PROMPTS))] * 4
    assert [c[:12] for c in capped] == free


def test_sharded_on_eight_devices_matches_unsharded(both):
    config, params = both
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=1, tensor=2))
    generator = Generator(config, placement=Runtime(mesh), batch_size=3)  # 3 rows pad to 4
    sharded = generator.shard_params(params)
    got = generator.generate(sharded, PROMPTS, max_new_tokens=12, pad_side="left")
    expected = greedy_generate_uncached(params, config, PROMPTS, max_new_tokens=12, eos_id=None)
    assert [c.tokens for c in got] == expected


def test_under_a_callers_mesh_the_batch_pads_to_its_data_axes(tiny):
    """No placement, but inside a Runtime's context (as a training eval hook may run): the
    batch pads to the mesh's data-parallel size and the tokens do not change."""
    config, params = tiny
    runtime = Runtime(sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=1, tensor=2)))
    generator = Generator(config, batch_size=3)
    assert generator._data_parallel_size() == 1
    expected = greedy_generate_uncached(params, config, PROMPTS, max_new_tokens=12, eos_id=None)
    with runtime.activate():
        assert generator._data_parallel_size() == 4
        sharded = jax.device_put(params, runtime.param_shardings(config))
        got = generator.generate(sharded, PROMPTS, max_new_tokens=12)
    assert [c.tokens for c in got] == expected


def test_stop_strings_cut_text_and_tokens(tiny):
    config, params = tiny
    full = generate(params, config, PROMPTS, max_new_tokens=12, decode=decode_chars)
    text = full[0].text
    stop = text[5:7]
    cut = text.find(stop)
    got = generate(params, config, PROMPTS, max_new_tokens=12, decode=decode_chars,
                   stop_strings=[stop, "never"], chunk_size=4)
    assert got[0].text == text[:cut] and got[0].finish_reason == "stop"
    assert got[0].tokens == full[0].tokens[:cut + len(stop)]  # up to the token completing it
    for g, f in zip(got[1:], full[1:]):  # other rows: cut where the stop string occurs, if at all
        idx = f.text.find(stop)
        assert g.text == (f.text if idx < 0 else f.text[:idx])


def test_temperature_to_zero_and_tiny_top_p_equal_greedy(tiny):
    config, params = tiny
    greedy = [c.tokens for c in generate(params, config, PROMPTS, max_new_tokens=12)]
    cold = generate(params, config, PROMPTS, max_new_tokens=12, temperature=1e-6, seed=3)
    nucleus = generate(params, config, PROMPTS, max_new_tokens=12, temperature=1.0, top_p=1e-6,
                       seed=4)
    assert [c.tokens for c in cold] == greedy
    assert [c.tokens for c in nucleus] == greedy
    hot = [c.tokens for c in generate(params, config, PROMPTS, max_new_tokens=12,
                                      temperature=2.0, seed=5)]
    assert hot != greedy and all(0 <= t < config.vocab_size for row in hot for t in row)
    again = [c.tokens for c in generate(params, config, PROMPTS, max_new_tokens=12,
                                        temperature=2.0, seed=5)]
    assert again == hot


def test_bad_arguments(tiny):
    _, params = tiny
    with pytest.raises(ValueError, match="decode"):
        generate(params, TINY, PROMPTS, max_new_tokens=2, stop_strings=["x"])
    with pytest.raises(ValueError, match="pad_side"):
        generate(params, TINY, PROMPTS, max_new_tokens=2, pad_side="middle")
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(params, TINY, [[1] * TINY.max_seq_len], max_new_tokens=2)
