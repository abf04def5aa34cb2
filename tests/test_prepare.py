"""Corpus preparation (slm_jax/data/prepare.py): parquet/jsonl to TFRecord shards, counts, shard numbers."""

import json
import os
import subprocess
import sys

import tensorflow as tf

from slm_jax.data import prepare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tests.test_openwebmath import BAD_UTF8, _run, corpus, pa, pq, release  # noqa: F401  (shared fixtures and helpers)


def _shard_texts(path):
    spec = {"text": tf.io.FixedLenFeature([], tf.string)}
    return [tf.io.parse_single_example(r, spec)["text"].numpy().decode() for r in tf.data.TFRecordDataset(path)]


# --------------------------------------------------------------------------
# prepare.


def test_prepare_parquet_round_robin_with_counts(corpus, release, tmp_path, capsys):
    _, texts, _ = corpus
    out = str(tmp_path / "shards")
    code, stdout, _ = _run(capsys, "--input", release, "--output_dir", out, "--num_shards", "4")
    assert code == 0
    counts = json.loads(stdout)
    assert counts["documents"] == len(texts) + 4
    assert (counts["written"], counts["empty"], counts["not_utf8"], counts["not_json"]) == (len(texts), 3, 1, 0)
    assert counts["docs_per_shard"] == [5, 5]
    manifest = json.loads(open(os.path.join(out, "openwebmath-manifest.json")).read())
    parquet = release.replace("*", "train-00000-of-00001")
    assert manifest["first_bad"] == {   # rows 13-16 of the file (see the release fixture)
        "empty": [f"{parquet}:13", f"{parquet}:14", f"{parquet}:15"], "not_utf8": [f"{parquet}:16"]}
    paths = prepare.shard_paths(out, 4)
    assert [os.path.basename(p) for p in paths] == [f"openwebmath-0000{i}-of-00004.tfrecord" for i in range(4)]
    for i, path in enumerate(paths):
        assert _shard_texts(path) == texts[i::4]
    first = [open(p, "rb").read() for p in paths]
    again = ["--input", release, "--output_dir", out, "--num_shards", "4"]
    assert _run(capsys, *again)[0] == 2  # no silent overwrite
    assert _run(capsys, *again, "--overwrite")[0] == 0
    assert [open(p, "rb").read() for p in paths] == first  # deterministic


def test_prepare_jsonl_skips_bad_rows(corpus, tmp_path, capsys):
    _, texts, _ = corpus
    lines = [json.dumps({"text": t}).encode() for t in texts[:3]] + [
        json.dumps({"text": ""}).encode(), json.dumps({"url": "no text"}).encode(),
        b'{"text": "caf\xe9"}', b'{"text": "\\ud800 lone surrogate"}', b"{not json", b"",
        json.dumps({"text": texts[3]}).encode()]
    (tmp_path / "part.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, stdout, _ = _run(capsys, "--input", str(tmp_path / "*.jsonl"), "--output_dir", str(tmp_path / "out"),
                           "--num_shards", "2")
    counts = json.loads(stdout)
    assert code == 0
    # Every line is read and counted by kind, the blank one too (skipped.py's vocabulary).
    assert {k: counts[k] for k in ("documents", "written", "empty", "not_utf8", "not_json",
                                   "no_text_field", "not_text")} == {
        "documents": 10, "written": 4, "empty": 2, "not_utf8": 2, "not_json": 1,
        "no_text_field": 1, "not_text": 0}
    assert _shard_texts(prepare.shard_paths(str(tmp_path / "out"), 2)[1]) == [texts[1], texts[3]]
    part = str(tmp_path / "part.jsonl")
    manifest = json.loads((tmp_path / "out" / "openwebmath-manifest.json").read_text())
    assert manifest["first_bad"] == {"empty": [f"{part}:4", f"{part}:9"],
                                     "no_text_field": [f"{part}:5"],
                                     "not_utf8": [f"{part}:6", f"{part}:7"], "not_json": [f"{part}:8"]}
    assert manifest["per_shard"] == [2, 2] and manifest["written"] == 4


def test_prepare_strict_or_over_the_bad_share_writes_nothing(corpus, tmp_path, capsys):
    _, texts, _ = corpus
    lines = [json.dumps({"text": t}) for t in texts[:9]] + ["{not json"]
    (tmp_path / "part.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--input", str(tmp_path / "part.jsonl"), "--output_dir", str(tmp_path / "out"),
            "--num_shards", "2"]
    code, stdout, err = _run(capsys, *args, "--strict")
    assert code == 2 and stdout == ""
    assert err.splitlines()[-1] == (
        f"prepare: 1 of 10 rows are bad, more than --strict allows: 1 not_json (first at "
        f"{tmp_path}/part.jsonl:10); fix or remove those rows (or raise --max_bad_fraction); "
        "nothing was written.")
    assert not (tmp_path / "out").exists()
    assert _run(capsys, *args, "--max_bad_fraction", "0.05")[0] == 2
    assert _run(capsys, *args, "--max_bad_fraction", "0.1")[0] == 0   # 1 in 10 is allowed
    assert sorted(os.listdir(tmp_path / "out")) == [
        "openwebmath-00000-of-00002.tfrecord", "openwebmath-00001-of-00002.tfrecord",
        "openwebmath-manifest.json"]
    before = [open(p, "rb").read() for p in prepare.shard_paths(str(tmp_path / "out"), 2)]
    assert _run(capsys, *args, "--strict", "--overwrite")[0] == 2   # refused: the old shards stay
    assert [open(p, "rb").read() for p in prepare.shard_paths(str(tmp_path / "out"), 2)] == before


def test_prepare_console_is_quiet(corpus, tmp_path):
    _, texts, _ = corpus
    (tmp_path / "part.jsonl").write_text(json.dumps({"text": texts[0]}) + "\n[1]\n")
    done = subprocess.run([sys.executable, "-m", "slm_jax.data.prepare", "--input",
                           str(tmp_path / "part.jsonl"), "--output_dir", str(tmp_path / "out"),
                           "--num_shards", "1"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"1 input files (0.00 GB) -> 1 shards in {tmp_path}/out",
        f"skipped 1 not_json row(s), first at {tmp_path}/part.jsonl:2"]
    assert json.loads(done.stdout)["written"] == 1


def test_prepare_shard_count_fits_hosts_and_streams(release, tmp_path, capsys):
    code, _, err = _run(capsys, "--input", release, "--output_dir", str(tmp_path / "a"), "--num_shards", "6",
                        "--num_hosts", "4")
    assert code == 2 and "--num_shards=6 must be a positive multiple of 4" in err
    code, stdout, _ = _run(capsys, "--input", release, "--output_dir", str(tmp_path / "b"), "--num_hosts", "2",
                           "--num_streams", "4")
    assert code == 0 and json.loads(stdout)["shards"] == 4  # small input: the smallest multiple
    assert prepare.pick_num_shards(None, 3 * prepare.TARGET_SHARD_BYTES, 2, 2) == 4
    assert _run(capsys, "--input", str(tmp_path / "none-*.parquet"), "--output_dir", str(tmp_path))[0] == 2


# --------------------------------------------------------------------------
# The task.


# --------------------------------------------------------------------------
# TFDS.


# --------------------------------------------------------------------------
# Gin.
