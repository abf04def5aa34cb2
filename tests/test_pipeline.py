"""Packing into LM batches (slm_jax/data/pipeline.py): every document once, shifted views, per-document masks, hosts."""

import json
import os

import gin
import jax
import numpy as np
import pytest

from slm_jax.data import BATCH_KEYS
from slm_jax.corpora import embedded
from slm_jax.data import iterator, pipeline, tasks, tokenizer

BOS, EOS = 1, 2
SEQ_LEN = 128  # shorter than most web documents, so chunking is exercised


# --------------------------------------------------------------------------
# Fixtures and helpers.


def _texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return embedded.generate_corpus(str(root), seed=0, n_web_docs=40, n_clean_docs=30, n_eval_docs=10)


@pytest.fixture(scope="module")
def model_path(corpus):
    prefix = os.path.join(corpus.root, "spm", "llama512")
    return tokenizer.train_sentencepiece([corpus.jsonl["web"], corpus.jsonl["clean"]], prefix, vocab_size=512)


@pytest.fixture(scope="module")
def vocab(model_path):
    return tokenizer.load_vocabulary(model_path)


@pytest.fixture(scope="module")
def web_in_two_files(corpus):
    docs = _texts(corpus.jsonl["web"])
    paths = [os.path.join(corpus.root, f"web-{i}-of-2.tfrecord") for i in range(2)]
    for i, path in enumerate(paths):
        tasks.write_text_tfrecord(docs[i::2], path)
    return os.path.join(corpus.root, "web-*-of-2.tfrecord"), [docs[0::2], docs[1::2]]


def _config(file_pattern, vocab_path, **overrides):
    fields = dict(seq_len=SEQ_LEN, global_batch_size=4, shuffle=False)
    fields.update(overrides)
    return pipeline.DataConfig(file_pattern=file_pattern, vocab_path=vocab_path, **fields)


def _token_documents(config, **shard):
    """Token lists of whole documents, reassembled from packed rows in order.

    A segment that starts with BOS opens a document; any other segment is the
    next chunk of the current (long) document.
    """
    documents = []
    for row in pipeline.packed_dataset(config, repeat=False, **shard).as_numpy_iterator():
        tokens, segments, positions = row["targets"], row["targets_segment_ids"], row["targets_positions"]
        assert np.all(tokens[segments == 0] == 0)
        for segment in np.unique(segments[segments > 0]):
            where = np.flatnonzero(segments == segment)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1)), "segment not contiguous"
            assert np.array_equal(positions[where], np.arange(len(where))), "positions do not restart"
            piece = tokens[where].tolist()
            if piece[0] == BOS:
                documents.append(piece)
            else:
                documents[-1].extend(piece)
    return documents


def _decoded_documents(config, vocab, **shard):
    documents = _token_documents(config, **shard)
    for doc in documents:
        assert doc[0] == BOS and doc[-1] == EOS and EOS not in doc[:-1]
    return [vocab.decode(doc) for doc in documents]


def _first_batches(config, n, **kwargs):
    batches = pipeline.host_batches(config, **kwargs)
    return [next(batches) for _ in range(n)]


# --------------------------------------------------------------------------
# Tokenizer.


# --------------------------------------------------------------------------
# Task and packing.


def test_every_document_is_packed_exactly_once_with_bos_and_eos(corpus, model_path, vocab):
    config = _config(corpus.tfrecord["web"], model_path)
    assert _decoded_documents(config, vocab) == _texts(corpus.jsonl["web"])


def test_batches_are_a_shifted_next_token_view(corpus, model_path):
    config = _config(corpus.tfrecord["web"], model_path)
    batches = list(pipeline.host_batches(config, repeat=False))
    assert len(batches) > 2
    for batch in batches:
        assert set(batch) == set(BATCH_KEYS)
        for key, array in batch.items():
            assert array.shape == (4, SEQ_LEN)
            assert array.dtype == (np.float32 if key == "loss_weights" else np.int32)
        inputs, targets = batch["inputs"], batch["targets"]
        segments, positions, weights = batch["segment_ids"], batch["positions"], batch["loss_weights"]
        continues = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
        # Within a segment the target is the next input; across a boundary or
        # into padding there is no loss.
        assert np.all(targets[:, :-1][continues] == inputs[:, 1:][continues])
        assert np.array_equal(weights[:, :-1], continues.astype(np.float32))
        assert np.all(weights[segments == 0] == 0)
        assert np.all(positions[:, 1:][continues] == positions[:, :-1][continues] + 1)
        starts = np.concatenate([segments[:, :1] > 0, (segments[:, 1:] != segments[:, :-1]) & (segments[:, 1:] > 0)], 1)
        assert np.all(positions[starts] == 0)
        # The first target of a document is never predicted from the previous one.
        assert np.all(weights[:, :-1][(inputs[:, 1:] == BOS) & (positions[:, 1:] == 0)] == 0)
        # An EOS input is always followed by a new segment or padding.
        assert np.all(weights[inputs == EOS] == 0)


