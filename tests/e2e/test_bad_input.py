"""Bad input: one clear line naming what is wrong and the fix, exit code 2, run_dir untouched.

Every case runs the real entry point (`slm_jax.main.main`, in process) against a run
directory that already holds a checkpoint, asking for more steps than it has, and
checks that the directory is byte-for-byte what it was. Empty and non-UTF-8
documents are the exception: they are skipped and counted, not fatal.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import gin
import pytest
import tensorflow as tf

from slm_jax import disk
from slm_jax.parallel import checkpoint as ckpt_lib
from slm_jax.trainer import metrics_log
from slm_jax import main as main_lib
from slm_jax import model as model_lib
from slm_jax.parallel import ownership, partition, sharding
from slm_jax.data import pipeline, tokenizer
from slm_jax.slm.optim import OptimizerConfig, make_optimizer
from tests.test_hf_tokenizer import write_hf_tokenizer
from tests.tiny_corpus import tiny_corpus


@pytest.fixture(autouse=True)
def fresh_gin():
    gin.clear_config()
    yield
    gin.clear_config()



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    paths, vocab = tiny_corpus(root, seed=5)
    return root, paths.web_tfrecord, vocab


def flags(corpus, run_dir, *extra):
    _, pattern, vocab = corpus
    return ["--gin_file=gin/models/tiny.gin", "--gin.run.job=train",
            f"--gin.train.run_dir={run_dir}", "--gin.train.num_steps=4",
            f"--gin.DataConfig.file_pattern={pattern}", f"--gin.DataConfig.vocab_path={vocab}",
            "--gin.DataConfig.seq_len=64", "--gin.DataConfig.global_batch_size=8",
            "--gin.train.log_every=1", "--gin.CheckpointConfig.every_steps=1", *extra]


@pytest.fixture(scope="module")
def trained(corpus):
    """A run directory with the checkpoint of step 2, and a checkpoint of another model shape."""
    root = corpus[0]
    gin.clear_config()
    assert main_lib.main(flags(corpus, root / "run", "--gin.train.num_steps=2")) == 0
    gin.clear_config()
    other = model_lib.ModelConfig(vocab_size=512, d_model=32, n_layers=1, n_heads=2,
                                  n_kv_heads=1, mlp_dim=64, max_seq_len=64, dtype="float32")
    tx, _ = make_optimizer(OptimizerConfig(), 1)
    mesh = sharding.make_mesh(sharding.MeshConfig())
    state_sh = partition.state_shardings(other, tx, mesh)
    checkpointer = ckpt_lib.Checkpointer(str(root / "other" / "checkpoints"))
    checkpointer.save(partition.init_state(other, tx, __import__("jax").random.key(0), state_sh),
                      force=True)
    checkpointer.close()
    (root / "empty").mkdir()
    (root / "not_spm.model").write_text("this is not a sentencepiece model\n")
    (root / "a_file").write_text("x")
    (root / "unclosed.gin").write_text("ModelConfig.d_model = 64\nModelConfig.n_layers = (2\n")
    (root / "broken_tokenizer").mkdir()
    (root / "broken_tokenizer" / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
    write_hf_tokenizer(root / "other_tokenizer", ["x = 3 + 4 = 7, so x is 7."] * 20)
    return root


def snapshot(directory) -> dict:
    """relative path -> sha256 of every file (and every directory, as None); the owner
    record (who held the directory last, rewritten by every job that takes it) aside."""
    out = {}
    for base, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(base, name), directory)] = None
        for name in files:
            if name == ownership.OWNER_FILE:
                continue
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


ROOT = "{root}"  # replaced by the module's tmp dir
CASES = {
    "unknown gin binding": (["--gin.nosuch.thing=1"], r"No configurable matching 'nosuch'"),
    "unknown job": (["--gin.run.job=nosuchjob"], r"run.job=.nosuchjob. is not a job; choose one"),
    "ratio 0": (["--gin.SelectionConfig.ratio=0"], r"SelectionConfig.ratio=0 must be in \(0, 1\]"),
    "ratio above 1": (["--gin.SelectionConfig.ratio=1.5"],
                      r"SelectionConfig.ratio=1.5 must be in \(0, 1\]"),
    "unknown scope": (["--gin.SelectionConfig.scope=row"], r"SelectionConfig.scope='row' is not one of"),
    "slm without a reference": (["--gin.SelectionConfig.mode=slm"],
                                r"needs a reference model: set --gin.ReferenceConfig.checkpoint"),
    "reference checkpoint missing": (
        ["--gin.SelectionConfig.mode=slm", f"--gin.ReferenceConfig.checkpoint={ROOT}/nope"],
        r"ReferenceConfig.checkpoint=.*/nope' does not exist; point it at a checkpoint"),
    "reference directory holds no checkpoint": (
        ["--gin.SelectionConfig.mode=slm", f"--gin.ReferenceConfig.checkpoint={ROOT}/empty"],
        r"ReferenceConfig.checkpoint=.*/empty' holds no checkpoint; point it at"),
    "reference checkpoint of another shape": (
        ["--gin.SelectionConfig.mode=slm",
         f"--gin.ReferenceConfig.checkpoint={ROOT}/other/checkpoints"],
        r"ReferenceConfig.checkpoint=.* does not match the model config: .* is \(.*\) on disk "
        r"but \(.*\) in the model.*; use a checkpoint of the same ModelConfig"),
    "reference and student vocab sizes differ": (
        ["--gin.SelectionConfig.mode=slm", f"--gin.ReferenceConfig.checkpoint={ROOT}/run/checkpoints",
         "--gin.ReferenceConfig.model=@reference/ModelConfig()",
         "--gin.reference/ModelConfig.vocab_size=1024"],
        r"reference vocab_size 1024 != student vocab_size 512; .*same tokenizer"),
    "no steps": (["--gin.train.num_steps=0"],
                 r"train.num_steps=0 must be an int >= 1; set --gin.train.num_steps"),
    "steps not a number": (["--gin.train.num_steps=many"],
                           r"train.num_steps='many' must be an int >= 1"),
    "learning rate not finite": (["--gin.OptimizerConfig.learning_rate=1e999"],
                                 r"OptimizerConfig.learning_rate=inf must be a finite number"),
    "learning rate not a number": (["--gin.OptimizerConfig.learning_rate=fast"],
                                   r"OptimizerConfig.learning_rate='fast' must be a finite number"),
    "negative warm-up": (["--gin.OptimizerConfig.warmup_steps=-5"],
                         r"OptimizerConfig.warmup_steps=-5 must be an int >= 0"),
    "restart with another model shape": (
        ["--gin.ModelConfig.d_model=96"],
        r"the checkpoint .*/run/checkpoints/2 was written by another model \(.* is \(.*\) on disk "
        r"but \(.*\) in the model.*\); resume it with the run's own ModelConfig"),
    "restart with other data settings": (
        ["--gin.DataConfig.seed=5"],
        r"the data order saved in .*/run/checkpoints/2 was made with other data settings "
        r"\(seed: 0 -> 5\); restore the DataConfig of that run, or start a new run_dir"),
    "gin file with an unclosed bracket": (
        [f"--gin_file={ROOT}/unclosed.gin"],
        r"--gin_file=.*/unclosed.gin: EOF in multi-line statement at line 3 \(a bracket or string "
        r"opened above it is never closed\); fix the gin file"),
    "old reference binding": (["--gin.train.reference_checkpoint=/x"],
                              r"train.reference_checkpoint was renamed: bind "
                              r"ReferenceConfig.checkpoint instead"),
    "old reference dtype binding": (["--gin.bench.reference_dtype=float32"],
                                    r"bench.reference_dtype was renamed: bind ReferenceConfig.dtype"),
    "tokenizer file missing": ([f"--gin.DataConfig.vocab_path={ROOT}/nope.model"],
                               r"nope.model' does not exist; set --gin.DataConfig.vocab_path to a "
                               r"SentencePiece .model file"),
    "tokenizer not a SentencePiece model": (
        [f"--gin.DataConfig.vocab_path={ROOT}/not_spm.model"],
        r"not_spm.model' is not a SentencePiece model; set --gin.DataConfig.vocab_path"),
    "tokenizer larger than the model": (
        ["--gin.ModelConfig.vocab_size=256"],
        r"DataConfig.vocab_path=.*spm.model' has 512 tokens \(ids up to 511\), more than "
        r"ModelConfig.vocab_size=256; set --gin.ModelConfig.vocab_size to at least 512"),
    "tokenizer.json unreadable": (
        [f"--gin.DataConfig.vocab_path={ROOT}/broken_tokenizer"],
        r"broken_tokenizer/tokenizer.json' is not a readable Hugging Face tokenizer.json "
        r"\(.*\); set --gin.DataConfig.vocab_path to"),
    "reference tokenizer differs from the student's": (
        ["--gin.SelectionConfig.mode=slm", f"--gin.ReferenceConfig.checkpoint={ROOT}/run/checkpoints",
         f"--gin.ReferenceConfig.vocab_path={ROOT}/other_tokenizer"],
        r"ReferenceConfig.vocab_path=.*other_tokenizer' is another tokenizer than "
        r"DataConfig.vocab_path=.*spm.model'.*train the reference with the student's tokenizer"),
    "data pattern matches no files": (
        [f"--gin.DataConfig.file_pattern={ROOT}/nothing-*.tfrecord"],
        r"No files match .*nothing-\*.tfrecord'; set --gin.DataConfig.file_pattern to a glob"),
    "mesh does not divide the devices": (
        ["--gin.MeshConfig.data=3"], r"MeshConfig .*does not divide the 8 devices|uses 3 devices but 8"),
    "mesh with two -1 axes": (["--gin.MeshConfig.fsdp=-1"],
                              r"needs positive sizes with at most one -1; fix --gin.MeshConfig"),
    "batch not divisible by data parallelism": (
        ["--gin.DataConfig.global_batch_size=4", "--gin.DataConfig.num_streams=1"],
        r"not divisible by the data-parallel size 8 .*set --gin.DataConfig.global_batch_size to a "
        r"multiple of 8"),
    "grad_accum not dividing the batch": (
        ["--gin.train.grad_accum=3"],
        r"DataConfig.global_batch_size=8 is not divisible by train.grad_accum=3; change "
        r"--gin.train.grad_accum to a divisor"),
    "micro-batch not divisible by data parallelism": (
        ["--gin.train.grad_accum=2"],
        r"micro-batch of 4 sequences \(DataConfig.global_batch_size=8 / train.grad_accum=2\) is "
        r"not divisible by the data-parallel size 8 .*set --gin.DataConfig.global_batch_size to a "
        r"multiple of 16 or change --gin.MeshConfig.data/fsdp"),
    "context longer than the model's maximum": (
        ["--gin.DataConfig.seq_len=512"],
        r"DataConfig.seq_len=512 is longer than ModelConfig.max_seq_len=256; lower "
        r"--gin.DataConfig.seq_len"),
    "gin file is a directory": (["--gin_file=gin/models"],
                                r"--gin_file=gin/models is a directory; name a .gin file in it"),
    "data pattern names a directory": (
        [f"--gin.DataConfig.file_pattern={ROOT}/empty"],
        r"DataConfig.file_pattern=.*/empty' matches the directory .*; set "
        r"--gin.DataConfig.file_pattern to a glob of the TFRecord files in it"),
    "init checkpoint is a file": (
        [f"--gin.train.init_checkpoint={ROOT}/a_file", f"--gin.train.run_dir={ROOT}/init_run"],
        r"train.init_checkpoint=.*/a_file' is a file; point it at a checkpoint directory"),
    "output dir not writable": ([f"--gin.train.run_dir={ROOT}/a_file/run"],
                                r"train.run_dir=.*a_file/run' is not writable .*choose another "
                                r"--gin.train.run_dir"),
    "data file damaged": (  # found at the first batch, so in a run_dir of its own
        [f"--gin.DataConfig.file_pattern={ROOT}/not_spm.model",
         f"--gin.train.run_dir={ROOT}/damaged_data_run"],
        r"data file '.*/not_spm.model' is damaged \(corrupted record at byte 0, not a TFRecord "
        r"file\); copy or re-create it, or leave it out of DataConfig.file_pattern="),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line_and_leaves_the_run_alone(capsys, corpus, trained, case):
    extra, message = CASES[case]
    extra = [flag.replace(ROOT, str(trained)) for flag in extra]
    run_dir = trained / "run"
    before = snapshot(run_dir)
    assert "checkpoints/2/params/_METADATA" in before
    code = main_lib.main(flags(corpus, run_dir, *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    print(f"{case}: {lines[0]}")
    assert snapshot(run_dir) == before, case


# Faults of the machine and of other people, each against a copy of the trained run: exit 2,
# the one line, the checkpoints byte-identical afterwards, and the same command then resumes.
_HOLDER = """
import sys, time
from slm_jax.parallel import ownership
with ownership.own(sys.argv[1], binding="train.run_dir"):
    print("held", flush=True)
    time.sleep(300)
