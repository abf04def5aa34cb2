"""A run's programs through the real TPU compiler (slm_jax/trainer/fit.py; libtpu from
requirements-tpu.txt) on this CPU host, for v5e/v5p topologies and two slices, with splash
attention and FSDP: what the `compile` job reports."""

import dataclasses

import jax
import pytest

from slm_jax import model as model_lib
from slm_jax.data import pipeline
from slm_jax.parallel import sharding, topology
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.optim import OptimizerConfig
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.trainer import compiled, fit, programs

# bf16, full remat, scanned layers: the paper runs' numerics at a size that compiles in seconds.
TINY = model_lib.ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=128, max_seq_len=256, dtype="bfloat16", remat="full",
                             scan_layers=True, attention="splash", loss_chunk_size=0)
DATA = pipeline.DataConfig(file_pattern="unused", vocab_path="unused", seq_len=256,
                           global_batch_size=8)


def run_configs(mode="slm", model=TINY, **changes) -> fit.RunConfigs:
    # A reference of another depth: the FLOP count scales student and reference apart.
    reference = ReferenceConfig(checkpoint="unused", model=dataclasses.replace(model, n_layers=3))
    run = fit.RunConfigs(
        model=model, data=DATA, selection=SelectionConfig(mode=mode, ratio=0.6),
        optimizer=OptimizerConfig(), reference=reference,
        mesh=sharding.MeshConfig(data=1, fsdp=-1), num_steps=10, grad_accum=1,
        scored=mode == "slm_offline", eval_data=dataclasses.replace(DATA, global_batch_size=4),
        generation=programs.GenerationShape(batch_size=4, prompt_len=128, max_new_tokens=16))
    return dataclasses.replace(run, **changes)


def runtime_for(name, mesh=None, num_slices=1):
    mesh = mesh or sharding.MeshConfig(data=1, fsdp=-1, num_slices=num_slices)
    return Runtime.from_config(mesh, topology.tpu_devices(name, num_slices))


def measure_all(run, runtime, count_flops=True):
    with runtime.activate():
        specs = fit.program_specs(run, runtime)
        return {spec.name: fit.measure_program(spec, run, runtime, count_flops) for spec in specs}


@pytest.fixture(scope="module")
def online_v5e():
    """SLM-online with every program a run can have, on v5e:2x2 (4 chips, FSDP 4)."""
    return measure_all(run_configs("slm"), runtime_for("v5e:2x2"))


def test_every_program_of_an_slm_run_compiles_for_v5e_and_fits(online_v5e):
    assert list(online_v5e) == ["train_step", "score_step", "eval_step", "generate_prefill",
                                "generate_decode"]
    for name, row in online_v5e.items():
        assert row["fits"] and row["device_kind"] == "TPU v5 lite" and row["chips"] == 4, name
        assert 0 < row["hbm"]["total"] < row["hbm"]["capacity"] == 16 * 2**30, name
    # FSDP: params are gathered for the forward, gradients reduced over the 4 chips
    assert {"all-gather", "all-reduce"} <= set(online_v5e["train_step"]["collectives"])


def test_splash_is_the_attention_compiled_in_fwd_and_bwd(online_v5e):
    kernels = online_v5e["train_step"]["kernels"]
    for part in ("fwd", "dq", "dkv"):
        assert any(k.startswith(f"splash_mha_{part}") for k in kernels), (part, kernels)
    assert all(k.startswith("splash_mha_fwd") for k in online_v5e["eval_step"]["kernels"])
    assert online_v5e["score_step"]["kernels"]
    assert online_v5e["generate_decode"]["kernels"] == []   # decoding: masked XLA attention


@pytest.mark.parametrize("name", ["train_step", "score_step", "eval_step"])
def test_compiler_flops_per_layer_agree_with_the_analytic_count(online_v5e, name):
    flops = online_v5e[name]["flops"]
    assert flops["pallas"] > 0     # splash is invisible to XLA: added from the analytic count
    assert 0.9 <= flops["compiler_vs_analytic"] <= 1.1, flops
    assert online_v5e[name]["est_step_s"] > 0 and 0 < online_v5e[name]["mfu_bound"] <= 1


def test_scanned_layers_are_counted_per_trip(online_v5e):
    """XLA's count of the scanned program is one layer's; the twins' extrapolation is not."""
    run, runtime = run_configs("clm", model=dataclasses.replace(TINY, n_layers=4)), \
        runtime_for("v5e:2x2")
    with runtime.activate():
        spec = fit.program_specs(run, runtime)[0]
        scanned = compiled.cost(fit._compile(spec.build(run.model, None), runtime))["flops"]
        per_layer = fit.scaled_cost(spec, run.model, None, runtime)["flops"]
    assert per_layer > 1.5 * scanned


def test_slm_offline_on_v5p_keeps_the_requested_shardings_and_auto_picks_splash():
    run = run_configs("slm_offline", model=dataclasses.replace(TINY, attention="auto"))
    runtime = runtime_for("v5p:2x2x1")
    with runtime.activate():
        spec = fit.program_specs(run, runtime)[0]
        program = spec.build(run.model, None)
        executable = fit._compile(program, runtime)
    assert "ref_loss" in program.args[2]     # the scored stream's stored reference losses
    assert runtime.mesh.devices.flat[0].device_kind == "TPU v5"
    wanted = jax.tree.leaves(tuple(program.in_shardings(i) for i in range(3)))
    got = jax.tree.leaves(executable.input_shardings[0])
    shapes = jax.tree.leaves(program.args)
    assert len(got) == len(wanted) == len(shapes)
    for w, g, a in zip(wanted, got, shapes):
        assert g.is_equivalent_to(w, len(a.shape)), (a.shape, w, g)
    assert any(k.startswith("splash") for k in compiled.attention_kernels(executable.as_text()))


def test_two_slices_reduce_gradients_across_the_data_center_network():
    runtime = runtime_for("v5e:2x2", num_slices=2)
    assert dict(runtime.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    rows = measure_all(run_configs("clm", eval_data=None, generation=None), runtime,
                       count_flops=False)
    collectives = rows["train_step"]["collectives"]
    assert rows["train_step"]["fits"] and collectives["dcn-all-reduce"]["bytes"] > 0
    assert "dcn-all-reduce" not in collectives.get("all-reduce", {})


def test_a_mesh_that_does_not_divide_the_slice_is_one_clear_error():
    with pytest.raises(ValueError, match="does not divide the 4 devices"):
        runtime_for("v5e:2x2", mesh=sharding.MeshConfig(data=-1, fsdp=3))


def test_the_fit_search_answers_per_remat_policy_and_names_the_fastest():
    run = run_configs("clm", model=dataclasses.replace(TINY, n_layers=1, scan_layers=False),
                      eval_data=None, generation=None)
    found = fit.search_fit(run, runtime_for("v5e:2x2"))
    assert [f["remat"] for f in found] == ["none", "dots", "full"]
    assert all(f["fits"] and f["grad_accum"] == 1 and f["est_step_s"] > 0 for f in found)
    assert sum(f["fastest"] for f in found) == 1
    # recomputing the forward costs time: "full" is never estimated faster than "none"
    by_remat = {f["remat"]: f["est_step_s"] for f in found}
    assert by_remat["full"] >= by_remat["none"]