def test_attention_mask_is_block_diagonal_per_document(corpus, model_path):
    config = _config(corpus.tfrecord["web"], model_path)
    batch = next(pipeline.host_batches(config, repeat=False))
    segments, positions = batch["segment_ids"], batch["positions"]
    q, k = np.arange(SEQ_LEN)[:, None], np.arange(SEQ_LEN)[None, :]
    for seg, pos in zip(segments, positions):
        mask = (k <= q) & (seg[:, None] == seg[None, :]) & (seg[:, None] > 0)
        # Documents found independently, from position resets.
        doc = np.cumsum(pos == 0) * (seg > 0)
        expected = np.zeros_like(mask)
        for d in np.unique(doc[doc > 0]):
            span = np.flatnonzero(doc == d)
            block = np.tril(np.ones((len(span), len(span)), bool))
            expected[span[0] : span[-1] + 1, span[0] : span[-1] + 1] = block
        assert np.array_equal(mask, expected)
        assert not mask[doc[:, None] != doc[None, :]].any()


def test_unk_tokens_survive_packing(corpus, tmp_path):
    # Without byte fallback, unseen characters map to unk = 0, the id seqio
    # would otherwise take for padding.
    model = tokenizer.train_sentencepiece(
        [corpus.jsonl["clean"]], str(tmp_path / "nofallback"), vocab_size=300, byte_fallback=False
    )
    vocab = tokenizer.load_vocabulary(model)
    texts = ["Prices in € and ¥ are 12 * 3 = 36 ✓", "Plain text 7 + 5 = 12", "€"]
    encoded = [[BOS, *vocab.encode(t), EOS] for t in texts]
    # The last document ends in unk, which seqio's packer would cut off as padding.
    assert 0 in encoded[0] and encoded[2][-2:] == [0, EOS]
    path = str(tmp_path / "unk.tfrecord")
    tasks.write_text_tfrecord(texts, path)
    config = _config(path, model, seq_len=16, global_batch_size=2)
    assert _token_documents(config) == encoded
    batches = list(pipeline.host_batches(config, repeat=False))
    unk_targets = sum(((b["targets"] == 0) & (b["loss_weights"] == 1)).sum() for b in batches)
    assert unk_targets == sum(doc.count(0) for doc in encoded)


def test_final_partial_batch_is_padded(corpus, model_path):
    config = _config(corpus.tfrecord["eval"], model_path, global_batch_size=8, seq_len=512)
    batches = list(pipeline.host_batches(config, repeat=False))
    assert all(b["inputs"].shape == (8, 512) for b in batches)
    last = batches[-1]
    empty_rows = last["segment_ids"].max(axis=1) == 0
    assert empty_rows.any() and np.all(last["loss_weights"][empty_rows] == 0)


def test_shuffled_stream_is_deterministic_in_seed(corpus, model_path):
    config = _config(corpus.tfrecord["web"], model_path, shuffle=True, shuffle_buffer=64, seed=3)
    first, again = _first_batches(config, 3), _first_batches(config, 3)
    other = _first_batches(_config(corpus.tfrecord["web"], model_path, shuffle=True, shuffle_buffer=64, seed=4), 3)
    for a, b in zip(first, again):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, other))


def test_stages_built_without_autograph_give_the_same_rows(corpus, model_path, monkeypatch):
    # The pipeline turns AutoGraph off for every stage but seqio's packer (a faster start);
    # converting all of them, TF's default, must give the same rows bit for bit.
    config = _config(corpus.tfrecord["web"], model_path, shuffle=True, shuffle_buffer=64, seed=3)
    fast = list(pipeline.packed_dataset(config).take(40).as_numpy_iterator())
    autograph = pipeline._autograph
    monkeypatch.setattr(pipeline, "_autograph", lambda enabled: autograph(True))
    converted = list(pipeline.packed_dataset(config).take(40).as_numpy_iterator())
    assert len(fast) == len(converted) == 40
    for a, b in zip(fast, converted):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


