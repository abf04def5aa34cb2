"""The `analyze` job (slm_jax/jobs/analyze.py): categories over a run's checkpoints and the excess-loss page."""

import dataclasses
import html.parser
import json
import re

import gin
import numpy as np
import pytest

from slm_jax import main as main_lib
from slm_jax import model as model_lib
from slm_jax.jobs import analyze as job
from slm_jax.parallel.runtime import Runtime
from slm_jax.parallel.checkpoint import CheckpointConfig
from slm_jax.data import pipeline, tasks
from slm_jax.slm.reference import ReferenceConfig
from slm_jax.slm.selection import SelectionConfig
from slm_jax.slm.selection import select_tokens
from slm_jax.slm.train_step import make_score_step
from slm_jax.jobs.train import train
from tests.test_reference_model import save_init_checkpoint
from tests.tiny_corpus import tiny_corpus

TINY = model_lib.ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")
MARKUP_DOC = '<div class="note">Tom & Jerry</div> buy 3 apples for $2 each.'


# --------------------------------------------------------------------------
# Token categories.


# --------------------------------------------------------------------------
# The HTML page.


class TokenSpans(html.parser.HTMLParser):
    """Collects the text, classes and tooltip of every `tok` span."""

    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "tok" in attrs.get("class", "").split():
            self._open = {"classes": attrs["class"].split(), "title": attrs.get("title"),
                          "text": ""}
            self.spans.append(self._open)

    def handle_endtag(self, tag):
        if tag == "span":
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data


def parse_spans(page: str) -> list[dict]:
    parser = TokenSpans()
    parser.feed(page)
    return parser.spans


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    paths, vocab = tiny_corpus(root / "corpus", seed=1, n_web_docs=200, n_clean_docs=100,
                               n_eval_docs=30, spm_on_clean=True)
    return root, paths, vocab


# --------------------------------------------------------------------------
# The job, end to end on a tiny run.


@pytest.fixture(scope="module")
def tiny_run(corpus):
    root, paths, vocab = corpus
    eval_texts = [MARKUP_DOC] + [json.loads(line)["text"]
                                 for line in open(paths.eval_jsonl) if line.strip()]
    eval_tfrecord = str(root / "eval_markup.tfrecord")
    tasks.write_text_tfrecord(eval_texts, eval_tfrecord)
    run_dir = str(root / "run")
    train(run_dir=run_dir, model=TINY, progress=False, num_steps=3,
          data=pipeline.DataConfig(file_pattern=paths.web_tfrecord, vocab_path=vocab,
                                   seq_len=64, global_batch_size=8),
          checkpoint=CheckpointConfig(every_steps=1, keep=5))
    eval_data = pipeline.DataConfig(file_pattern=eval_tfrecord, vocab_path=vocab, seq_len=64,
                                    global_batch_size=8)
    return run_dir, eval_data


