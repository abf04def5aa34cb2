"""How entry points report bad input (slm_jax/cli_errors.py): one line on stderr, exit 2."""

import pytest

from slm_jax import cli_errors


def test_one_line_drops_gin_call_notes_and_joins_lines():
    err = ValueError("DataConfig.seq_len=9 is too long;\n  lower it.\n"
                     "  In call to configurable 'train' (<function train at 0x1>)")
    assert cli_errors.one_line(err) == "DataConfig.seq_len=9 is too long; lower it."
    assert cli_errors.one_line(ValueError("")) == "ValueError"


def test_report_prints_one_line_and_returns_two(capsys, monkeypatch):
    monkeypatch.delenv("SLM_JAX_TRACEBACK", raising=False)
    assert cli_errors.report("slm_jax", ValueError("bad\nvalue")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("slm_jax: error: bad value")
    assert "SLM_JAX_TRACEBACK=1" in err


def test_traceback_variable_reraises(monkeypatch):
    monkeypatch.setenv("SLM_JAX_TRACEBACK", "1")
    with pytest.raises(ValueError, match="boom"):
        cli_errors.report("slm_jax", ValueError("boom"))


def test_with_flags_spells_the_bindings_a_fix_names_as_flags():
    message = ("ModelConfig.n_heads=3 is not divisible by ModelConfig.n_kv_heads=2; set "
               "ModelConfig.n_kv_heads to a divisor of n_heads")
    assert cli_errors.with_flags(message, "--gin.") == (
        "ModelConfig.n_heads=3 is not divisible by ModelConfig.n_kv_heads=2; set "
        "--gin.ModelConfig.n_kv_heads to a divisor of n_heads")
    for fix, flag in [
            ("change train.grad_accum.", "change --gin.train.grad_accum."),
            ("set MeshConfig.num_slices=2.", "set --gin.MeshConfig.num_slices=2."),
            ("lower DataConfig.seq_len or raise the model's maximum",
             "lower --gin.DataConfig.seq_len or raise the model's maximum"),
            ("change MeshConfig.data/fsdp.", "change --gin.MeshConfig.data/fsdp."),
            ("fix the ModelConfig.rope_* bindings", "fix the --gin.ModelConfig.rope_* bindings"),
            ("Lower OptimizerConfig.learning_rate", "Lower --gin.OptimizerConfig.learning_rate"),
            ("bind ReferenceConfig.dtype instead", "bind --gin.ReferenceConfig.dtype instead"),
            ("leave WandbConfig.project unset", "leave --gin.WandbConfig.project unset"),
            ("unset ReferenceConfig.vocab_path", "unset --gin.ReferenceConfig.vocab_path"),
            ("point DataConfig.vocab_path at it", "point --gin.DataConfig.vocab_path at it"),
            ("set reference/ModelConfig.vocab_size", "set --gin.reference/ModelConfig.vocab_size"),
            # Already a flag, no binding after the verb, or not a fix: left alone.
            ("set --gin.train.run_dir", "set --gin.train.run_dir"),
            ("set one axis to -1 (e.g. data=-1)", "set one axis to -1 (e.g. data=-1)"),
            ("change grad_accum to a divisor", "change grad_accum to a divisor"),
            ("leave it out of DataConfig.file_pattern", "leave it out of DataConfig.file_pattern"),
            ("reset DataConfig.seed", "reset DataConfig.seed")]:
        assert cli_errors.with_flags(fix, "--gin.") == flag, fix
    assert cli_errors.with_flags("set ModelConfig.remat to one", "") == "set ModelConfig.remat to one"


def test_report_spells_the_fix_as_the_programs_flag(capsys, monkeypatch):
    monkeypatch.delenv("SLM_JAX_TRACEBACK", raising=False)
    err = ValueError("ModelConfig.remat='x' is not one of ('none',);\n set ModelConfig.remat to one")
    assert cli_errors.report("slm_jax", err, binding_flag="--gin.") == 2
    assert capsys.readouterr().err.startswith(
        "slm_jax: error: ModelConfig.remat='x' is not one of ('none',); set "
        "--gin.ModelConfig.remat to one  (SLM_JAX_TRACEBACK=1")
    assert cli_errors.report("slm_jax.convert", err) == 2  # no such flag: as raised
    assert "; set ModelConfig.remat to one" in capsys.readouterr().err
