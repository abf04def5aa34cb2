"""Corpus preparation (slm_jax/data/prepare.py): parquet/jsonl to TFRecord shards, counts, shard numbers."""

import json
import os

import tensorflow as tf

from slm_jax.data import prepare
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
    assert (counts["written"], counts["empty"], counts["not_utf8"], counts["unparsable"]) == (len(texts), 3, 1, 0)
    assert counts["docs_per_shard"] == [5, 5]
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
    assert {k: counts[k] for k in ("documents", "written", "empty", "not_utf8", "unparsable")} == {
        "documents": 9, "written": 4, "empty": 2, "not_utf8": 2, "unparsable": 1}
    assert _shard_texts(prepare.shard_paths(str(tmp_path / "out"), 2)[1]) == [texts[1], texts[3]]


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