def test_analyze_writes_categories_and_the_page(tiny_run):
    run_dir, eval_data = tiny_run
    summary = job.analyze(run_dir, eval_data=eval_data, model=TINY, num_batches=2,
                          selection=SelectionConfig(ratio=0.6),
                          reference=ReferenceConfig(checkpoint=f"{run_dir}/checkpoints"),
                          num_documents=1000)
    assert summary["checkpoints"] == [1, 2, 3]
    assert sum(summary["shares"].values()) == pytest.approx(1.0)
    host = list(pipeline.host_batches(dataclasses.replace(eval_data, shuffle=False),
                                      repeat=False))
    assert summary["num_tokens"] == int(sum(b["loss_weights"].sum() for b in host[:2]))

    out = f"{run_dir}/analysis"
    assert summary["out_dir"] == out and summary["html"] == f"{out}/excess_loss.html"
    report = json.loads(open(f"{out}/token_categories.json", encoding="utf-8").read())
    assert report["counts"] == summary["counts"] and report["slope_threshold"] == 0.2
    assert report["checkpoints"] == [1, 2, 3]
    assert "| H→L |" in open(f"{out}/summary.md", encoding="utf-8").read()

    # The run is its own reference: excess is 0 everywhere and ties go to the
    # lowest index, so the first round(0.6 n) valid tokens of the batch are marked.
    page = summary["excess_page"]
    weights_BT = host[0]["loss_weights"]
    mask_BT = np.asarray(select_tokens(np.zeros_like(weights_BT), weights_BT, 0.6))
    spans = parse_spans(open(f"{out}/excess_loss.html", encoding="utf-8").read())
    assert len(spans) == int(weights_BT.sum()) == page["shown_tokens"]
    assert [("sel" in s["classes"]) for s in spans] == list(mask_BT[weights_BT > 0] > 0)
    assert sum("sel" in s["classes"] for s in spans) == mask_BT.sum() == page["selected_in_batch"]
    assert all("student" in s["title"] and "excess +0.000" in s["title"] for s in spans)
    assert "Tom & Jerry</div>" in "".join(s["text"] for s in spans)

    # The loss matrix behind the categories is checkpoint_losses' at the loss-weighted tokens.
    runtime = Runtime.from_config()
    with runtime.activate():
        batches = job.first_batches(dataclasses.replace(eval_data, shuffle=False), runtime, 2)
        loss_CKBT = job.checkpoint_losses(job.Scorer(TINY, runtime), run_dir, [1, 3],
                                          batches)
    weights_KBT = np.stack([np.asarray(b["loss_weights"]) for b in batches])
    loss_CN = loss_CKBT[:, weights_KBT > 0]
    assert loss_CN.shape == (2, summary["num_tokens"])
    np.testing.assert_allclose(loss_CN.mean(axis=1), np.array(
        report["mean_loss_per_checkpoint"])[[0, 2]], rtol=1e-5)


def test_a_reference_of_another_size_gives_the_page_its_own_losses(tiny_run, tmp_path):
    run_dir, eval_data = tiny_run
    small = dataclasses.replace(TINY, d_model=16, n_heads=2, n_kv_heads=1, mlp_dim=32,
                                n_layers=1)
    params = save_init_checkpoint(small, str(tmp_path / "small" / "checkpoints"))
    summary = job.analyze(run_dir, eval_data=eval_data, model=TINY, num_batches=1,
                          steps=[2, 3], selection=SelectionConfig(ratio=0.6),
                          out_dir=str(tmp_path / "analysis"), num_documents=1000,
                          reference=ReferenceConfig(checkpoint=str(tmp_path / "small" /
                                                                   "checkpoints"), model=small))
    spans = parse_spans(open(summary["html"], encoding="utf-8").read())
    first = next(pipeline.host_batches(dataclasses.replace(eval_data, shuffle=False),
                                       repeat=False))
    want = np.asarray(make_score_step(small)(params, first))[first["loss_weights"] > 0]
    shown = [float(re.search(r"reference (-?[0-9.]+)", s["title"]).group(1)) for s in spans]
    assert len(shown) == len(want) == summary["excess_page"]["shown_tokens"]
    np.testing.assert_allclose(shown, want, atol=6e-4)   # the page rounds to 3 decimals


def test_analyze_needs_two_checkpoints(tiny_run):
    run_dir, eval_data = tiny_run
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        job.analyze(run_dir, eval_data=eval_data, model=TINY, steps=[3])
    with pytest.raises(ValueError, match=r"unsaved steps \[7\]"):
        job.analyze(run_dir, eval_data=eval_data, model=TINY, steps=[1, 7])


def test_analyze_is_a_job_on_the_command_line(capsys, tmp_path):
    gin.clear_config()
    try:
        code = main_lib.main(["--gin.run.job=analyze", f"--gin.analyze.run_dir={tmp_path}"])
    finally:
        gin.clear_config()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "analyze.run_dir" in err[0] and "holds no checkpoints" in err[0]


def test_eval_data_may_be_a_file_pattern_but_not_an_unparsed_reference(tiny_run):
    _, eval_data = tiny_run
    assert job._eval_config(eval_data) == dataclasses.replace(eval_data, shuffle=False)
    gin.clear_config()
    try:
        gin.bind_parameter("DataConfig.vocab_path", eval_data.vocab_path)
        gin.bind_parameter("DataConfig.seq_len", 64)
        config = job._eval_config(eval_data.file_pattern)
    finally:
        gin.clear_config()
    assert config == dataclasses.replace(eval_data, shuffle=False)
    with pytest.raises(ValueError, match="gin references do not work"):
        job._eval_config("@eval/DataConfig()")
