"""The `train` job (slm_jax/jobs/train.py): non-finite steps stop or skip, SIGTERM checkpoints and resumes."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from slm_jax import model as model_lib
from slm_jax.parallel.checkpoint import CheckpointConfig, Checkpointer, restore_params
from slm_jax.parallel import partition, sharding
from slm_jax.data import pipeline
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.jobs.train import NonFiniteError, train
from tests.tiny_corpus import tiny_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = model_lib.ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    paths, vocab = tiny_corpus(root, seed=3)
    return pipeline.DataConfig(file_pattern=paths.web_tfrecord, vocab_path=vocab, seq_len=64,
                               global_batch_size=8)


def exploding(tmp_path, web, on_nonfinite):
    # lr 1e30: step 1's update is finite but huge, so step 2's forward overflows.
    return train(run_dir=str(tmp_path), data=web, model=TINY, num_steps=4, progress=False,
                 optimizer=OptimizerConfig(learning_rate=1e30, clip_norm=1e30),
                 checkpoint=CheckpointConfig(every_steps=1, keep=10), on_nonfinite=on_nonfinite,
                 log_every=1)


def test_nonfinite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, web):
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient at step 2.*"
                                             "--gin.train.on_nonfinite=skip"):
        exploding(tmp_path / "run", web, "stop")
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["1"]
    params = restore_params(str(tmp_path / "run" / "checkpoints"), model_lib.abstract_params(TINY),
                            sharding.param_shardings(TINY, sharding.make_mesh(sharding.MeshConfig())),
                            binding="x")
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def test_nonfinite_updates_can_be_skipped(tmp_path, web):
    summary = exploding(tmp_path / "run", web, "skip")
    assert summary["step"] == 4 and summary["skipped"] == 1.0
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["skipped"] for ln in lines] == [0.0, 1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """One persistent compilation cache for this module's processes: all but the first load
    the compiled step instead of compiling it again."""
    return tmp_path_factory.mktemp("jax_cache")


# Both signals write the same checkpoint; resuming from it is checked once (and in
# tests/e2e/test_resume.py).
@pytest.mark.parametrize("signum,resume", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_sigterm_or_ctrl_c_checkpoints_and_exits_zero_then_resumes(tmp_path, web, jax_cache,
                                                                  signum, resume):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "slm_jax.main", "--gin_file=gin/models/tiny.gin",
           "--gin.run.job=train", f"--gin.train.run_dir={run_dir}", "--gin.train.num_steps=100000",
           f"--gin.run.compilation_cache_dir={jax_cache}",
           f"--gin.DataConfig.file_pattern={web.file_pattern}",
           f"--gin.DataConfig.vocab_path={web.vocab_path}", "--gin.DataConfig.seq_len=64",
           "--gin.DataConfig.global_batch_size=8", "--gin.train.log_every=1",
           "--gin.CheckpointConfig.every_steps=100000"]
    # SIGTERM under an ignored SIGINT (a background launch); Ctrl-C where SIGINT is live,
    # whatever the suite was started with.
    other = signal.SIG_IGN if signum == signal.SIGTERM else signal.SIG_DFL
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, other))
    seen_steps = 0
    for line in proc.stdout:  # wait until training is really under way
        if "step 3/" in line:
            seen_steps = 3
            break
    assert seen_steps == 3
    sent = time.perf_counter()
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    elapsed = time.perf_counter() - sent
    assert proc.returncode == 0, out[-3000:]
    assert "preempted at step" in out
    saved = [int(s) for s in os.listdir(run_dir / "checkpoints")]
    assert len(saved) == 1 and saved[0] >= 3
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    print(f"{signal.Signals(signum).name} -> checkpoint written and exit in {elapsed:.2f}s")
    if not resume:
        return
    # The same command resumes from that checkpoint.
    more = f"--gin.train.num_steps={saved[0] + 2}"
    resumed = subprocess.run([more if a.startswith("--gin.train.num_steps=") else a for a in cmd],
                             cwd=REPO, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-2:] == [saved[0] + 1, saved[0] + 2]


def test_profile_traces_the_train_step_and_lines_say_where_time_went(tmp_path, web):
    run_dir = tmp_path / "run"
    train(run_dir=str(run_dir), data=web, model=TINY, num_steps=3, progress=False, log_every=1,
          profile=(1, 1))
    traces = list((run_dir / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and b"jit_step" in traces[0].read_bytes()
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        assert 0.0 <= line["data_wait_share"] <= 1.0 and 0.0 < line["mfu"] < 1.0
        assert line["peak_mem_bytes"] > 0 and line["step_s"] > 0


def test_an_ema_reference_resumes_bit_exactly_and_an_older_checkpoint_gains_one(tmp_path, web,
                                                                                caplog):
    """ReferenceConfig.source='ema': the EMA is checkpointed beside the params (4 straight
    steps == 2 steps, resume, 2 more, bit for bit); a checkpoint written without one (here
    a CLM run's) resumes with the EMA started from its params and a log line saying so."""
    reference = ReferenceConfig(source="ema", ema_decay=0.9, dtype="float32")
    ema = dict(selection=SelectionConfig(mode="slm", ratio=0.5), reference=reference)
    constant_lr = OptimizerConfig(learning_rate=1e-3, end_lr_ratio=1.0)  # same for 2 or 4 steps

    def run(name, num_steps, **kw):
        train(run_dir=str(tmp_path / name), data=web, model=TINY, num_steps=num_steps,
              progress=False, checkpoint=CheckpointConfig(every_steps=2, keep=10),
              optimizer=constant_lr, **kw)

    def restored(name, step):
        tx, _ = make_optimizer(OptimizerConfig(), 4)
        self_ref = reference.self_reference()
        mesh = sharding.make_mesh(sharding.MeshConfig())
        with Checkpointer(str(tmp_path / name / "checkpoints")) as ckpt:
            return jax.device_get(ckpt.restore(
                partition.abstract_train_state(TINY, tx, self_ref),
                partition.state_shardings(TINY, tx, mesh, self_reference=self_ref), step))

    run("straight", 4, **ema)
    run("resumed", 2, **ema)
    run("resumed", 4, **ema)
    straight, resumed = restored("straight", 4), restored("resumed", 4)
    assert straight.ref_params is not None
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(straight.ref_params["embed"]["embedding"],
                              straight.params["embed"]["embedding"])

    run("older", 2)
    with caplog.at_level(logging.INFO):
        run("older", 3, **ema)
    assert "holds no reference params (written before ReferenceConfig.source='ema')" in caplog.text
    assert restored("older", 3).ref_params is not None