"""


@contextlib.contextmanager
def another_owner(run_dir, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield rf"train.run_dir=.*/run' is in use by another job: host .*, pid {proc.pid}, started .*, " \
              r"last heartbeat .*; wait for it to finish or stop it, or set --gin.train.run_dir " \
              r"to another directory"
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def disk_full_at_the_orbax_write(run_dir, monkeypatch):
    """ENOSPC from orbax's array writes (in its async save thread)."""
    from orbax.checkpoint._src.serialization import serialization

    async def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(serialization, "async_serialize_from_host", no_space)
    yield (r"no space left in .*/run/checkpoints for the (checkpoint of step \d|last checkpoint) "
           r"\(it needs .*\); the checkpoint of step 2 is intact; free space there")
    monkeypatch.undo()


@contextlib.contextmanager
def disk_too_small_for_the_checkpoint(run_dir, monkeypatch):
    monkeypatch.setattr(disk, "free_bytes", lambda path: 100_000)
    yield (r"no space left in .*/run/checkpoints for the checkpoint of step 3 \(it needs ~.* MB, "
           r"0.1 MB free\); the checkpoint of step 2 is intact")
    monkeypatch.undo()


@contextlib.contextmanager
def metrics_on_a_full_disk(run_dir, monkeypatch):
    def no_space(self, jsonl, line, step):
        with disk.writing(str(run_dir), f"{os.path.basename(jsonl.name)} at step {step}",
                          intact="its earlier lines and the checkpoints are intact"):
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(metrics_log.MetricsLogger, "_append", no_space)
    yield r"no space left in .*/run for metrics.jsonl at step 3 .*earlier lines and the checkpoints"
    monkeypatch.undo()


