"""The pieces beside the train step (slm_jax/jobs/train_hooks.py): eval hooks, the
non-finite guard, the preemption watcher and the skipped-document count."""

import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.data import pipeline, tokenizer
from slm_jax.jobs import train_hooks
from slm_jax.parallel.runtime import Runtime
from tests.tiny_corpus import tiny_corpus

TINY = model_lib.ModelConfig(vocab_size=512, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")


class Recorder:
    """An eval hook factory that records what it was built with and called on."""

    def __init__(self, name):
        self.name, self.context, self.calls = name, None, []

    def make_hook(self, context):
        self.context = context

        def hook(params):
            self.calls.append(params)
            return {self.name: float(params)}
        return hook


def test_evaluator_builds_every_hook_and_merges_their_metrics():
    a, context = Recorder("a"), train_hooks.EvalContext(TINY, data=None, runtime=None)
    evaluator = train_hooks.Evaluator([a, lambda params: {"b": 2 * params}], context, every=5)
    assert a.context is context and bool(evaluator)
    assert evaluator(3.0) == {"a": 3.0, "b": 6.0} and a.calls == [3.0]
    assert [s for s in range(1, 21) if evaluator.due(s, 20)] == [5, 10, 15]  # the end runs apart
    assert not train_hooks.Evaluator([], context, every=5)
    assert not train_hooks.Evaluator([a], context, every=0).due(5, 20)


def test_held_out_loss_is_the_token_weighted_mean(tmp_path):
    paths, vocab = tiny_corpus(tmp_path, seed=1)
    data = pipeline.DataConfig(file_pattern=paths.eval_tfrecord, vocab_path=vocab, seq_len=64,
                               global_batch_size=8, shuffle=False)
    runtime = Runtime.from_config()
    context = train_hooks.EvalContext(TINY, data, runtime)
    with runtime.activate():
        params = model_lib.init_params(TINY, __import__("jax").random.key(0))
        one = train_hooks.HeldOutLossEval(data, num_batches=1).make_hook(context)(params)
        two = train_hooks.HeldOutLossEval(data, num_batches=2).make_hook(context)(params)
    # A random init is close to uniform over the vocabulary.
    assert abs(one["loss"] - np.log(TINY.vocab_size)) < 0.5
    assert one["loss"] != two["loss"]
    assert tokenizer.load_vocabulary(vocab).eos_id is not None


def test_non_finite_step_stops_only_when_asked():
    bad = {"skipped": jnp.float32(1.0), "loss": jnp.float32(np.nan)}
    with pytest.raises(train_hooks.NonFiniteError, match="step 7 .*--gin.train.on_nonfinite=skip"):
        train_hooks.check_finite(bad, 7, "stop")
    train_hooks.check_finite(bad, 7, "skip")
    train_hooks.check_finite({"skipped": jnp.float32(0.0), "loss": jnp.float32(1.0)}, 7, "stop")


def test_sigterm_is_noted_not_fatal_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    watcher = train_hooks.PreemptionWatcher()
    assert not watcher.reached(None, 1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.reached(None, 2)
    watcher.close()
    assert signal.getsignal(signal.SIGTERM) == before


def test_skipped_documents_are_added_and_warned_once_per_increase(caplog):
    class Batches:
        skipped_documents = 0
    batches = Batches()
    counter = train_hooks.SkippedDocuments(batches)
    assert counter.add_to({"loss": 1.0}) == {"loss": 1.0}
    batches.skipped_documents = 3
    assert counter.add_to({"loss": 1.0}) == {"loss": 1.0, "data_skipped_docs": 3}
    counter.add_to({})
    assert sum("skipped 3 empty" in r.message for r in caplog.records) == 1
    assert train_hooks.SkippedDocuments(object()).add_to({"x": 1}) == {"x": 1}
