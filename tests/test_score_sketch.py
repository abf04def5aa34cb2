"""The corpus score sketch (slm_jax/data/score_sketch.py): its quantile matches numpy's to a
bin width, writers merge by summing, and what a global scope cannot rank by is a clear error."""

import json

import numpy as np
import pytest

from slm_jax.data import score_sketch
from slm_jax.data.score_sketch import ScoreSketch


@pytest.mark.parametrize("ratio", [0.1, 0.6, 0.97])
def test_the_threshold_keeps_the_ratio_of_the_corpus_to_a_bin_width(ratio):
    rng = np.random.default_rng(0)
    scores = rng.normal(0.3, 1.5, size=(64, 257))
    valid = rng.random(scores.shape) < 0.8
    sketch = ScoreSketch()
    sketch.add("excess", scores, valid)
    t = score_sketch.quantile_from_top(sketch.counts["excess"], ratio)
    kept = scores[valid]
    assert abs(t - np.quantile(kept, 1 - ratio)) < 2 * score_sketch.WIDTH
    assert abs((kept >= t).mean() - ratio) < 1e-3
    assert sketch.counts["excess"].sum() == valid.sum()


def _scored_dir(root, writers):
    (root / "index.json").write_text(json.dumps({"global_batch_size": 2, "seq_len": 4,
                                                 "num_batches": 1, "batches_per_shard": 1,
                                                 "num_writers": writers}))
    return str(root)


def test_writers_merge_and_missing_scores_or_sketches_name_the_fix(tmp_path):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 32)), rng.normal(2.0, size=(8, 32))
    ones = np.ones_like(a)
    for writer, values in enumerate([a, b]):
        sketch = ScoreSketch()
        sketch.add("reference", values, ones)
        sketch.write(str(tmp_path), writer)
    scored_dir = _scored_dir(tmp_path, 2)
    t, tokens = score_sketch.threshold(scored_dir, "reference", 0.5, binding="train.scored_data")
    assert tokens == 512
    assert abs(t - np.median(np.concatenate([a, b]))) < 0.05
    with pytest.raises(ValueError, match=r"score='excess'.*has no sketch of: rerun the `score` "
                                         r"job with score.student_checkpoint="):
        score_sketch.threshold(scored_dir, "excess", 0.5, binding="train.scored_data")
    with pytest.raises(ValueError, match=r"score='entropy'.*set SelectionConfig.score to one "
                                         r"of \['reference'\]"):
        score_sketch.threshold(scored_dir, "entropy", 0.5, binding="train.scored_data")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match=r"train.scored_data=.* has no score sketch"):
        score_sketch.threshold(_scored_dir(bare, 1), "reference", 0.5,
                               binding="train.scored_data")
