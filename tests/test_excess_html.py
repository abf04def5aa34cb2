"""The excess-loss HTML page (slm_jax/analysis/excess_html.py): text rebuilt, escaped, coloured and marked."""


import numpy as np

from slm_jax.analysis import excess_html
from slm_jax.data import tokenizer
from slm_jax.slm.selection import select_tokens
from tests.test_analyze import MARKUP_DOC, TokenSpans, corpus, parse_spans  # noqa: F401  (shared fixtures and helpers)


# --------------------------------------------------------------------------
# Token categories.


# --------------------------------------------------------------------------
# The HTML page.


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
