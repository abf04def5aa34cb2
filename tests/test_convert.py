"""`python -m slm_jax.convert` (slm_jax/convert.py): usage, and bad input as one line."""

import pytest

from slm_jax import convert


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as done:
        convert.main(["--help"])
    assert done.value.code == 0 and "hf_to_orbax" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        convert.main(["hf_to_orbax"])
    assert done.value.code == 2 and "--hf_dir" in capsys.readouterr().err


def test_missing_inputs_are_one_line_naming_the_path(capsys, tmp_path):
    assert convert.main(["hf_to_orbax", "--hf_dir", str(tmp_path / "nope"),
                         "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "slm_jax.convert: error:" in err and "nope" in err
    assert not (tmp_path / "o").exists()
    assert convert.main(["orbax_to_hf", "--ckpt_dir", str(tmp_path / "none"), "--out",
                         str(tmp_path / "hf")]) == 2
    assert "none" in capsys.readouterr().err
