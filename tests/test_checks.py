"""Config checks shared by the jobs (slm_jax/trainer/checks.py), each naming the binding to change
(a job's argument by the binding name the job passes in)."""

import os
import shutil

import pytest
from tokenizers import Tokenizer

from slm_jax import model as model_lib
from slm_jax.cli_errors import with_flags
from slm_jax.data import tokenizer
from slm_jax.data.pipeline import DataConfig
from slm_jax.trainer import checks
from slm_jax.parallel.runtime import Runtime
from slm_jax.slm.reference import ReferenceConfig

SMALL = model_lib.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                              mlp_dim=32, max_seq_len=64)


def data(**fields):
    return DataConfig(**{"file_pattern": "x", "vocab_path": "y", "seq_len": 64,
                         "global_batch_size": 16, **fields})


def test_context_must_fit_every_model():
    checks.check_context(data(), SMALL)
    short = model_lib.ModelConfig(**{**SMALL.__dict__, "max_seq_len": 32})
    with pytest.raises(ValueError, match=r"DataConfig.seq_len=64 is longer than "
                                         r"ModelConfig.max_seq_len=32; lower DataConfig.seq_len"
                       ) as error:
        checks.check_context(data(), SMALL, short)
    assert "; lower --gin.DataConfig.seq_len" in with_flags(str(error.value), "--gin.")


def test_batch_must_split_over_data_parallel_devices_per_micro_batch():
    runtime = Runtime.from_config()  # 8 CPU devices, all data-parallel
    checks.check_batch(data(), runtime)
    checks.check_batch(data(), runtime, grad_accum=2)
    with pytest.raises(ValueError, match=r"micro-batch of 4 sequences .* / grad_accum=4\) "
                                         r"is not divisible by the data-parallel size 8 .*"
                                         r"multiple of 32"):
        checks.check_batch(data(), runtime, grad_accum=4)
    with pytest.raises(ValueError, match=r"not divisible by grad_accum=3; change grad_accum "):
        checks.check_batch(data(), runtime, grad_accum=3)
    # A job names grad_accum by its own binding (the train job: train.grad_accum).
    with pytest.raises(ValueError, match=r"micro-batch of 4 sequences .* / train.grad_accum=4\) "):
        checks.check_batch(data(), runtime, grad_accum=4, grad_accum_binding="train.grad_accum")
    with pytest.raises(ValueError, match=r"not divisible by train.grad_accum=3; change "
                                         r"train.grad_accum ") as error:
        checks.check_batch(data(), runtime, grad_accum=3, grad_accum_binding="train.grad_accum")
    assert "; change --gin.train.grad_accum " in with_flags(str(error.value), "--gin.")
    with pytest.raises(ValueError, match=r"global_batch_size=12\) is not divisible by the "
                                         r"data-parallel size 8"):
        checks.check_batch(data(global_batch_size=12), runtime)


# --------------------------------------------------------------------------
# Tokenizers: they fit the model, and the reference reads the student's tokens.


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    from tests.test_hf_tokenizer import write_hf_tokenizer
    root = tmp_path_factory.mktemp("tokenizers")
    texts = ["x = 3 + 4 = 7! So x is 7.", "The train leaves at 12:30 and arrives at 14:05."] * 20
    return {shape: write_hf_tokenizer(root / shape, texts, shape, vocab_size=300)
            for shape in ("qwen", "llama3")}


def test_tokenizer_must_fit_the_model(hf_dirs):
    vocabulary = tokenizer.load_vocabulary(hf_dirs["qwen"])
    assert SMALL.vocab_size < vocabulary.vocab_size < 512
    checks.check_vocab_fits_model(vocabulary, model_lib.ModelConfig(**{**SMALL.__dict__,
                                                                     "vocab_size": 512}))
    n = vocabulary.vocab_size
    with pytest.raises(ValueError, match=rf"DataConfig.vocab_path=.*qwen' has {n} tokens \(ids up "
                                         rf"to {n - 1}\), more than ModelConfig.vocab_size=64; set "
                                         rf"ModelConfig.vocab_size to at least {n}") as error:
        checks.check_tokenizers(data(vocab_path=hf_dirs["qwen"]), SMALL)
    assert (f"; set --gin.ModelConfig.vocab_size to at least {n} or point "
            "--gin.DataConfig.vocab_path at") in with_flags(str(error.value), "--gin.")


def test_reference_tokenizer_must_be_the_students(hf_dirs, tmp_path):
    big = model_lib.ModelConfig(**{**SMALL.__dict__, "vocab_size": 512})
    student = data(vocab_path=hf_dirs["qwen"])
    copy = tmp_path / "copy"
    copy.mkdir()
    # The same tokens in other bytes: re-serialised without indentation.
    Tokenizer.from_file(os.path.join(hf_dirs["qwen"], "tokenizer.json")).save(
        str(copy / "tokenizer.json"), pretty=False)
    shutil.copy(os.path.join(hf_dirs["qwen"], "tokenizer_config.json"), copy)
    fingerprints = {tokenizer.load_vocabulary(p).fingerprint for p in (str(copy), hf_dirs["qwen"])}
    assert len(fingerprints) == 2
    checks.check_tokenizers(student, big, ReferenceConfig(vocab_path=str(copy)))
    checks.check_tokenizers(student, big, ReferenceConfig())
    other = ReferenceConfig(vocab_path=hf_dirs["llama3"])
    checks.check_tokenizers(student, big, None)  # what a job that runs no reference passes
    with pytest.raises(ValueError, match=r"ReferenceConfig.vocab_path=.*llama3' is another "
                                         r"tokenizer than DataConfig.vocab_path=.*qwen'"):
        checks.check_tokenizers(student, big, other)