FAULTS = {"run directory owned by another job": another_owner,
          "disk full at the checkpoint write": disk_full_at_the_orbax_write,
          "disk too small for the next checkpoint": disk_too_small_for_the_checkpoint,
          "disk full at metrics.jsonl": metrics_on_a_full_disk}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_is_one_line_keeps_the_checkpoints_and_the_same_command_resumes(
        capsys, corpus, trained, tmp_path, monkeypatch, fault):
    run_dir = tmp_path / "run"
    shutil.copytree(trained / "run", run_dir)
    before = snapshot(run_dir / "checkpoints")
    command = flags(corpus, run_dir, f"--gin.run.compilation_cache_dir={trained}/jax_cache")
    with FAULTS[fault](run_dir, monkeypatch) as message:
        code = main_lib.main(command)
    gin.clear_config()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    print(f"{fault}: {lines[0]}")
    assert snapshot(run_dir / "checkpoints") == before
    assert main_lib.main(command) == 0, capsys.readouterr().err
    assert sorted(int(s) for s in os.listdir(run_dir / "checkpoints") if s.isdigit())[-1] == 4


def _example(text: bytes) -> bytes:
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text]))
    return tf.train.Example(features=tf.train.Features(feature={"text": feature})).SerializeToString()


GOOD = [b"x = 3 + 4 = 7", "caf\u00e9 \ufffd kept: valid UTF-8".encode()]
BAD = [b"", b"  \n\t", b"\xff\xfe not UTF-8", b"cut short \xe2\x82"]


