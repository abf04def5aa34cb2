"""The corpus's score distribution, for a global selection threshold (Token Cleaning,
ICML 2025: rank every token against the whole corpus, not within its batch).

The `score` job adds every scored token to fixed-bin histograms, one per score it can
compute (the reference's loss always; the student's starting loss and the excess loss
when `score.student_checkpoint` is set), and writes them beside the scored shards:

    sketch-w{P}.npz       writer process P's counts, one int64 array per score name

Fixed bins make the sketch exact to a bin width (1/1024 nat), mergeable across hosts by
summing, and independent of the corpus size. `threshold(scored_dir, score, ratio)` is the
score above which `ratio` of the corpus's tokens lie; `SelectionConfig.scope='global'`
keeps every token at or above it, so the share kept varies from batch to batch.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from slm_jax.data import scored

LOW, HIGH, BINS = -32.0, 32.0, 1 << 16
WIDTH = (HIGH - LOW) / BINS
# The scores `selection_score` ranks that a scoring pass can know in advance: the
# reference's (minus its loss), and, given the student's starting params, the student's
# loss and the excess loss at the start of training.
SKETCH_SCORES = ("reference", "student", "excess")


def _path(out_dir: str, writer: int) -> str:
    return os.path.join(out_dir, f"sketch-w{writer:03d}.npz")


class ScoreSketch:
    """Histograms of per-token scores over the valid tokens seen."""

    def __init__(self):
        self.counts: dict[str, np.ndarray] = {}

    def add(self, name: str, score_BT: np.ndarray, valid_BT: np.ndarray) -> None:
        values = np.asarray(score_BT, np.float64)[np.asarray(valid_BT) > 0]
        bins = np.clip(((values - LOW) / WIDTH).astype(np.int64), 0, BINS - 1)
        counts = self.counts.setdefault(name, np.zeros(BINS, np.int64))
        counts += np.bincount(bins, minlength=BINS)

    def write(self, out_dir: str, writer: int) -> None:
        scored.write_npz(_path(out_dir, writer), self.counts)


def read_counts(scored_dir: str, num_writers: int) -> dict[str, np.ndarray]:
    """Every writer's histograms, summed; {} for a directory scored without a sketch."""
    total: dict[str, np.ndarray] = {}
    for writer in range(num_writers):
        if not tf.io.gfile.exists(_path(scored_dir, writer)):
            return {}
        for name, counts in scored.read_npz(_path(scored_dir, writer)).items():
            total[name] = total.get(name, 0) + counts
    return total


def quantile_from_top(counts: np.ndarray, ratio: float) -> float:
    """The score t with a `ratio` share of the counted tokens at or above it,
    interpolated linearly within its bin."""
    target = ratio * counts.sum()
    from_top = np.cumsum(counts[::-1])
    j = min(int(np.searchsorted(from_top, target)), BINS - 1)   # first bin reaching it
    b = BINS - 1 - j
    above = from_top[j] - counts[b]
    needed = (target - above) / max(int(counts[b]), 1)
    return float(LOW + (b + 1) * WIDTH - needed * WIDTH)


def threshold(scored_dir: str, score: str, ratio: float, *, binding: str) -> tuple[float, int]:
    """(threshold, tokens in the sketch) for keeping the top `ratio` of the corpus by
    `score`; errors name `binding` (where scored_dir came from) and the fix."""
    reader = scored.ScoredReader(scored_dir, binding)
    counts = read_counts(scored_dir, reader.index["num_writers"])
    if not counts:
        raise ValueError(f"{binding}={scored_dir!r} has no score sketch (sketch-w*.npz; scored "
                         "before SelectionConfig.scope='global' existed): run the `score` job "
                         "again into a new out_dir.")
    if score not in counts:
        fix = ("rerun the `score` job with score.student_checkpoint=<the student's "
               "starting checkpoint (train.init_checkpoint)>, or set "
               "SelectionConfig.score='reference'" if score in SKETCH_SCORES else
               f"set SelectionConfig.score to one of {sorted(counts)}")
        raise ValueError(f"SelectionConfig.scope='global' ranks by SelectionConfig.score="
                         f"{score!r}, which {binding}={scored_dir!r} has no sketch of: {fix}.")
    return quantile_from_top(counts[score], ratio), int(counts[score].sum())
