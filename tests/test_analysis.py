"""Token categories (Rho-1 §2.1), the excess-loss page (Figure 2) and the `analyze` job."""

import dataclasses
import html.parser
import json

import gin
import numpy as np
import pytest

from slm_jax import main as main_lib
from slm_jax import model as model_lib
from slm_jax.analysis import excess_html, job
from slm_jax.analysis.token_categories import CATEGORIES, classify_tokens
from slm_jax.checkpoint import CheckpointConfig
from slm_jax.data import demo_corpus, pipeline, tasks, tokenizer
from slm_jax.selection import select_tokens
from slm_jax.train import train

TINY = model_lib.ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             mlp_dim=64, max_seq_len=64, dtype="float32")
MARKUP_DOC = '<div class="note">Tom & Jerry</div> buy 3 apples for $2 each.'


# --------------------------------------------------------------------------
# Token categories.


def brute_force_labels(loss_CN, threshold):
    x = np.arange(loss_CN.shape[0])
    mean_final = loss_CN[-1].mean()
    labels = []
    for n in range(loss_CN.shape[1]):
        slope = np.polyfit(x, loss_CN[:, n], 1)[0]
        if slope < -threshold:
            labels.append("H→L")
        elif slope > threshold:
            labels.append("L→H")
        elif loss_CN[-1, n] < mean_final:
            labels.append("L→L")
        else:
            labels.append("H→H")
    return labels


@pytest.mark.parametrize("num_checkpoints", [2, 3, 7])
def test_classification_matches_brute_force(num_checkpoints):
    rng = np.random.default_rng(num_checkpoints)
    start_N = rng.uniform(0, 8, 400)
    trend_N = rng.normal(0, 0.4, 400)
    loss_CN = (start_N + np.outer(np.arange(num_checkpoints), trend_N)
               + rng.normal(0, 0.1, (num_checkpoints, 400)))
    got = classify_tokens(loss_CN)
    assert [CATEGORIES[i] for i in got.labels_N] == brute_force_labels(loss_CN, 0.2)
    np.testing.assert_allclose(got.slopes_N, [np.polyfit(np.arange(num_checkpoints), y, 1)[0]
                                              for y in loss_CN.T], atol=1e-9)
    assert sum(got.counts.values()) == 400
    assert sum(got.shares.values()) == pytest.approx(1.0)


def test_hand_made_example_hits_all_four_categories():
    loss_CN = np.array([[5.0, 1.0, 0.5, 6.0],
                        [3.0, 2.0, 0.5, 6.0],
                        [1.0, 3.0, 0.5, 6.1]])   # mean final loss 2.65
    got = classify_tokens(loss_CN)
    assert [CATEGORIES[i] for i in got.labels_N] == ["H→L", "L→H", "L→L", "H→H"]
    assert got.counts == {"H→H": 1, "L→H": 1, "H→L": 1, "L→L": 1}
    assert got.shares == {name: 0.25 for name in CATEGORIES}
    assert got.mean_final_loss == pytest.approx(2.65)


def test_slope_at_the_threshold_is_not_a_trend():
    # Slope exactly 0.5 (representable): flat, then H→H/L→L by final loss.
    got = classify_tokens(np.array([[0.0, 4.0], [0.5, 4.0]]), slope_threshold=0.5)
    assert [CATEGORIES[i] for i in got.labels_N] == ["L→L", "H→H"]


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
    paths = demo_corpus.generate_corpus(str(root / "corpus"), seed=1, n_web_docs=200,
                                        n_clean_docs=100, n_eval_docs=30)
    vocab = tokenizer.train_sentencepiece([paths.web_jsonl, paths.clean_jsonl],
                                          str(root / "spm"), vocab_size=512)
    return root, paths, vocab


def test_piece_texts_rebuild_the_text(corpus):
    _, _, vocab = corpus
    processor = tokenizer.load_vocabulary(vocab).tokenizer
    text = 'Tom & Jerry <div> paid 12 € for 漢字\nok'
    pieces = excess_html.piece_texts(processor, processor.EncodeAsIds(text))
    assert any(kind == "byte" for _, kind in pieces)   # 漢 falls back to bytes
    assert "".join(t for t, kind in pieces if kind != "byte").lstrip(" ") == text
    eos = processor.eos_id()
    assert excess_html.piece_texts(processor, [eos]) == [("</s>", "special")]


def test_page_escapes_colours_and_marks_the_selection(corpus):
    _, _, vocab = corpus
    processor = tokenizer.load_vocabulary(vocab).tokenizer
    ids = processor.EncodeAsIds(MARKUP_DOC)
    rng = np.random.default_rng(0)
    B, T = 2, len(ids) + 6
    targets_BT = np.zeros((B, T), np.int32)
    segment_ids_BT = np.zeros((B, T), np.int32)
    targets_BT[0, :len(ids)], segment_ids_BT[0, :len(ids)] = ids, 1
    targets_BT[1, :10], segment_ids_BT[1, :10] = ids[:10], 1   # a second document
    weights_BT = (segment_ids_BT > 0).astype(np.float32)
    student_BT, reference_BT = rng.uniform(0, 5, (2, B, T)).astype(np.float32)
    selected_BT = np.asarray(select_tokens(student_BT - reference_BT, weights_BT, 0.6))
    page = excess_html.excess_loss_page(
        targets_BT=targets_BT, segment_ids_BT=segment_ids_BT, loss_weights_BT=weights_BT,
        student_loss_BT=student_BT, reference_loss_BT=reference_BT, selected_BT=selected_BT,
        processor=processor, num_documents=1)
    spans = parse_spans(page)
    assert len(spans) == len(ids)                      # only document 1 is shown
    assert "".join(s["text"] for s in spans).lstrip(" ") == MARKUP_DOC
    assert sum("sel" in s["classes"] for s in spans) == int(selected_BT[0].sum())
    assert "<script" not in page and "http" not in page
    first = spans[0]
    s, r = student_BT[0, 0], reference_BT[0, 0]
    assert f"student {s:.3f}" in first["title"] and f"reference {r:.3f}" in first["title"]
    assert f"excess {s - r:+.3f}" in first["title"]


def test_colour_scale_is_diverging():
    assert excess_html.excess_colour(0.0, 1.0) == "rgb(255,255,255)"
    assert excess_html.excess_colour(0.0, 0.0) == "rgb(255,255,255)"
    assert excess_html.excess_colour(2.0, 1.0) == "rgb(178,24,43)"      # clipped red
    assert excess_html.excess_colour(-1.0, 1.0) == "rgb(33,102,172)"    # blue


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
    summary = job.analyze(run_dir, eval_data=eval_data, model=TINY, num_batches=2, ratio=0.6,
                          reference_checkpoint=f"{run_dir}/checkpoints", num_documents=1000)
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

    # The loss matrix behind the categories is checkpoint_token_losses'.
    loss_CN = job.checkpoint_token_losses(run_dir, [1, 3], model=TINY, eval_data=dataclasses
                                          .replace(eval_data, shuffle=False), num_batches=2)
    assert loss_CN.shape == (2, summary["num_tokens"])
    np.testing.assert_allclose(loss_CN.mean(axis=1), np.array(
        report["mean_loss_per_checkpoint"])[[0, 2]], rtol=1e-5)


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