@pytest.fixture(scope="module")
def dirty(corpus):
    path = str(corpus[0] / "dirty.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for _ in range(30):
            for text in GOOD + BAD:
                writer.write(_example(text))
    return path


def test_empty_and_non_utf8_documents_are_dropped_and_counted(corpus, dirty):
    config = pipeline.DataConfig(file_pattern=dirty, vocab_path=corpus[2], seq_len=64,
                                 global_batch_size=8, shuffle=False)
    doc_filter = pipeline.DocumentFilter()
    rows = list(pipeline.packed_dataset(config, repeat=False, doc_filter=doc_filter)
                .as_numpy_iterator())
    eos = tokenizer.load_vocabulary(corpus[2]).eos_id
    documents = sum(int((row["targets"] == eos).sum()) for row in rows)
    assert documents == 30 * len(GOOD) and doc_filter.skipped == 30 * len(BAD)


def test_a_run_on_dirty_data_trains_and_reports_the_skipped_count(capsys, corpus, dirty, tmp_path):
    run_dir = tmp_path / "run"
    code = main_lib.main(flags(corpus, run_dir, f"--gin.DataConfig.file_pattern={dirty}",
                               "--gin.train.num_steps=2"))
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2]
    # Counted as the streams read them (tf.data reads ahead), so at least one round of BAD.
    assert all(ln["data_skipped_docs"] >= len(BAD) for ln in lines)