# --------------------------------------------------------------------------
# Hugging Face tokenizers: id 0 is a real token (SmolLM2's EOS, Qwen's "!").


EXCLAIM = ["Wow!", "!", "a!b!! c!!!", "x = 3! = 6!"]  # "!" is id 0 in the qwen/llama3 shapes


def _reference_packing(documents, row_len):
    """seqio's packer in plain python: chunks of at most ``row_len`` tokens, packed next-fit
    into rows of ``row_len``, independently per block of ``row_len`` chunks."""
    chunks = [doc[i:i + row_len] for doc in documents for i in range(0, len(doc), row_len)]
    rows = []
    for start in range(0, len(chunks), row_len):
        row = []
        for chunk in chunks[start:start + row_len]:
            if sum(map(len, row)) + len(chunk) > row_len:
                rows.append(row)
                row = []
            row.append(chunk)
        rows.append(row)
    return rows


def _reference_batches(rows, row_len, batch_size):
    """The LM batches of packed rows, built token by token."""
    rows = rows + [[]] * (-len(rows) % batch_size)
    batches = []
    for first in range(0, len(rows), batch_size):
        batch = {key: np.zeros((batch_size, row_len - 1), np.int32) for key in BATCH_KEYS}
        batch["loss_weights"] = batch["loss_weights"].astype(np.float32)
        for r, row in enumerate(rows[first:first + batch_size]):
            tokens = [t for chunk in row for t in chunk] + [0] * row_len
            segment = [s + 1 for s, chunk in enumerate(row) for _ in chunk] + [0] * row_len
            position = [p for chunk in row for p in range(len(chunk))] + [0] * row_len
            for t in range(row_len - 1):
                batch["inputs"][r, t], batch["targets"][r, t] = tokens[t], tokens[t + 1]
                batch["segment_ids"][r, t], batch["positions"][r, t] = segment[t], position[t]
                batch["loss_weights"][r, t] = segment[t + 1] == segment[t] > 0
        batches.append(batch)
    return batches


@pytest.fixture(scope="module")
def hf_texts_file(corpus):
    texts = _texts(corpus.jsonl["clean"])[:3] + EXCLAIM
    path = os.path.join(corpus.root, "hf_texts.tfrecord")
    tasks.write_text_tfrecord(texts, path)
    return path, texts


@pytest.mark.parametrize("shape", ["smollm2", "qwen", "llama3"])
def test_hf_tokenizer_batches_equal_a_python_reference(corpus, hf_texts_file, tmp_path, shape):
    from tests.test_hf_tokenizer import write_hf_tokenizer
    from tokenizers import Tokenizer
    directory = write_hf_tokenizer(tmp_path / shape, _texts(corpus.jsonl["web"]), shape)
    path, texts = hf_texts_file
    own = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    eos = own.token_to_id("<|endoftext|>")
    # What the tokenizer itself adds in front (Llama-3's BOS; nothing for the others) + EOS.
    documents = [own.encode(text, add_special_tokens=True).ids + [eos] for text in texts]
    assert any(0 in doc[:-1] for doc in documents) == (shape != "smollm2")
    assert all(doc[-1] == 0 for doc in documents) == (shape == "smollm2")
    config = _config(path, directory, seq_len=24, global_batch_size=2)
    want = _reference_batches(_reference_packing(documents, 25), 25, 2)
    got = list(pipeline.host_batches(config, repeat=False))
    assert len(got) == len(want) > 3
    for g, w in zip(got, want):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_hf_stream_resumes_exactly_with_eos_at_id_0(corpus, hf_texts_file, tmp_path):
    # The resume cursor counts documents by the EOS ending a chunk: here EOS is id 0.
    from tests.test_hf_tokenizer import write_hf_tokenizer
    directory = write_hf_tokenizer(tmp_path / "smollm2", _texts(corpus.jsonl["web"]))
    config = _config(hf_texts_file[0], directory, seq_len=24, global_batch_size=2)
    run = pipeline.stream_set(config, [0])
    assert run.fingerprint["vocabulary"] == tokenizer.load_vocabulary(directory).fingerprint
    batches, states = [], []
    for _ in range(24):  # several packing blocks of 25 chunks, and a second epoch
        states.append(json.loads(json.dumps(run.state())))
        batches.append(next(run))
    for step in (5, 13, 22):
        resumed = pipeline.stream_set(config, [0])
        resumed.restore_state(states[step], where="test")
        for want in batches[step:step + 2]:
            got = next(resumed)
            for key in BATCH_KEYS:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{step} {key}")


