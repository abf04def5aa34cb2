"""The `score` job (slm_jax/jobs/score.py): shards and index written, rows equal the pipeline's, online == offline SLM."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.parallel import sharding
from slm_jax.jobs import score as scoring
from slm_jax.parallel.checkpoint import CheckpointConfig, restore_params
from slm_jax.data import BATCH_KEYS, iterator, pipeline, score_sketch, scored
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.jobs.train import train
from tests.test_reference_model import save_init_checkpoint
from tests.tiny_corpus import tiny_corpus

TINY = model_lib.ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    paths, vocab = tiny_corpus(root / "corpus", seed=2, n_web_docs=200, n_clean_docs=100,
                               n_eval_docs=20, spm_on_clean=True)
    web = pipeline.DataConfig(file_pattern=paths.web_tfrecord, vocab_path=vocab, seq_len=64,
                              global_batch_size=8)
    clean = pipeline.DataConfig(file_pattern=paths.clean_tfrecord, vocab_path=vocab, seq_len=64,
                                global_batch_size=8)
    common = dict(model=TINY, progress=False, log_every=1,
                  checkpoint=CheckpointConfig(every_steps=100))
    train(run_dir=str(root / "ref"), data=clean, num_steps=3, **common)
    ref_ckpt = str(root / "ref" / "checkpoints")
    # The student's start (a fresh init): its losses go into the score sketch only.
    save_init_checkpoint(TINY, str(root / "init" / "checkpoints"), seed=5)
    result = scoring.score(str(root / "scored"), data=web, model=TINY, num_batches=4,
                           batches_per_shard=3,
                           reference=ReferenceConfig(checkpoint=ref_ckpt, dtype="float32"),
                           student_checkpoint=str(root / "init" / "checkpoints"))
    return root, web, ref_ckpt, result, common


def test_score_writes_shards_and_index(setup):
    root, web, _, result, _ = setup
    index = json.loads((root / "scored" / "index.json").read_text())
    assert index["num_batches"] == 4 and index["global_batch_size"] == 8
    assert sorted(p.name for p in (root / "scored").glob("*.npz")) == [
        "sketch-w000.npz", "w000-00000.npz", "w000-00001.npz"]
    assert result["tokens"] > 0 and result["tokens_per_s"] > 0
    rows = scored.ScoredReader(str(root / "scored")).rows(0, 8)
    assert rows["ref_loss"].shape == (8, 64)
    assert np.all(rows["ref_loss"][rows["loss_weights"] == 0] == 0)
    assert np.all(rows["ref_loss"][rows["loss_weights"] == 1] > 0)


def test_scored_rows_are_the_pipeline_batches_with_the_reference_loss(setup):
    root, web, ref_ckpt, _, _ = setup
    mesh = sharding.make_mesh(sharding.MeshConfig())
    first = next(iterator.global_batches(web, mesh, sharding.batch_sharding(mesh)))
    rows = scored.ScoredReader(str(root / "scored")).rows(0, 8)
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(np.asarray(first[key]), rows[key].astype(first[key].dtype))
    params = restore_params(ref_ckpt, model_lib.abstract_params(TINY),
                            sharding.param_shardings(TINY, mesh), binding="ref")
    from slm_jax.slm.train_step import make_score_step
    want = jax.jit(make_score_step(TINY))(params, first)
    np.testing.assert_allclose(rows["ref_loss"], np.asarray(want), rtol=1e-5, atol=1e-6)


def test_online_and_offline_slm_select_the_same_tokens(setup):
    root, web, ref_ckpt, _, common = setup
    slm = SelectionConfig(mode="slm", ratio=0.6)
    online = train(run_dir=str(root / "online"), data=web, num_steps=3, selection=slm,
                   reference=ReferenceConfig(checkpoint=ref_ckpt, dtype="float32"), **common)
    offline = train(run_dir=str(root / "offline"), data=web, num_steps=3,
                    selection=SelectionConfig(mode="slm_offline", ratio=0.6),
                    scored_data=str(root / "scored"), **common)
    read = lambda run: [json.loads(ln) for ln in (root / run / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(read("online"), read("offline")):
        for key in ["loss", "selected_loss", "selected_frac", "ref_loss", "excess_loss"]:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    sh = sharding.param_shardings(TINY, mesh)
    p_on = restore_params(str(root / "online" / "checkpoints"), model_lib.abstract_params(TINY), sh, binding="a")
    p_off = restore_params(str(root / "offline" / "checkpoints"), model_lib.abstract_params(TINY), sh, binding="b")
    for x, y in zip(jax.tree.leaves(p_on), jax.tree.leaves(p_off)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert online["step"] == offline["step"] == 3


def test_offline_without_scores_is_a_clear_error(setup, tmp_path):
    root, web, _, _, common = setup
    with pytest.raises(ValueError, match="train.scored_data"):
        train(run_dir=str(tmp_path / "x"), data=web, num_steps=1,
              selection=SelectionConfig(mode="slm_offline", ratio=0.6), **common)
    with pytest.raises(ValueError, match="train.scored_data=.* has no index.json"):
        train(run_dir=str(tmp_path / "y"), data=web, num_steps=1,
              selection=SelectionConfig(mode="slm_offline", ratio=0.6),
              scored_data=str(tmp_path), **common)


def test_a_reference_of_another_size_scores_and_trains_online_as_offline(setup, tmp_path):
    """ReferenceConfig.model smaller than the student: `score` stores its own losses, and an
    online SLM run with it selects exactly what the offline run over those scores does."""
    _, web, _, _, common = setup
    small = dataclasses.replace(TINY, d_model=16, n_heads=2, n_kv_heads=1, mlp_dim=32,
                                n_layers=1)
    params = save_init_checkpoint(small, str(tmp_path / "small" / "checkpoints"))
    reference = ReferenceConfig(checkpoint=str(tmp_path / "small" / "checkpoints"),
                                model=small, dtype="float32")
    scoring.score(str(tmp_path / "scored"), data=web, model=TINY, num_batches=2,
                  reference=reference)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    first = next(iterator.global_batches(web, mesh, sharding.batch_sharding(mesh)))
    rows = scored.ScoredReader(str(tmp_path / "scored")).rows(0, 8)
    from slm_jax.slm.train_step import make_score_step
    np.testing.assert_allclose(rows["ref_loss"], np.asarray(make_score_step(small)(params, first)),
                               rtol=1e-5, atol=1e-6)
    online = train(run_dir=str(tmp_path / "online"), data=web, num_steps=2,
                   selection=SelectionConfig(mode="slm", ratio=0.6), reference=reference,
                   **common)
    offline = train(run_dir=str(tmp_path / "offline"), data=web, num_steps=2,
                    selection=SelectionConfig(mode="slm_offline", ratio=0.6),
                    scored_data=str(tmp_path / "scored"), **common)
    for key in ["loss", "selected_loss", "selected_frac", "ref_loss", "excess_loss"]:
        np.testing.assert_allclose(online[key], offline[key], rtol=1e-6, err_msg=key)
    record = json.loads((tmp_path / "online" / "run_record.json").read_text())
    assert record["reference"]["model"]["d_model"] == 16


def test_global_scope_keeps_the_tokens_above_the_corpus_threshold(setup):
    """Token Cleaning's global threshold: the score job's sketch of the excess loss at the
    student's start gives t with 60% of the corpus at or above it; a run from that start
    keeps exactly the tokens of its first batch at or above t (shares differ by batch)."""
    root, web, _, _, common = setup
    mesh = sharding.make_mesh(sharding.MeshConfig())
    init = restore_params(str(root / "init" / "checkpoints"), model_lib.abstract_params(TINY),
                          sharding.param_shardings(TINY, mesh), binding="init")
    from slm_jax.slm.train_step import make_score_step
    student_loss = jax.jit(make_score_step(TINY))
    reader = scored.ScoredReader(str(root / "scored"))
    batches = [reader.rows(8 * b, 8) for b in range(4)]
    excess = [np.asarray(student_loss(init, b)) - b["ref_loss"] for b in batches]
    valid = [b["loss_weights"] > 0 for b in batches]
    corpus = np.concatenate([e[v] for e, v in zip(excess, valid)])
    t, tokens = score_sketch.threshold(str(root / "scored"), "excess", 0.6, binding="x")
    assert tokens == corpus.size and abs((corpus >= t).mean() - 0.6) < 2 / corpus.size

    summary = train(run_dir=str(root / "global"), data=web, num_steps=1,
                    selection=SelectionConfig(mode="slm_offline", ratio=0.6, scope="global",
                                              score="excess"),
                    scored_data=str(root / "scored"), init_checkpoint=str(root / "init" / "checkpoints"),
                    **common)
    shares = [(e[v] >= t).mean() for e, v in zip(excess, valid)]
    assert abs(summary["selected_frac"] - shares[0]) <= 1.5 / valid[0].sum()
    assert max(shares) - min(shares) > 2 / valid[0].sum()   # each batch's share is its own
    record = json.loads((root / "global" / "run_record.json").read_text())
    assert record["selection"]["threshold"] == pytest.approx(t)
