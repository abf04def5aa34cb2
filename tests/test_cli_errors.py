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