# --------------------------------------------------------------------------
# Sharding.


def test_hosts_read_disjoint_halves(web_in_two_files, model_path, vocab):
    pattern, _ = web_in_two_files
    config = _config(pattern, model_path)
    host_docs = [_decoded_documents(config, vocab, shard_index=i, num_shards=2) for i in range(2)]
    assert host_docs[0] and host_docs[1]
    assert not set(host_docs[0]) & set(host_docs[1])
    all_docs = _texts(os.path.join(os.path.dirname(pattern), "web.jsonl"))
    assert sorted(host_docs[0] + host_docs[1]) == sorted(all_docs)
    batch = next(pipeline.host_batches(config, shard_index=1, num_shards=2))
    assert batch["inputs"].shape == (2, SEQ_LEN)


def test_single_file_is_sharded_by_example(corpus, model_path, vocab):
    config = _config(corpus.tfrecord["eval"], model_path, seq_len=512)
    host_docs = [_decoded_documents(config, vocab, shard_index=i, num_shards=2) for i in range(2)]
    assert not set(host_docs[0]) & set(host_docs[1])
    assert sorted(host_docs[0] + host_docs[1]) == sorted(_texts(corpus.jsonl["eval"]))


# --------------------------------------------------------------------------
# Configuration errors name the gin binding to fix.


def test_missing_or_invalid_vocabulary(corpus, tmp_path):
    with pytest.raises(ValueError, match="DataConfig.vocab_path"):
        tokenizer.load_vocabulary(str(tmp_path / "nope.model"))
    for content in (b"this is not a sentencepiece model", b""):
        bogus = tmp_path / "bogus.model"
        bogus.write_bytes(content)
        with pytest.raises(ValueError, match="DataConfig.vocab_path"):
            tokenizer.load_vocabulary(str(bogus))
        with pytest.raises(ValueError, match="DataConfig.vocab_path"):
            pipeline.host_batches(_config(corpus.tfrecord["web"], str(bogus)))


def test_pattern_matching_no_files(model_path, tmp_path):
    with pytest.raises(ValueError, match="DataConfig.file_pattern"):
        pipeline.host_batches(_config(str(tmp_path / "missing-*.tfrecord"), model_path))


def test_batch_not_divisible_by_hosts(corpus, model_path):
    config = _config(corpus.tfrecord["web"], model_path, global_batch_size=3)
    with pytest.raises(ValueError, match="DataConfig.global_batch_size"):
        pipeline.host_batches(config, shard_index=0, num_shards=2)
    with pytest.raises(ValueError, match="DataConfig.global_batch_size"):
        pipeline.host_batch_size(config, 2)


def test_required_fields_and_gin_binding(corpus, model_path):
    with pytest.raises(ValueError, match="DataConfig.file_pattern"):
        pipeline.DataConfig(vocab_path=model_path)
    with pytest.raises(ValueError, match="DataConfig.vocab_path"):
        pipeline.DataConfig(file_pattern=corpus.tfrecord["web"])
    with gin.unlock_config():
        gin.bind_parameter("DataConfig.file_pattern", corpus.tfrecord["web"])
        gin.bind_parameter("DataConfig.vocab_path", model_path)
        gin.bind_parameter("DataConfig.seq_len", 32)
    try:
        config = pipeline.DataConfig()
        assert (config.file_pattern, config.seq_len) == (corpus.tfrecord["web"], 32)
    finally:
        gin.clear_config()


def test_global_batches_on_eight_devices(corpus, model_path):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    config = _config(corpus.tfrecord["web"], model_path, seq_len=64, global_batch_size=8)
    batch = next(iterator.global_batches(config, mesh, sharding))
    local = next(pipeline.host_batches(config))
    spec = iterator.batch_spec(config, sharding)
    for key in BATCH_KEYS:
        array = batch[key]
        assert isinstance(array, jax.Array)
        assert array.shape == spec[key].shape == (8, 64) and array.dtype == spec[key].dtype
        assert array.sharding == sharding
        assert [s.data.shape for s in array.addressable_shards] == [(1, 64)] * 8
        np.testing.assert_array_equal(np.asarray(array), local[key])
