"""Rho-1 Figure 2 as one self-contained HTML page: tokens coloured by excess loss.

Each shown token is one `<span class="tok">` whose background encodes
excess = student loss - reference loss on a diverging scale (blue: the
student already beats the reference; white: equal; red: the student lags),
with `sel` added when the token is among the top `ratio` of its batch, i.e.
a token SLM would train on. The `title` tooltip gives the token, both losses
and the excess. Inline CSS only: no scripts, no network.

A token is the target of a position with loss weight 1, so a document is
shown from its second token (after BOS) through EOS. Packed rows are cut into
documents by segment id; a document longer than a row appears as several
chunks.
"""

from __future__ import annotations

import codecs
import html
import json

import numpy as np

SPACE_MARKER = "\u2581"   # SentencePiece's "▁"
NEWLINE_MARK = "\u21b5"   # "↵", keeps line breaks visible
_BLUE = (33, 102, 172)    # excess < 0
_RED = (178, 24, 43)      # excess > 0

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
table.facts td { padding: 0 1em 0 0; vertical-align: top; }
.legend { display: flex; align-items: center; gap: .6em; margin: 1em 0; }
.bar { width: 18em; height: 1em; border: 1px solid #999;
       background: linear-gradient(to right, rgb%s, #fff, rgb%s); }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9;
        border: 1px solid #ddd; padding: .8em; }
.tok { border-bottom: 2px solid transparent; }
.sel { border-bottom: 2px solid #000; font-weight: bold; }
.special, .byte { font-size: 75%%; color: #666; }
.sample { padding: 0 .3em; border: 1px solid #ccc; }
""" % (_BLUE, _RED)


def piece_texts(processor, ids) -> list[tuple[str, str]]:
    """(display text, css kind) for consecutive token ids, one pair per id.

    "▁" becomes a space. Byte-fallback pieces are decoded as UTF-8 across
    neighbours: the byte completing a character shows it, the leading bytes
    of a multi-byte character show their "<0x..>" piece. Control and unknown
    pieces show their piece name. Nothing here is HTML-escaped yet.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    num_pieces = processor.GetPieceSize()
    out = []
    for token_id in map(int, ids):
        if not 0 <= token_id < num_pieces:
            decoder.reset()
            out.append((f"<id {token_id}>", "special"))
            continue
        piece = processor.IdToPiece(token_id)
        if processor.IsByte(token_id):
            text = decoder.decode(bytes([int(piece[3:-1], 16)]))
            out.append((text, "") if text else (piece, "byte"))
            continue
        decoder.reset()
        if processor.IsControl(token_id) or processor.IsUnknown(token_id):
            out.append((piece, "special"))
        else:
            out.append((piece.replace(SPACE_MARKER, " "), ""))
    return out


def first_documents(segment_ids_BT, loss_weights_BT, num_documents: int):
    """[(row, segment id, positions with loss weight 1)] of the first documents, in row order."""
    documents = []
    for row in range(segment_ids_BT.shape[0]):
        valid_T = loss_weights_BT[row] > 0
        for segment in np.unique(segment_ids_BT[row][valid_T]):
            if len(documents) == num_documents:
                return documents
            positions = np.flatnonzero(valid_T & (segment_ids_BT[row] == segment))
            documents.append((row, int(segment), positions))
    return documents


def excess_colour(excess: float, limit: float) -> str:
    """CSS colour of `excess` on a diverging scale clipped at +-limit."""
    t = 0.0 if limit <= 0 else float(np.clip(excess / limit, -1.0, 1.0))
    end = _RED if t > 0 else _BLUE
    r, g, b = (round(255 + (e - 255) * abs(t)) for e in end)
    return f"rgb({r},{g},{b})"


def _token_span(text, kind, student, reference, selected, limit) -> str:
    excess = student - reference
    tooltip = (f"{json.dumps(text, ensure_ascii=False)} | student {student:.3f} | "
               f"reference {reference:.3f} | excess {excess:+.3f}"
               + (" | selected" if selected else ""))
    classes = " ".join(c for c in ("tok", "sel" if selected else "", kind) if c)
    style = f"background:{excess_colour(excess, limit)}"
    if limit > 0 and abs(excess) / limit > 0.6:
        style += ";color:#fff"
    shown = html.escape(text.replace("\n", NEWLINE_MARK + "\n"))
    return (f'<span class="{classes}" style="{style}" '
            f'title="{html.escape(tooltip, quote=True)}">{shown}</span>')


def _legend(excess_values: np.ndarray, limit: float) -> str:
    low, high = (excess_values.min(), excess_values.max()) if excess_values.size else (0.0, 0.0)
    return (f'<div class="legend"><span>{-limit:+.3f}</span><span class="bar"></span>'
            f'<span>{limit:+.3f}</span>'
            f'<span>excess loss = student &minus; reference; on this page from {low:+.3f} '
            f'to {high:+.3f} (blue: student ahead, red: student lags)</span>'
            f'<span class="sample sel">selected</span></div>')


def excess_loss_page(*, targets_BT, segment_ids_BT, loss_weights_BT, student_loss_BT,
                     reference_loss_BT, selected_BT, processor, num_documents: int = 4,
                     title: str = "Excess loss per token", facts: dict | None = None) -> str:
    """The HTML page for the first `num_documents` documents of one batch ([B, T] numpy)."""
    documents = first_documents(segment_ids_BT, loss_weights_BT, num_documents)
    shown = [(row, pos) for row, _, positions in documents for pos in positions]
    excess_S = np.array([student_loss_BT[r, t] - reference_loss_BT[r, t] for r, t in shown])
    # One symmetric scale for the page, so colours compare across documents.
    limit = float(np.abs(excess_S).max()) if excess_S.size else 0.0
    sections = []
    for index, (row, segment, positions) in enumerate(documents, 1):
        pieces = piece_texts(processor, targets_BT[row, positions])
        spans = "".join(
            _token_span(text, kind, float(student_loss_BT[row, t]),
                        float(reference_loss_BT[row, t]), bool(selected_BT[row, t] > 0), limit)
            for (text, kind), t in zip(pieces, positions))
        n_selected = int((selected_BT[row, positions] > 0).sum())
        sections.append(f'<section><h2>Document {index} &middot; row {row}, segment {segment} '
                        f'&middot; {len(positions)} tokens, {n_selected} selected</h2>'
                        f'<div class="text">{spans}</div></section>')
    fact_rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                        for k, v in (facts or {}).items())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table class=\"facts\">{fact_rows}</table>"
            f"{_legend(excess_S, limit)}{''.join(sections)}</body></html>\n")
