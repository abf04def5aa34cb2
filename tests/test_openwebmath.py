"""The prepare command (parquet/jsonl -> TFRecord shards) and the `openwebmath` task, files and TFDS."""

import json
import os

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from slm_jax.data import BATCH_KEYS
from slm_jax import main as main_lib
from slm_jax.corpora import embedded
from slm_jax.data import openwebmath, pipeline, prepare, tokenizer

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD_UTF8 = b"caf\xe9 \xff broken"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("owm")
    paths = embedded.generate_corpus(str(root), seed=1, n_web_docs=20, n_clean_docs=1, n_eval_docs=1)
    with open(paths.web_jsonl, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    vocab = tokenizer.train_sentencepiece([paths.web_jsonl], str(root / "spm"), vocab_size=512)
    return root, texts, vocab


@pytest.fixture(scope="module")
def release(corpus):
    """The documents as an OpenWebMath-like parquet file (several row groups) plus bad rows."""
    root, texts, _ = corpus
    raw = [t.encode() for t in texts[:12]] + [b"", None, b" \n\t", BAD_UTF8] + [t.encode() for t in texts[12:]]
    table = pa.table({
        "url": [f"https://example.org/{i}" for i in range(len(raw))],
        "text": pa.array(raw, type=pa.binary()).view(pa.string()),  # unchecked: keeps the bad bytes
        "date": ["2023-01-01"] * len(raw),
    })
    path = root / "release" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(table, str(path), row_group_size=7)
    return str(root / "release" / "*.parquet")


def _run(capsys, *args):
    code = prepare.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------
# prepare.


# --------------------------------------------------------------------------
# The task.


def _documents(config):
    """Decoded documents from one pass over packed rows (a BOS segment opens a document)."""
    vocab = tokenizer.load_vocabulary(config.vocab_path)
    documents = []
    for row in pipeline.packed_dataset(config, repeat=False).as_numpy_iterator():
        tokens, segments = row["targets"], row["targets_segment_ids"]
        for segment in np.unique(segments[segments > 0]):
            piece = tokens[segments == segment].tolist()
            if piece[0] == vocab.bos_id:
                documents.append(piece)
            else:
                documents[-1].extend(piece)
    return [vocab.decode(d) for d in documents]


def test_openwebmath_task_over_prepared_shards(corpus, release, tmp_path, capsys):
    _, texts, vocab = corpus
    out = str(tmp_path / "shards")
    code, stdout, _ = _run(capsys, "--input", release, "--output_dir", out, "--num_streams", "2")
    assert code == 0
    pattern = json.loads(stdout)["file_pattern"]
    assert pattern == f"{out}/openwebmath-*-of-00002.tfrecord"
    task = openwebmath.register_openwebmath(vocab, file_pattern=pattern)
    assert seqio.get_mixture_or_task("openwebmath") is task

    config = pipeline.DataConfig(task_name="openwebmath", file_pattern=pattern, vocab_path=vocab,
                                 seq_len=128, global_batch_size=4, num_streams=2, shuffle=False)
    assert sorted(_documents(config)) == sorted(texts)
    batch = next(pipeline.host_streams(config))
    assert set(batch) == set(BATCH_KEYS) and batch["inputs"].shape == (4, 128)
    assert batch["loss_weights"].sum() > 0


# --------------------------------------------------------------------------
# TFDS.


class OpenWebMathStandIn(tfds.core.GeneratorBasedBuilder):
    """OpenWebMath's features, offline. tfds's Hugging Face builder cannot stand in for
    itself here: its constructor lists the Hub and calls datasets.load_dataset_builder,
    which tfds.testing.mock_data does not patch."""

    VERSION = tfds.core.Version("1.0.0")
    TEXTS: list = []
    code_path = None  # no checksums file to find (tfds would need importlib_resources for that)

    def _info(self):
        features = {k: tfds.features.Text() for k in ("url", "text", "date", "metadata")}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, text in enumerate(self.TEXTS):
            yield i, {"url": f"https://example.org/{i}", "text": text, "date": "2023", "metadata": "{}"}


def test_tfds_name_route_with_mock_data(corpus):
    _, texts, vocab = corpus

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        n = len(texts)
        return tf.data.Dataset.from_tensor_slices(
            {"url": ["u"] * n, "text": texts, "date": ["d"] * n, "metadata": ["{}"] * n})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        config = pipeline.DataConfig(source="tfds", tfds_name="open_web_math_stand_in:1.0.0",
                                     vocab_path=vocab, seq_len=128, global_batch_size=4, shuffle=False)
        assert _documents(config) == texts
        task = openwebmath.register_openwebmath(vocab, source="tfds", tfds_name="open_web_math_stand_in:1.0.0")
        assert task.source.tfds_dataset.name == "open_web_math_stand_in:1.0.0"
    # The real name parses to tfds's huggingface namespace without touching the network.
    name, _ = tfds.core.naming.parse_builder_name_kwargs(openwebmath.TFDS_NAME)
    assert (name.namespace, name.name) == ("huggingface", "open_web_math__open_web_math")


def test_tfds_prepared_directory_route_offline(corpus, tmp_path):
    _, texts, vocab = corpus
    OpenWebMathStandIn.TEXTS = texts
    builder = OpenWebMathStandIn(data_dir=str(tmp_path))
    builder.download_and_prepare()
    config = pipeline.DataConfig(source="tfds", tfds_data_dir=builder.data_dir, vocab_path=vocab,
                                 seq_len=128, global_batch_size=4, num_streams=2)
    assert sorted(_documents(config)) == sorted(texts)
    batches = list(pipeline.host_streams(config, repeat=False))
    assert batches and all(b["inputs"].shape == (4, 128) for b in batches)
    with pytest.raises(ValueError, match="DataConfig.tfds_name"):
        pipeline.DataConfig(source="tfds", vocab_path=vocab)


# --------------------------------------------------------------------------
# Gin.


@pytest.mark.parametrize("path, task_name, pattern", [
    ("gin/data/openwebmath.gin", "openwebmath", "gs://b/owm/*.tfrecord"),
    ("gin/data/high_quality.gin", "high_quality", "gs://b/hq/*.tfrecord")])
def test_gin_files_bind_the_paper_defaults(path, task_name, pattern):
    gin.clear_config()
    try:
        main_lib.parse_config([os.path.join(REPO, path)], [f"OWM_FILES='{pattern}'", f"HQ_FILES='{pattern}'",
                                                           "VOCAB_PATH='/tmp/tok.model'"])
        config = pipeline.DataConfig()
        assert (config.task_name, config.file_pattern, config.seq_len) == (task_name, pattern, 2048)
        assert config.global_batch_size * config.seq_len == 1_048_576
        assert config.global_batch_size % config.num_streams == 0
    finally:
        gin.clear_config()
