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


def test_truncated_weight_files_are_one_line_naming_the_file(capsys, tmp_path):
    """A truncated GGUF or safetensors file: one line naming it, exit 2, nothing written."""
    from tests.test_conversion import make_hf_model, CASES
    from slm_jax.hf import gguf
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(open(gguf.smollm2_gguf_path(), "rb").read(1 << 20))
    assert convert.main(["gguf_to_hf", "--gguf", str(gguf_file), "--out",
                         str(tmp_path / "hf_from_gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.gguf is not a readable GGUF file" in err
    assert not (tmp_path / "hf_from_gguf").exists()

    hf_dir = tmp_path / "hf"
    make_hf_model(CASES["gqa_untied_theta1e4"][0], "llama").save_pretrained(str(hf_dir))
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    capsys.readouterr()   # save_pretrained's progress bar
    assert convert.main(["hf_to_orbax", "--hf_dir", str(hf_dir), "--out",
                         str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors is not a readable safetensors" in err
    assert not (tmp_path / "o").exists()


def test_unsupported_architecture_is_one_line(capsys, tmp_path):
    import json
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(
        {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"}))
    assert convert.main(["hf_to_orbax", "--hf_dir", str(tmp_path / "hf"), "--out",
                         str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model_type='gpt_neox' is not supported" in err
