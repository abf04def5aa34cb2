"""The non-weight files of an HF directory (slm_jax/hf/hub_files.py): kept beside the
checkpoint, found again from a run_dir through its init checkpoint, written into exports."""
import json
import os

from slm_jax.hf import hub_files


def test_gin_string_binding_follows_a_macro():
    text = "BASE = '/ckpt/base'\ntrain.init_checkpoint = %BASE\nDataConfig.vocab_path = \"/t\"\n"
    assert hub_files._gin_string_binding(text, "train.init_checkpoint") == "/ckpt/base"
    assert hub_files._gin_string_binding(text, "DataConfig.vocab_path") == "/t"
    assert hub_files._gin_string_binding(text, "train.run_dir") is None


def test_source_dir_is_found_beside_the_checkpoint_or_through_the_runs_init(tmp_path):
    converted = tmp_path / "converted"
    (converted / "checkpoints" / "0").mkdir(parents=True)
    (converted / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    for path in (converted, converted / "checkpoints", converted / "checkpoints" / "0"):
        assert hub_files.find_source_dir(str(path)) == str(converted)
    # A run started from it, and a run started from that run.
    run, rerun = tmp_path / "run", tmp_path / "rerun"
    for directory, init in ((run, converted / "checkpoints"), (rerun, run)):
        (directory / "checkpoints").mkdir(parents=True)
        (directory / "config.gin").write_text(f"train.init_checkpoint = '{init}'\n"
                                              "DataConfig.vocab_path = '/tok/tokenizer.json'\n")
    assert hub_files.find_source_dir(str(rerun / "checkpoints")) == str(converted)
    assert hub_files.run_tokenizer(str(run)) == "/tok/tokenizer.json"
    (tmp_path / "scratch" / "checkpoints").mkdir(parents=True)
    assert hub_files.find_source_dir(str(tmp_path / "scratch")) is None


def test_keep_copies_only_config_and_tokenizer_files(tmp_path):
    hf, out = tmp_path / "hf", tmp_path / "out"
    hf.mkdir()
    out.mkdir()
    for name in ("config.json", "generation_config.json", "tokenizer.json", "model.safetensors",
                 "README.md"):
        (hf / name).write_text("{}")
    assert sorted(hub_files.keep_hub_files(str(hf), str(out))) == [
        "config.json", "generation_config.json", "tokenizer.json"]
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "tokenizer.json"]
