"""The pieces beside the train step (slm_jax/trainer/hooks.py): eval hooks, the
non-finite guard, the preemption watcher and the skipped-document count."""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.data import pipeline, tokenizer
from slm_jax.trainer import hooks as train_hooks
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
    with pytest.raises(train_hooks.NonFiniteError, match="step 7 .*on_nonfinite='skip'"):
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


def test_data_stats_time_the_batches_and_count_skipped_documents(caplog):
    class Batches:
        skipped_documents = 0

        def __next__(self):
            time.sleep(0.05)
            return {"inputs": 1}

        def state(self):
            return {"step": 1}
    batches = Batches()
    stats = train_hooks.DataStats(batches)
    assert next(stats) == {"inputs": 1} and stats.state() == {"step": 1}
    first = stats.add_to({"loss": 1.0})
    assert first["loss"] == 1.0 and first["data_wait_s"] >= 0.05
    assert "data_skipped_docs" not in first
    batches.skipped_documents = 3
    second = stats.add_to({"loss": 1.0})
    assert second["data_skipped_docs"] == 3 and second["data_wait_s"] == 0.0  # reset per line
    stats.add_to({})
    assert sum("skipped 3 empty" in r.message for r in caplog.records) == 1


def test_multi_process_runs_leave_sigterm_to_jax(monkeypatch):
    """A Python SIGTERM handler would replace JAX's preemption notifier: then one host
    would stop alone and the others crash in the next collective (seen with 2 processes)."""
    class Checkpointer:
        def reached_preemption(self, step):
            return step == 7

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    watcher = train_hooks.PreemptionWatcher()
    assert signal.getsignal(signal.SIGTERM) is handler
    assert [watcher.reached(Checkpointer(), s) for s in (6, 7)] == [False, True]
    watcher.close()


@pytest.mark.parametrize("sigint", [signal.default_int_handler, signal.SIG_IGN])
def test_ctrl_c_is_noted_like_sigterm_unless_ignored(sigint):
    # SIG_IGN: how a background launch (`nohup ... &`, TPU VM start-up scripts) starts Python;
    # set here, so the test does not depend on how the suite itself was started.
    found = signal.signal(signal.SIGINT, sigint)
    try:
        watcher = train_hooks.PreemptionWatcher()
        try:
            os.kill(os.getpid(), signal.SIGINT)   # no KeyboardInterrupt either way
            assert watcher.reached(None, 1) == (sigint is not signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGTERM)   # the preemption notice always stops it
            assert watcher.reached(None, 1)
        finally:
            watcher.close()
        assert signal.getsignal(signal.SIGINT) is sigint
    finally:
        signal.signal(signal.SIGINT, found)


def test_profiler_traces_the_chosen_steps_and_names_the_step(tmp_path):
    @jax.jit
    def train_step(x):
        return x @ x

    profiler = train_hooks.Profiler(str(tmp_path / "profile"), (2, 2))
    x = jnp.ones((64, 64))
    for step in range(5):
        profiler.before_step(step)
        y = train_step(x)
        profiler.after_step(step + 1, y)
        assert profiler.active == (step == 2)  # steps 2 and 3 traced; stopped after step 3
    profiler.close()
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1
    assert b"train_step" in traces[0].read_bytes()
    assert not train_hooks.Profiler(str(tmp_path / "none"), None).active
