"""Supervised fine-tuning: the chat rendering and its loss mask, epoch packing as a pure
function of (seed, epoch), bad rows named by file:line, and the `sft` job training end to end,
resuming bit-exactly after a SIGKILL."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from slm_jax.data import chat, sft, tokenizer
from tests.tiny_corpus import tiny_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conversation(a: int, b: int) -> dict:
    answer = (f"Let me add them.\n```python\nprint({a} + {b})\n```\n```output\n{a + b}\n```\n"
              f"The answer is \\boxed{{{a + b}}}.")
    return {"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                         {"role": "assistant", "content": answer}]}


@pytest.fixture(scope="module")
def chat_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    _, vocab = tiny_corpus(root, seed=6)
    rows = [conversation(a, b) for a in range(2, 9) for b in range(3, 9)]   # 42
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, vocab, str(root / "jax_cache")


def test_epochs_are_a_pure_function_of_seed_and_epoch_and_see_every_conversation(chat_set):
    vocabulary = tokenizer.load_vocabulary(chat_set[1])
    data = sft.load([str(chat_set[0])], vocabulary, chat.ChatTemplate(), seq_len=128)
    first, again = sft.pack_epoch(data, 128, 0, 0), sft.pack_epoch(data, 128, 0, 0)
    assert all((first[k] == again[k]).all() for k in first)
    second = sft.pack_epoch(data, 128, 0, 1)
    assert not (first["inputs"][0] == second["inputs"][0]).all()
    for rows in (first, second):   # each conversation once: one segment start per conversation
        starts = (rows["positions"] == 0) & (rows["segment_ids"] > 0)
        assert starts.sum() == len(data.examples) == 42
        assert rows["loss_weights"].sum() == sum(m[1:].sum() for _, m in data.examples)
    batches = sft.SftBatches(data, seq_len=128, global_batch_size=8, seed=0, num_epochs=2)
    assert batches.num_steps == sum(-(-len(sft.pack_epoch(data, 128, 0, e)["inputs"]) // 8)
                                    for e in range(2))
    tail = batches.host_rows(batches.steps_per_epoch[0] - 1, 0, 8)   # padded past the epoch
    assert tail["inputs"].shape == (8, 128)


def test_a_conversation_longer_than_a_row_is_skipped_and_counted(chat_set, tmp_path):
    vocabulary = tokenizer.load_vocabulary(chat_set[1])
    path = tmp_path / "long.jsonl"
    long = conversation(1, 2)
    long["messages"][1]["content"] *= 20
    path.write_text(json.dumps(conversation(1, 2)) + "\n" + json.dumps(long) + "\n")
    data = sft.load([str(path)], vocabulary, chat.ChatTemplate(), seq_len=128)
    assert len(data.examples) == 1 and data.skipped["over_long"][0].startswith(f"{path}:2 (")


def command(chat_set, run_dir):
    path, vocab, cache = chat_set
    return [sys.executable, "-m", "slm_jax.main", "--gin_file=gin/models/tiny.gin",
            "--gin.run.job=sft", f"--gin.sft.run_dir={run_dir}", f"--gin.sft.data_files={path}",
            "--gin.sft.num_epochs=2", f"--gin.DataConfig.vocab_path={vocab}",
            "--gin.DataConfig.seq_len=128", "--gin.DataConfig.global_batch_size=8",
            "--gin.OptimizerConfig.learning_rate=3e-3", "--gin.OptimizerConfig.decay='linear'",
            "--gin.train.log_every=1", "--gin.CheckpointConfig.every_steps=2",
            f"--gin.run.compilation_cache_dir={cache}"]


def metrics(run_dir):
    return {ln["step"]: ln for ln in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl")))}


def test_sft_trains_and_resumes_bit_exactly_after_a_kill(chat_set, tmp_path):
    full = tmp_path / "full"
    done = subprocess.run(command(chat_set, full), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    whole = metrics(full)
    last = max(whole)
    assert last >= 4 and whole[last]["loss"] < whole[1]["loss"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(chat_set, killed), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "step 3/" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    again = subprocess.run(command(chat_set, killed), cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = metrics(killed)
    assert sorted(resumed) == sorted(whole)
    for step in whole:
        assert resumed[step]["loss"] == whole[step]["loss"], step
    import orbax.checkpoint as ocp
    import jax
    a = ocp.StandardCheckpointer().restore(str(full / "checkpoints" / str(last) / "params"))
    b = ocp.StandardCheckpointer().restore(str(killed / "checkpoints" / str(last) / "params"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
